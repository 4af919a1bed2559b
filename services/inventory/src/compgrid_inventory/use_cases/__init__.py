"""Use cases of the inventory service."""
