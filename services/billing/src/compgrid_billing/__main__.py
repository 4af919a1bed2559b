"""``compgrid-billing``: run the billing service, or invoice one period.

``compgrid-billing run --from 2026-10-01T00:00:00Z --to 2026-11-01T00:00:00Z`` issues the
invoices of a closed period (again: nothing new) and prints what it did.
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import datetime

from compgrid_billing.bootstrap import bootstrap, build
from compgrid_billing.config import Settings
from compgrid_billing.use_cases.invoicing import run_period
from compgrid_runtime.app import run_service
from compgrid_runtime.cli import moment
from compgrid_runtime.errors import DomainError


async def _run(start: datetime, end: datetime) -> int:
    app, deps = build(Settings())
    try:
        result = await run_period(deps, start, end, "command line")
    except DomainError as exc:
        print(f"refused: {exc}")
        return 2
    finally:
        await app.engine.dispose()
    run = result.run
    print(
        f"period {run.period_start.isoformat()} to {run.period_end.isoformat()}: "
        f"{run.state}, {run.invoices} invoice(s), {result.issued_now} issued now"
    )
    return 0


def main(argv: list[str] | None = None) -> None:
    """Run until SIGTERM or SIGINT, or run one command."""
    parser = argparse.ArgumentParser(prog="compgrid-billing")
    commands = parser.add_subparsers(dest="command")
    run = commands.add_parser("run", help="invoice a closed period [from, to)")
    run.add_argument("--from", dest="start", type=moment, required=True, help="ISO time")
    run.add_argument("--to", dest="end", type=moment, required=True, help="ISO time")
    args = parser.parse_args(argv)
    if args.command == "run":
        raise SystemExit(asyncio.run(_run(args.start, args.end)))
    run_service(bootstrap)


if __name__ == "__main__":
    main()
