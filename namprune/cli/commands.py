"""Importing this module registers every command on the app, in the order `--help` lists
them: the order of the workflow."""

from . import train  # noqa: F401  (train, eval, info)
from . import prune  # noqa: F401,I001  (rank, prune)
from . import report  # noqa: F401,I001  (sweep, report)
from . import export  # noqa: F401,I001
from . import run  # noqa: F401,I001  (run, demo)
