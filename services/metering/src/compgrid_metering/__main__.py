"""``compgrid-metering``: run the metering service process."""

from compgrid_metering.bootstrap import bootstrap
from compgrid_runtime.app import run_service


def main() -> None:
    """Run until SIGTERM or SIGINT."""
    run_service(bootstrap)


if __name__ == "__main__":
    main()
