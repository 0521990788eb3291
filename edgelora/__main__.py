"""`python -m edgelora ...` runs the `edgelora` command (as `python -m edgelora.cli`)."""
from .cli import entry

entry()
