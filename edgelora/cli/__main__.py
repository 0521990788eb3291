"""`python -m edgelora.cli ...` runs the `edgelora` command."""
from . import entry

entry()
