"""``python -m tracker`` is ``python run.py``."""

import sys

from tracker.cli.main import main

sys.exit(main())
