"""One module per method; importing this package registers them all."""
from . import doco, esd, salun  # noqa: F401
