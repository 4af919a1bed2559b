"""The auth service's use cases: one function per thing a person or service asks for."""
