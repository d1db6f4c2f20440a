"""Run the namprune command from a checkout: ``python cli.py train ...``."""

import sys

from namprune.cli import main

if __name__ == "__main__":
    sys.exit(main())
