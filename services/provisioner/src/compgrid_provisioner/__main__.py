"""``compgrid-provisioner``: run the provisioner service process."""

from compgrid_provisioner.bootstrap import bootstrap
from compgrid_runtime.app import run_service


def main() -> None:
    """Run until SIGTERM or SIGINT."""
    run_service(bootstrap)


if __name__ == "__main__":
    main()
