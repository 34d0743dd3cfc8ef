"""One exception for mistakes a user can fix. The CLI prints its message on one line and exits 2."""


class UserError(Exception):
    """Bad input: the message says what is wrong and how to fix it, in one line."""


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_bool(word: str, name: str) -> bool:
    """A boolean setting's CLI word; a typo is an error, never a silent False."""
    w = word.strip().lower()
    if w in _TRUE or w in _FALSE:
        return w in _TRUE
    raise UserError(f"--{name.replace('_', '-')} takes true or false (got '{word}')")
