"""How the inventory service is reached: request/reply operations and consumers."""
