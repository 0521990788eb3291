"""`python -m edgelora.cli ...` runs the `edgelora` command."""
import sys

from . import main

sys.exit(main())
