"""The committed OpenAPI document is what the code describes, and it documents every answer."""

from __future__ import annotations

from pathlib import Path

from compgrid_gateway.openapi import document, render

COMMITTED = Path(__file__).resolve().parents[3] / "docs" / "openapi.json"


def test_committed_document_matches_the_code() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == render(), "run: just openapi"


def test_every_operation_documents_success_and_problems() -> None:
    spec = document()
    operations = [
        (method, path, op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if path.startswith("/api/v1/")
    ]
    assert len(operations) > 80
    for method, path, op in operations:
        codes = set(op["responses"])
        assert any(c.startswith("2") for c in codes), (method, path)
        for status in ("401", "422", "429", "503", "504"):
            problem = op["responses"][status]["content"]["application/problem+json"]
            assert problem["schema"]["$ref"] == "#/components/schemas/Problem", (method, path)
        assert op.get("summary"), (method, path)
        assert op.get("description"), (method, path)
    assert {"type", "title", "status", "detail", "code"} <= set(
        spec["components"]["schemas"]["Problem"]["required"]
    )


def test_every_service_area_is_reachable() -> None:
    paths = set(document()["paths"])
    for expected in (
        "/api/v1/auth/login",
        "/api/v1/me/api-tokens",
        "/api/v1/users",
        "/api/v1/projects/{project_id}/members/{user_id}",
        "/api/v1/budget-codes/{budget_code_id}",
        "/api/v1/datacenters",
        "/api/v1/hosts/{host_id}",
        "/api/v1/images",
        "/api/v1/price-tiers/{price_tier_id}/rates",
        "/api/v1/instance-types",
        "/api/v1/instances/by-requirements",
        "/api/v1/instances/{instance_id}/approve",
        "/api/v1/usage",
        "/api/v1/costs",
        "/api/v1/budgets/{budget_code_id}",
        "/api/v1/invoices/{invoice_id}/pdf",
        "/api/v1/invoices/{invoice_id}/csv",
        "/api/v1/webhooks",
        "/api/v1/billing/runs",
        "/api/v1/audit",
        "/api/v1/stats/utilisation",
        "/api/v1/stats/billing",
        "/api/v1/events/instances",
    ):
        assert expected in paths, expected
