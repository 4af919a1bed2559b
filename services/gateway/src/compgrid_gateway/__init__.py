"""CompGrid gateway: the only HTTP edge for people and scripts."""
