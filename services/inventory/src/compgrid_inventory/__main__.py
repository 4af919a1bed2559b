"""``compgrid-inventory``: run the inventory service process."""

import asyncio

from compgrid_inventory.bootstrap import bootstrap


def main() -> None:
    """Run until SIGTERM or SIGINT."""
    asyncio.run(bootstrap().run())


if __name__ == "__main__":
    main()
