"""Importing this module registers every command on the app."""

from . import export, prune, report, run, train  # noqa: F401
