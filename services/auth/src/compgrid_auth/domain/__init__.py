"""The auth domain: accounts, passwords, projects, grants and who may do what."""
