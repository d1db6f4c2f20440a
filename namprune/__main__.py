import sys

from namprune.cli import main

sys.exit(main())
