"""Adapters of the provisioner service: tables, repositories and clients."""
