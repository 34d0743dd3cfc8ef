"""One module per method; importing this package registers them all."""
from . import advunlearn, doco, esd, salun, sfd  # noqa: F401
