"""One module per method; importing this package registers them all."""
from . import esd  # noqa: F401
