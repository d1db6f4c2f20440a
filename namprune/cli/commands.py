"""Importing this module registers every command on the app."""

from . import train  # noqa: F401
