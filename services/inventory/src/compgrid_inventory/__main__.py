"""``compgrid-inventory``: run the service; ``compgrid-inventory seed-demo`` seeds the demo."""

import asyncio
import sys

from compgrid_inventory.bootstrap import bootstrap, build
from compgrid_inventory.config import Settings
from compgrid_inventory.use_cases.demo import seed_demo
from compgrid_runtime.app import run_service


async def _seed() -> None:
    # The events land in the outbox; the service's relay publishes them once it runs.
    app, deps = build(Settings())
    try:
        print(await seed_demo(deps))
    finally:
        await app.engine.dispose()


def main() -> None:
    """Run until SIGTERM or SIGINT, or run one command."""
    if sys.argv[1:] == ["seed-demo"]:
        asyncio.run(_seed())
    else:
        run_service(bootstrap)


if __name__ == "__main__":
    main()
