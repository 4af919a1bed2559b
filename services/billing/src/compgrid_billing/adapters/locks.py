"""The ledger lock: taken first by every transaction that writes charges or budget codes."""

from __future__ import annotations

from sqlalchemy import text

from compgrid_runtime.uow import UnitOfWork

LEDGER_LOCK = "compgrid.billing.ledger"


async def lock_ledger(uow: UnitOfWork) -> None:
    """Wait for the ledger lock (held until the transaction ends).

    Rating and issuing invoices hold it, so ledger entries are numbered in the order they
    commit (an invoice's watermark relies on it) and one hour is never rated twice at once;
    handlers that then touch budget rows take it first, so locks always go ledger, then budget
    rows, and never deadlock.
    """
    await uow.session.execute(
        text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": LEDGER_LOCK}
    )
