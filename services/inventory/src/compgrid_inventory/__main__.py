"""``compgrid-inventory``: run the service; ``compgrid-inventory seed-demo`` seeds the demo."""

import argparse
import asyncio
import sys

from compgrid_inventory.bootstrap import bootstrap, build
from compgrid_inventory.config import Settings
from compgrid_inventory.use_cases.demo import seed_demo
from compgrid_runtime.app import run_service


async def _seed(host_uris: dict[str, str]) -> None:
    # The events land in the outbox; the service's relay publishes them once it runs.
    app, deps = build(Settings())
    try:
        print(await seed_demo(deps, host_uris))
    finally:
        await app.engine.dispose()


def _host_uri(text: str) -> tuple[str, str]:
    name, sep, uri = text.partition("=")
    if not sep or not name or not uri:
        raise argparse.ArgumentTypeError(f"expected NAME=URI, got {text!r}")
    return name, uri


def main() -> None:
    """Run until SIGTERM or SIGINT, or run one command."""
    if sys.argv[1:2] == ["seed-demo"]:
        parser = argparse.ArgumentParser(prog="compgrid-inventory seed-demo")
        parser.add_argument(
            "--host-uri",
            type=_host_uri,
            action="append",
            default=[],
            metavar="NAME=URI",
            help="the libvirt URI of a demo host (default: libvirt's built-in test host)",
        )
        args = parser.parse_args(sys.argv[2:])
        asyncio.run(_seed(dict(args.host_uri)))
    else:
        run_service(bootstrap)


if __name__ == "__main__":
    main()
