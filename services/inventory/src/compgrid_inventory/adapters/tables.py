"""Tables of the inventory service, all in its own ``inventory`` schema."""

from compgrid_runtime.db import make_metadata

metadata = make_metadata("inventory")
