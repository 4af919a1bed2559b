"""The REST API under ``/api/v1``, one module per area."""
