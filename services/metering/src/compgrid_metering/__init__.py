"""CompGrid metering service."""
