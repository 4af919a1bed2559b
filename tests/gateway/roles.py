"""The operations only platform roles (admin, finance) may call, as the owning services decide:
the auth matrix proves each refuses everyone else, and a unit test holds the gateway's own list
(``compgrid_gateway.access.ROLES``) to exactly these."""

from __future__ import annotations

OWNER_ONLY = [
    ("GET", "/hosts"),
    ("POST", "/hosts"),
    ("GET", "/hosts/{host_id}"),
    ("PATCH", "/hosts/{host_id}"),
    ("POST", "/datacenters"),
    ("PATCH", "/datacenters/{datacenter}"),
    ("POST", "/images"),
    ("POST", "/price-tiers"),
    ("POST", "/price-tiers/{price_tier_id}/rates"),
    ("POST", "/instance-types"),
    ("POST", "/instance-types/{instance_type_id}/retire"),
    ("GET", "/users"),
    ("POST", "/users"),
    ("POST", "/users/{user_id}/disable"),
    ("POST", "/users/{user_id}/enable"),
    ("GET", "/settings"),
    ("PUT", "/settings"),
    ("GET", "/audit"),
    ("GET", "/billing/runs"),
    ("POST", "/billing/runs"),
    ("GET", "/billing/export"),
    ("GET", "/billing/parked"),
    ("GET", "/deliveries"),
    ("GET", "/stats/utilisation"),
    ("GET", "/stats/billing"),
    ("PUT", "/projects/{project_id}/quota"),
    ("POST", "/admin/keys/rotate"),
    ("POST", "/admin/claims/repair"),
]
