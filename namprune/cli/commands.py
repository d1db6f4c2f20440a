"""Importing this module registers every command on the app."""

from . import export, prune, train  # noqa: F401
