"""The billing service's request/reply operations (``rpc.billing.<operation>``)."""

from __future__ import annotations

from functools import partial

from compgrid_billing.use_cases import commands, instance_costs, queries, stats
from compgrid_billing.use_cases.deps import Deps
from compgrid_events import billing_api as api
from compgrid_runtime.rpc import RpcServer


def register_routes(rpc: RpcServer, deps: Deps) -> None:
    """Bind every operation to its use case with the service's ports."""
    for operation, use_case, body in (
        ("costs.get", queries.costs, api.CostsQuery),
        ("instances.costs", instance_costs.get_instance_costs, api.InstanceCostsQuery),
        ("budgets.list", queries.list_budgets, api.BudgetsQuery),
        ("budgets.get", queries.get_budget, api.BudgetRef),
        ("invoices.list", queries.list_invoices, api.InvoicesQuery),
        ("invoices.get", queries.get_invoice, api.InvoiceRef),
        ("invoices.pdf", queries.invoice_pdf, api.InvoiceRef),
        ("invoices.csv", queries.invoice_csv, api.InvoiceRef),
        ("invoices.resend", commands.resend, api.Resend),
        ("export.get", queries.finance_export, api.PeriodQuery),
        ("runs.start", commands.start_run, api.StartRun),
        ("runs.list", queries.list_runs, None),
        ("deliveries.list", queries.list_deliveries, api.DeliveriesQuery),
        ("webhooks.create", commands.create_webhook, api.CreateWebhook),
        ("webhooks.list", commands.list_webhooks, api.WebhooksQuery),
        ("webhooks.delete", commands.delete_webhook, api.WebhookRef),
        ("contacts.get", commands.get_contacts, api.ProjectRef),
        ("contacts.set", commands.set_contacts, api.SetContacts),
        ("parked.list", queries.list_parked, api.ParkedQuery),
        ("stats.get", stats.stats, api.StatsQuery),
    ):
        rpc.route(operation, partial(use_case, deps), body)
