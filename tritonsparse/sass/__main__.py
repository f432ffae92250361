"""``python -m tritonsparse.sass``: the SASS hot-loop report (see :mod:`tritonsparse.sass.report`)."""
import sys

from .report import main

sys.exit(main())
