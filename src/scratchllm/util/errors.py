"""The error a user can fix, and an exception as one line: the command line prints each as one line."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (bad flag, missing file, no network); the CLI prints it as one line."""


def one_line(e: BaseException) -> str:
    """An exception's message with every run of white space (newlines too) folded to one space."""
    return " ".join(str(e).split()) or type(e).__name__
