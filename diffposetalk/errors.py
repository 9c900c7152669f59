"""Errors meant for the user: the CLI prints their message and exits with status 2."""


class UserError(Exception):
    """Bad input from the user (a path, a file, an option). The message says what and why."""
