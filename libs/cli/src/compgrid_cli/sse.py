"""Following an instance live: the server-sent events of ``/events/instances``.

``parse`` turns the lines of a ``text/event-stream`` into events by the WHATWG rules (``event``
and ``id`` fields, ``data`` lines joined by newlines, comments such as keepalives skipped).

``wait_for`` follows one instance until it reaches one of the target states. A stream for one
instance starts with the instance as it is now, so a dropped stream is simply opened again
(until the deadline): no change can fall between two connections. Reaching ``failed``,
``rejected`` or ``deleted`` when that is not the target ends the wait with exit code 1; an
``error`` event saying the token expired renews it and reconnects; the deadline is exit code 5.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from compgrid_cli.client import Api
from compgrid_cli.errors import CliError, ExitCode

END_STATES = frozenset({"failed", "rejected", "deleted"})
FAILED_STATES = frozenset({"failed", "rejected"})
SETTLED_STATES = frozenset({"pending_approval", "running", "stopped", *END_STATES})
"""States an instance stays in until someone acts (or it ends)."""
READ_TIMEOUT_S = 60.0
"""Longer than the server's keepalive interval: a silent stream this long is dead."""
RECONNECT_PAUSE_S = 1.0


@dataclass(frozen=True)
class ServerEvent:
    """One server-sent event."""

    event: str
    data: str
    id: str | None = None

    def json(self) -> Any:
        """The event's data as JSON."""
        return json.loads(self.data)


def parse(lines: Iterable[str]) -> Iterator[ServerEvent]:
    """The events in the lines of an event stream (a blank line ends each event)."""
    event, last_id = "", None
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield ServerEvent(event or "message", "\n".join(data), last_id)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id" and "\0" not in value:
            last_id = value


@dataclass(frozen=True)
class Change:
    """An instance's state, as the stream reported it."""

    instance_id: str
    state: str
    reason: str = ""
    version: int | None = None


class _TokenExpired(Exception):
    """The stream ended because the access token expired."""


def _change(event: ServerEvent, instance_id: str) -> Change | None:
    """The state an ``instance`` or ``state`` event reports; an ``error`` event raises."""
    if event.event not in ("instance", "state", "error"):
        return None
    data = event.json()
    if event.event == "error":
        if data.get("code") == "unauthorized":
            raise _TokenExpired
        raise CliError(str(data.get("detail", "the event stream failed")), code=data.get("code"))
    return Change(
        instance_id=str(data.get("instance_id") or data.get("id") or instance_id),
        state=str(data["state"]),
        reason=str(data.get("reason") or ""),
        version=data.get("version"),
    )


def _until(lines: Iterable[str], deadline: float) -> Iterator[str]:
    for line in lines:
        if time.monotonic() >= deadline:
            return
        yield line


def changes(api: Api, instance_id: str, deadline: float) -> Iterator[Change]:
    """The instance's state now and at each change, reconnecting until the deadline."""
    params = {"instance_id": instance_id}
    while (left := deadline - time.monotonic()) > 0:
        try:
            read_timeout = max(min(left, READ_TIMEOUT_S), 0.5)
            with api.stream("/events/instances", params, read_timeout_s=read_timeout) as answer:
                for event in parse(_until(answer.iter_lines(), deadline)):
                    if (change := _change(event, instance_id)) is not None:
                        yield change
        except _TokenExpired:
            api.renew()
            continue
        except httpx.TransportError:
            pass  # the stream dropped or went silent: open it again
        except CliError as exc:
            if exc.exit_code is not ExitCode.UNAVAILABLE:
                raise
        time.sleep(min(RECONNECT_PAUSE_S, max(deadline - time.monotonic(), 0)))


def wait_for(
    api: Api,
    instance_id: str,
    targets: frozenset[str],
    *,
    timeout_s: float,
    on_change: Callable[[Change], None] = lambda change: None,
) -> Change:
    """Follow the instance until its state is one of ``targets``; fail on another end."""
    for change in changes(api, instance_id, time.monotonic() + timeout_s):
        on_change(change)
        if change.state in targets:
            return change
        if change.state in END_STATES:
            because = f": {change.reason}" if change.reason else ""
            raise CliError(
                f"instance {instance_id} is {change.state}{because}",
                ExitCode.FAILED,
                code=f"instance_{change.state}",
            )
    wanted = " or ".join(sorted(targets))
    raise CliError(
        f"instance {instance_id} did not become {wanted} within {timeout_s:g} s",
        ExitCode.UNAVAILABLE,
        code="wait_timeout",
    )
