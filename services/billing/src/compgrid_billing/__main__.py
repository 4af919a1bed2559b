"""``compgrid-billing``: run the billing service process."""

from compgrid_billing.bootstrap import bootstrap
from compgrid_runtime.app import run_service


def main() -> None:
    """Run until SIGTERM or SIGINT."""
    run_service(bootstrap)


if __name__ == "__main__":
    main()
