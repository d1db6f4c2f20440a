"""Importing this module registers every command on the app."""

from . import prune, report, train  # noqa: F401
