"""CompGrid provisioner service."""
