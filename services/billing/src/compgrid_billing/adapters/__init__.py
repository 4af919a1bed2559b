"""Adapters of the billing service: tables, repositories and clients."""
