"""The whole platform as a child process: ``scripts/devstack.py`` (what ``just dev`` runs),
for the HTTP tests and the gateway benchmark."""

from __future__ import annotations

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


def start_platform(
    state: Path, env: dict[str, str], *, timeout_s: float = 240
) -> tuple[subprocess.Popen[bytes], str]:
    """Run the launcher with its output in ``state/platform.log``; return it and the base URL
    of the API once every service is ready (RuntimeError with the log's tail otherwise)."""
    log = state / "platform.log"
    out = log.open("wb")
    launcher = subprocess.Popen(
        [sys.executable, "scripts/devstack.py", "--state-dir", str(state)],
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
