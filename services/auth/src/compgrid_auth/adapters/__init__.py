"""Adapters of the auth service: tables, repositories and clients."""
