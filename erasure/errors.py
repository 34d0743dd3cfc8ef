"""One exception for mistakes a user can fix. The CLI prints its message on one line and exits 2."""


class UserError(Exception):
    """Bad input: the message says what is wrong and how to fix it, in one line."""
