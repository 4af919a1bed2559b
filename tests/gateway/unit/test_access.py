"""The roles the edge enforces are the ones the document declares, on operations that exist."""

from __future__ import annotations

from compgrid_gateway.access import API, PUBLIC_OPERATIONS, ROLES
from compgrid_gateway.openapi import document
from tests.gateway.roles import OWNER_ONLY


def test_every_declared_role_is_on_an_operation_of_the_document() -> None:
    spec = document()
    operations = {(m, p) for p, item in spec["paths"].items() for m in item}
    assert set(ROLES) <= operations
    assert operations >= PUBLIC_OPERATIONS
    for method, path in ROLES:
        assert spec["paths"][path][method]["x-roles"] == list(ROLES[(method, path)])
        assert spec["paths"][path][method]["responses"]["403"]


def test_public_operations_declare_no_roles() -> None:
    assert not PUBLIC_OPERATIONS & set(ROLES)


def test_the_edge_restricts_exactly_the_operations_the_auth_matrix_proves_restricted() -> None:
    declared = {(method.upper(), path.removeprefix(API)) for method, path in ROLES}
    assert declared == set(OWNER_ONLY)
