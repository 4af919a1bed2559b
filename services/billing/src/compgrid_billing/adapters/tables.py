"""Tables of the billing service, all in its own ``billing`` schema."""

from compgrid_runtime.db import make_metadata

metadata = make_metadata("billing")
