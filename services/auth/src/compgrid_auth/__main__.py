"""``compgrid-auth``: run the auth service; ``compgrid-auth seed-demo`` seeds the demo people."""

import asyncio
import sys

from compgrid_auth.bootstrap import bootstrap, build
from compgrid_auth.config import Settings
from compgrid_auth.use_cases.demo import seed_demo
from compgrid_runtime.app import run_service


async def _seed() -> None:
    app, deps = build(Settings())
    await app.start()
    try:
        logins = await seed_demo(deps)
    finally:
        await app.stop()
    print("CompGrid demo logins:")
    for role, (email, password) in logins.items():
        print(f"  {role:<11} {email:<28} {password}")


def main() -> None:
    """Run until SIGTERM or SIGINT, or run one command."""
    if sys.argv[1:] == ["seed-demo"]:
        asyncio.run(_seed())
    else:
        run_service(bootstrap)


if __name__ == "__main__":
    main()
