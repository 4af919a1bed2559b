"""Adapters of the inventory service: tables, repositories and clients."""
