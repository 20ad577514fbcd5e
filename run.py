#!/usr/bin/env python3
"""tracker entry point: ``python run.py serve|demo|activate --config PATH``."""

import sys

from tracker.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
