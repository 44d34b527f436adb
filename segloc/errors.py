"""Errors a user can cause: bad paths, JSON, images, params.

`UserError` is a `click.ClickException`, so a CLI prints one line (`Error: ...`) and exits 1 instead
of a traceback. Messages name the file or key and what was expected.
"""

from __future__ import annotations

import click


class UserError(click.ClickException):
    """A problem with the user's input, reported as one clear message."""

    exit_code = 2
