"""HTTP access to CompGrid's REST API (``<url>/api/v1``) for one signed-in session.

Renewal: an access token about to expire, or answered with 401, is renewed once with the
session's refresh token (or the API token it came from) and the request is sent again.

Repeats: a refused connection, a 429 and a 409 "still being processed" are tried again up to
three times, after the server's ``Retry-After`` (at most 10 s) or a short back-off. Every POST
carries an ``Idempotency-Key`` that stays the same across these repeats, so a repeated command
never acts twice. Everything that still fails becomes a ``CliError`` with its exit code.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from types import TracebackType
from typing import Any

import httpx

from compgrid_cli.credentials import CredentialStore, Session
from compgrid_cli.errors import CliError, ExitCode, problem_error, transport_error

API_PREFIX = "/api/v1"
ATTEMPTS = 3
MAX_RETRY_AFTER_S = 10.0
_RETRY_STATUSES = frozenset({409, 429, 503})


def _user_agent() -> str:
    try:
        return f"compgrid-cli/{version('compgrid-cli')}"
    except PackageNotFoundError:
        return "compgrid-cli"


def normalise_url(url: str) -> str:
    """The platform's base URL, without a trailing slash or API prefix."""
    url = url.strip().rstrip("/")
    return url.removesuffix(API_PREFIX).rstrip("/")


def _retry_delay(response: httpx.Response, attempt: int) -> float | None:
    """How long to wait before sending again, or None when the answer is final."""
    header = response.headers.get("Retry-After")
    if response.status_code not in _RETRY_STATUSES or header is None:
        return None
    try:
        return min(max(float(header), 0.0), MAX_RETRY_AFTER_S)
    except ValueError:
        return float(attempt)


class Api:
    """The API of one platform, called with the session stored for its URL."""

    def __init__(self, url: str, store: CredentialStore, *, timeout_s: float = 30.0) -> None:
        self.url = normalise_url(url)
        self._store = store
        self._session = store.get(self.url)
        self._http = httpx.Client(
            base_url=self.url + API_PREFIX,
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            headers={"User-Agent": _user_agent(), "Accept": "application/json"},
        )

    def __enter__(self) -> Api:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._http.close()

    # sessions

    @property
    def session(self) -> Session:
        """The stored session; not signed in is exit code 3."""
        if self._session is None:
            raise CliError(
                f"not signed in to {self.url}; run `compgrid login`",
                ExitCode.AUTH,
                code="not_signed_in",
            )
        return self._session

    def sign_in(self, email: str, password: str) -> Session:
        """Sign in with email and password and keep the session."""
        pair = self.post("/auth/login", {"email": email, "password": password}, auth=False)
        return self._keep(Session.from_pair(self.url, pair))

    def sign_in_with_api_token(self, api_token: str) -> Session:
        """Trade an API token for an access token and keep both (to renew it later)."""
        pair = self.post("/auth/token", {"api_token": api_token}, auth=False)
        return self._keep(Session.from_pair(self.url, pair, api_token=api_token))

    def sign_out(self) -> Session | None:
        """Revoke the refresh token (best effort) and forget the session."""
        session = self._session
        if session is not None and session.refresh_token:
            # an expired or revoked token: forgetting it is all that is left to do
            with contextlib.suppress(CliError):
                self.post("/auth/logout", {"refresh_token": session.refresh_token}, auth=False)
        self._session = None
        return self._store.remove(self.url)

    def renew(self) -> None:
        """Get a new access token without the password, or fail with exit code 3."""
        session = self.session
        stored = self._store.get(self.url)  # another compgrid process may have renewed it
        if stored and stored.access_token != session.access_token and not stored.expired():
            self._session = stored
            return
        try:
            if session.refresh_token:
                pair = self.post(
                    "/auth/refresh", {"refresh_token": session.refresh_token}, auth=False
                )
            elif session.api_token:
                pair = self.post("/auth/token", {"api_token": session.api_token}, auth=False)
            else:
                raise CliError("the session expired", ExitCode.AUTH, code="session_expired")
        except CliError as exc:
            if exc.exit_code is not ExitCode.AUTH:
                raise
            raise CliError(
                f"{exc.detail}; sign in again with `compgrid login`", ExitCode.AUTH, code=exc.code
            ) from None
        self._keep(Session.from_pair(self.url, pair, api_token=session.api_token))

    def _keep(self, session: Session) -> Session:
        self._store.put(session)
        self._session = session
        return session

    # requests

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """GET a JSON resource."""
        return self.request("GET", path, params=params).json()

    def post(
        self, path: str, body: Any = None, *, auth: bool = True, key: str | None = None
    ) -> Any:
        """POST a command with an ``Idempotency-Key`` (``key``, else a new one); its JSON
        answer, None when empty."""
        headers = {"Idempotency-Key": key} if key else None
        response = self.request("POST", path, body=body, auth=auth, headers=headers)
        return response.json() if response.content else None

    def patch(self, path: str, body: Any, *, if_match: str | None = None) -> Any:
        """PATCH a resource, guarded by ``If-Match`` when given."""
        headers = {"If-Match": if_match} if if_match else {}
        return self.request("PATCH", path, body=body, headers=headers).json()

    def delete(self, path: str) -> Any:
        """DELETE a resource; its JSON answer."""
        return self.request("DELETE", path).json()

    def pages(self, path: str, params: dict[str, Any], *, every: bool) -> dict[str, Any]:
        """A cursor-paged list: one page, or every page when ``every`` (``after`` = cursor)."""
        page: dict[str, Any] = self.get(path, params)
        items: list[Any] = list(page.get("items", []))
        while every and page.get("next_cursor"):
            page = self.get(path, {**params, "after": page["next_cursor"]})
            items.extend(page.get("items", []))
        return {"items": items, "next_cursor": page.get("next_cursor")}

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
        auth: bool = True,
    ) -> httpx.Response:
        """Send a request (renewing the token once on 401); an error answer raises."""
        headers = dict(headers or {})
        if method == "POST":
            headers.setdefault("Idempotency-Key", str(uuid.uuid4()))
        request = {"params": _query(params), "json": body, "headers": headers}
        response = self._exchange(method, path, auth=auth, **request)
        if response.status_code == 401 and auth and self.session.renewable:
            self.renew()
            response = self._exchange(method, path, auth=auth, **request)
        if response.is_error:
            raise problem_error(response, body)
        return response

    @contextmanager
    def stream(
        self, path: str, params: dict[str, Any], *, read_timeout_s: float
    ) -> Iterator[httpx.Response]:
        """An open ``text/event-stream`` answer (renewing the token once on 401)."""
        response = self._open_stream(path, params, read_timeout_s)
        if response.status_code == 401 and self.session.renewable:
            response.close()
            self.renew()
            response = self._open_stream(path, params, read_timeout_s)
        try:
            if response.is_error:
                response.read()
                raise problem_error(response)
            yield response
        finally:
            response.close()

    def _open_stream(
        self, path: str, params: dict[str, Any], read_timeout_s: float
    ) -> httpx.Response:
        headers = {**self._authorization(), "Accept": "text/event-stream"}
        timeout = httpx.Timeout(30.0, connect=10.0, read=read_timeout_s)
        request = self._http.build_request(
            "GET", path, params=_query(params), headers=headers, timeout=timeout
        )
        try:
            return self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise transport_error(self.url, exc) from exc

    def _exchange(self, method: str, path: str, *, auth: bool, **request: Any) -> httpx.Response:
        """Send, and send again after a refused connection or a ``Retry-After``."""
        for attempt in range(1, ATTEMPTS + 1):
            headers = {**(self._authorization() if auth else {}), **request["headers"]}
            try:
                response = self._http.request(method, path, **{**request, "headers": headers})
            except httpx.ConnectError as exc:
                if attempt == ATTEMPTS:
                    raise transport_error(self.url, exc) from exc
                time.sleep(0.5 * 2**attempt)
                continue
            except httpx.TransportError as exc:
                raise transport_error(self.url, exc) from exc
            delay = _retry_delay(response, attempt)
            if delay is None or attempt == ATTEMPTS:
                return response
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _authorization(self) -> dict[str, str]:
        session = self.session
        if session.expired() and session.renewable:
            self.renew()
            session = self.session
        return {"Authorization": f"Bearer {session.access_token}"}


def _query(params: dict[str, Any] | None) -> dict[str, Any] | None:
    """Query parameters without the unset ones (booleans as the API spells them)."""
    if params is None:
        return None
    return {
        key: ("true" if value else "false") if isinstance(value, bool) else value
        for key, value in params.items()
        if value is not None
    }
