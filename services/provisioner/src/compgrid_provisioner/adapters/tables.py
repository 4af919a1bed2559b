"""Tables of the provisioner service, all in its own ``provisioner`` schema."""

from compgrid_runtime.db import make_metadata

metadata = make_metadata("provisioner")
