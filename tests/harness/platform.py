"""The whole platform as a child process: ``scripts/devstack.py`` (what ``just dev`` runs),
for the HTTP tests and the gateway benchmark."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
_API_LINE = re.compile(r"API on (http://127\.0\.0\.1:\d+)")
_OWN_LINE = re.compile(r"^\x1b\[1mcompgrid\x1b\[0m \| (.*)$")


def start_platform(
    state: Path, env: dict[str, str], *extra: str, timeout_s: float = 240
) -> tuple[subprocess.Popen[bytes], str]:
    """Run the launcher (``extra`` on its command line) with its output in
    ``state/platform.log``; return it and the base URL of the API once every service is ready
    (RuntimeError with the log's tail otherwise)."""
    log = state / "platform.log"
    out = log.open("wb")
    launcher = subprocess.Popen(
        [sys.executable, "scripts/devstack.py", "--state-dir", str(state), *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert launcher.stdout is not None
    found: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert launcher.stdout is not None
        for raw in iter(launcher.stdout.readline, b""):
            out.write(raw)
            out.flush()
            if not found and (m := _API_LINE.search(raw.decode(errors="replace"))):
                found.append(m.group(1))
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    ready.wait(timeout=timeout_s)
    if not found:
        stop_platform(launcher)
        tail = log.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"the platform did not start; the end of {log}:\n{tail}")
    return launcher, found[0]


def stop_platform(launcher: subprocess.Popen[bytes]) -> None:
    """SIGTERM the launcher (it stops the services, then the servers it started); kill its
    process group if it has not finished within a minute."""
    if launcher.poll() is None:
        launcher.send_signal(signal.SIGTERM)
    try:
        launcher.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()


def answers(url: str, process: subprocess.Popen[bytes], *, timeout_s: float) -> bool:
    """Poll ``url`` until it answers 200 (True); False once ``process`` has exited or the time
    is up."""
    deadline = time.monotonic() + timeout_s
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(0.2)
    return False


def launcher_lines(log: Path) -> list[str]:
    """What the launcher itself said so far (not its services), one entry per line."""
    lines = log.read_text(errors="replace").splitlines()
    return [m.group(1) for line in lines if (m := _OWN_LINE.match(line))]


async def wait_for_line(log: Path, pattern: str, *, after: int = 0, timeout_s: float = 120) -> str:
    """Wait until a line of the launcher's own, past its first ``after`` lines, matches
    ``pattern``; return it (AssertionError with what it said otherwise)."""
    wanted = re.compile(pattern)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in launcher_lines(log)[after:]:
            if wanted.search(line):
                return line
        await asyncio.sleep(0.2)
    said = "\n".join(launcher_lines(log)[after:])
    raise AssertionError(f"the launcher did not say /{pattern}/ within {timeout_s:.0f}s:\n{said}")
