"""Entrypoints of the auth service: request/reply operations and the command line."""
