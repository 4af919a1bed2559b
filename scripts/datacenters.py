"""The datacenters the launcher runs a provisioner worker for, as a deployment does: one per
datacenter. It asks the gateway for ``GET /datacenters`` as the demo admin every few seconds, so
a datacenter created while the platform runs gets its worker within that time. While the gateway
is away (restarting), failing (5xx) or holding sign-ins back (429, after ``Retry-After``) it
simply asks again later; only a refused sign-in (401/403) ends the asking, said once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx


class Datacenters:
    """Follows the list of datacenters through the gateway, in a background thread."""

    def __init__(
        self,
        api: str,
        login: tuple[str, str],
        interval_s: float,
        say: Callable[[str], None],
    ) -> None:
        self._http = httpx.Client(base_url=api, timeout=10)
        self._login = login
        self._interval_s = interval_s
        self._say = say
        self._token: str | None = None
        self._names: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._refused = False
        self._not_before = 0.0  # monotonic time before which signing in is not tried

    def start(self) -> None:
        """Ask now, then every ``interval_s`` seconds until stopped."""
        threading.Thread(target=self._run, name="datacenters", daemon=True).start()

    def stop(self) -> None:
        """Stop asking."""
        self._stop.set()

    def names(self) -> set[str]:
        """Every datacenter seen so far."""
        with self._lock:
            return set(self._names)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                found = self._list()
            except httpx.HTTPError:
                found = []  # the gateway is away for now: ask again later
            with self._lock:
                self._names.update(found)
            self._stop.wait(self._interval_s)

    def _list(self) -> list[str]:
        for _ in range(2):  # a second time with a fresh token when the first one lapsed
            if self._token is None and not self._sign_in():
                return []
            reply = self._http.get(
                "/datacenters", headers={"Authorization": f"Bearer {self._token}"}
            )
            if reply.status_code != 401:
                reply.raise_for_status()
                return [str(dc["name"]) for dc in reply.json()]
            self._token = None
        return []

    def _sign_in(self) -> bool:
        # Asking again after a refusal, or before Retry-After, would only trip login throttling.
        if self._refused or time.monotonic() < self._not_before:
            return False
        email, password = self._login
        reply = self._http.post("/auth/login", json={"email": email, "password": password})
        if reply.status_code == 200:
            self._token = str(reply.json()["access_token"])
            return True
        if reply.status_code == 429:
            self._not_before = time.monotonic() + self._retry_after(reply)
        elif reply.status_code in (401, 403):
            self._refused = True
            self._say(
                f"cannot sign in as {email} to list the datacenters ({reply.status_code}): "
                "datacenters created from now on get no provisioner worker"
            )
        return False

    def _retry_after(self, reply: httpx.Response) -> float:
        """Seconds the server asks to wait (``Retry-After`` in seconds), else one interval."""
        try:
            return max(0.0, float(reply.headers.get("Retry-After", "")))
        except ValueError:
            return self._interval_s
