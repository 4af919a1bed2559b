"""Adapters of the metering service: tables, repositories and clients."""
