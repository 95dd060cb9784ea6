"""The errors a user can fix. The CLI prints each as one line (``error: ...``) and exits 2.

- ``ConfigError``: a config that cannot work; names the file and the dotted field path.
- ``UserError``: any other bad input (an unknown name, a missing file, an impossible shape).
- ``FetchError``: a pinned file could not be fetched from the package index or failed its checksum.

This module imports nothing from archzoo, so every layer of the library may raise these.
"""

from __future__ import annotations


class UserError(Exception):
    """An error the user can fix; printed as one line, exit status 2."""


class ConfigError(ValueError):
    """A config that cannot work. ``str(err)`` is ``<file>: <field.path>: <message>``."""

    def __init__(self, message: str, path: str = "", source: str | None = None):
        self.message = message
        self.path = path
        self.source = source
        parts = [p for p in (source, path) if p]
        super().__init__(": ".join([*parts, message]))


class FetchError(UserError):
    """A pinned file could not be fetched or failed its checksum (the CLI prints one line, exit 2)."""


class NoNetworkError(FetchError):
    """pip could not reach the package index."""
