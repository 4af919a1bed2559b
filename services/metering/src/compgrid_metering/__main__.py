"""``compgrid-metering``: run the metering service, or rebuild its counters.

``compgrid-metering rebuild --since 2026-11-28T00:00:00Z`` replays the usage stream from that
time into the counters (after Redis lost data) and rolls the closed hours up again.
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import datetime

import nats

from compgrid_metering.bootstrap import bootstrap, build
from compgrid_metering.config import Settings
from compgrid_metering.use_cases.rebuild import rebuild
from compgrid_runtime.app import nats_options, run_service
from compgrid_runtime.cli import moment


async def _rebuild(since: datetime) -> None:
    settings = Settings()
    app, deps = build(settings)
    nc = await nats.connect(**nats_options(settings))  # type: ignore[arg-type]
    try:
        counted = await rebuild(deps, nc, since)
        print(f"rebuilt from {since.isoformat()}: {counted} tick(s) counted again")
    finally:
        await nc.close()
        await app.engine.dispose()


def main(argv: list[str] | None = None) -> None:
    """Run until SIGTERM or SIGINT, or run one command."""
    parser = argparse.ArgumentParser(prog="compgrid-metering")
    commands = parser.add_subparsers(dest="command")
    again = commands.add_parser("rebuild", help="replay the usage stream into the counters")
    again.add_argument("--since", type=moment, required=True, help="ISO time with zone")
    args = parser.parse_args(argv)
    if args.command == "rebuild":
        asyncio.run(_rebuild(args.since))
    else:
        run_service(bootstrap)


if __name__ == "__main__":
    main()
