"""Importing this module registers every command on the app."""

from . import prune, train  # noqa: F401
