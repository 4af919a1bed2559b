"""Tables of the metering service, all in its own ``metering`` schema."""

from compgrid_runtime.db import make_metadata

metadata = make_metadata("metering")
