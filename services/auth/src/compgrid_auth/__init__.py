"""CompGrid auth service."""
