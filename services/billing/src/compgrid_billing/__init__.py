"""CompGrid billing service."""
