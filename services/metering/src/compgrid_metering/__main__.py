"""``compgrid-metering``: run the metering service, or rebuild its counters.

``compgrid-metering rebuild --since 2026-11-28T00:00:00Z`` replays the usage stream from that
time into the counters (after Redis lost data) and rolls the closed hours up again; without
``--since`` it goes as far back as it may. A refusal (a time older than the stream or the claims
reach, another rebuild running) is one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import datetime

import nats

from compgrid_metering.bootstrap import bootstrap, build
from compgrid_metering.config import Settings
from compgrid_metering.use_cases.rebuild import rebuild
from compgrid_runtime.app import nats_options, run_service
from compgrid_runtime.cli import moment
from compgrid_runtime.errors import DomainError


async def _rebuild(since: datetime | None) -> int:
    settings = Settings()
    app, deps = build(settings)
    nc = await nats.connect(**nats_options(settings))  # type: ignore[arg-type]
    try:
        counted = await rebuild(deps, nc, since)
    except DomainError as exc:
        print(f"compgrid-metering rebuild: {exc.message}", file=sys.stderr)
        return 1
    finally:
        await nc.close()
        await deps.counters.redis.aclose()
        await app.engine.dispose()
    print(
        f"rebuilt {'from ' + since.isoformat() if since else 'as far back as allowed'}: "
        f"{counted} tick(s) counted again"
    )
    return 0


def main(argv: list[str] | None = None) -> None:
    """Run until SIGTERM or SIGINT, or run one command."""
    parser = argparse.ArgumentParser(prog="compgrid-metering")
    commands = parser.add_subparsers(dest="command")
    again = commands.add_parser("rebuild", help="replay the usage stream into the counters")
    again.add_argument(
        "--since",
        type=moment,
        help="ISO time with zone (default: as far back as the stream and the claims allow)",
    )
    args = parser.parse_args(argv)
    if args.command == "rebuild":
        sys.exit(asyncio.run(_rebuild(args.since)))
    else:
        run_service(bootstrap)


if __name__ == "__main__":
    main()
