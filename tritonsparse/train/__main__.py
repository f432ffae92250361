"""``python -m tritonsparse.train``."""
import sys

from .cli import main

sys.exit(main(prog="python -m tritonsparse.train"))
