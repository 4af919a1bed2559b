"""``compgrid-metering``: run the metering service process."""

import asyncio

from compgrid_metering.bootstrap import bootstrap


def main() -> None:
    """Run until SIGTERM or SIGINT."""
    asyncio.run(bootstrap().run())


if __name__ == "__main__":
    main()
