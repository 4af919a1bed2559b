"""The launcher's process manager: start the platform's processes and keep them running.

Policy: a process that exits on its own is started again after a backoff that doubles with each
of its deaths in the last ``window_s`` seconds (1 s, 2 s, 4 s, ... at most ``max_backoff_s``),
with a line saying so, while the others keep running; each start and each return to ready is a
line too. A process that dies ``max_deaths`` times within ``window_s`` is not started again: the
launcher gives up (``GaveUp``) and stops everything. Stopping is SIGTERM to every process, a
grace period for a graceful stop, then SIGKILL.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


class GaveUp(Exception):
    """A process kept dying; the message names it."""


def ready(port: int) -> bool:
    """Return True when the process behind ``port`` reports ready."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def _pump(label: str, stream: IO[bytes]) -> None:
    for raw in iter(stream.readline, b""):
        sys.stdout.write(label + raw.decode(errors="replace"))
        sys.stdout.flush()


@dataclass
class Process:
    """One supervised process: how to start it, where it answers, and how it has fared."""

    name: str
    args: list[str]
    env: dict[str, str]
    health_port: int
    colour: str
    cwd: Path
    child: subprocess.Popen[bytes] | None = None
    deaths: deque[float] = field(default_factory=deque)
    restart_at: float | None = None
    is_ready: bool = False

    def start(self) -> int:
        """Start the process with its output prefixed by its name; return its pid."""
        self.child = subprocess.Popen(
            self.args,
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the launcher, which stops them in order
        )
        assert self.child.stdout is not None
        label = f"\033[{self.colour}m{self.name:<19}\033[0m| "
        threading.Thread(target=_pump, args=(label, self.child.stdout), daemon=True).start()
        self.restart_at, self.is_ready = None, False
        return self.child.pid


@dataclass
class Supervisor:
    """Every process of the platform, restarted when it dies (see the module's policy)."""

    say: Callable[[str], None]
    max_deaths: int = 5
    window_s: float = 60.0
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    processes: dict[str, Process] = field(default_factory=dict)

    def add(self, process: Process) -> None:
        """Start a process and keep it running from now on."""
        self.processes[process.name] = process
        pid = process.start()
        self.say(f"{process.name} started (pid {pid}, health on port {process.health_port})")

    def all_ready(self) -> bool:
        """Whether every process answers ready."""
        return all(p.is_ready for p in self.processes.values())

    def tick(self) -> None:
        """Notice deaths, restart what is due, and say which processes became ready."""
        now = time.monotonic()
        for process in self.processes.values():
            child = process.child
            if process.restart_at is not None:
                if now >= process.restart_at:
                    pid = process.start()
                    self.say(f"{process.name} restarted (pid {pid})")
            elif child is not None and child.poll() is not None:
                self._died(process, child.returncode, now)
            elif not process.is_ready and ready(process.health_port):
                process.is_ready = True
                self.say(f"{process.name} ready (health on port {process.health_port})")

    def _died(self, process: Process, code: int, now: float) -> None:
        process.deaths.append(now)
        while process.deaths and process.deaths[0] < now - self.window_s:
            process.deaths.popleft()
        count = len(process.deaths)
        if count >= self.max_deaths:
            raise GaveUp(
                f"{process.name} exited with code {code}, {count} times within "
                f"{self.window_s:.0f}s; giving up: stopping everything"
            )
        delay = min(self.backoff_s * 2 ** (count - 1), self.max_backoff_s)
        process.restart_at, process.is_ready = now + delay, False
        self.say(
            f"{process.name} exited with code {code}; restarting it in {delay:.0f}s "
            f"({count} of {self.max_deaths} deaths allowed within {self.window_s:.0f}s)"
        )

    def wait_ready(self, timeout_s: float, interval_s: float = 0.2) -> None:
        """Supervise until every process is ready; SystemExit when time runs out."""
        deadline = time.monotonic() + timeout_s
        while not self.all_ready():
            if time.monotonic() > deadline:
                waiting = sorted(n for n, p in self.processes.items() if not p.is_ready)
                raise SystemExit(f"not ready after {timeout_s:.0f}s: {', '.join(waiting)}")
            self.tick()
            time.sleep(interval_s)

    def stop(self, grace_s: float = 25.0) -> dict[str, int]:
        """SIGTERM every process, wait for a graceful stop, SIGKILL what is left; return each
        exit code."""
        running = {n: p.child for n, p in self.processes.items() if p.child is not None}
        for child in running.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        codes: dict[str, int] = {}
        for name, child in running.items():
            try:
                codes[name] = child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(f"{name} did not stop within {grace_s:.0f}s; killing it")
                child.kill()
                codes[name] = child.wait()
        return codes
