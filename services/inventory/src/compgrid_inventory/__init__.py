"""CompGrid inventory service."""
