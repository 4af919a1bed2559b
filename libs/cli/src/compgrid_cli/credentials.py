"""Where ``compgrid login`` keeps its sessions: one JSON file only its owner can read.

``credentials.json`` sits in the config directory (``COMPGRID_CONFIG_DIR``, else the
platform's user config directory for ``compgrid``) and holds one session per API URL plus the
URL signed in to last, which commands use when no ``--url`` is given. The directory is created
with mode 0700 and the file is written to a temporary file opened with mode 0600 and renamed
over the old one: no other user can read a token even for a moment, and a crash never leaves
half a file.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import platformdirs

CONFIG_DIR_ENV = "COMPGRID_CONFIG_DIR"
FILENAME = "credentials.json"
RENEW_MARGIN = timedelta(seconds=30)
"""Renew an access token this long before it expires, so it does not expire in flight."""


def config_dir() -> Path:
    """The directory holding the credentials file."""
    chosen = os.environ.get(CONFIG_DIR_ENV)
    return Path(chosen) if chosen else Path(platformdirs.user_config_dir("compgrid"))


@dataclass
class Session:
    """A signed-in session on one CompGrid API."""

    url: str
    access_token: str
    access_expires_at: str | None = None
    refresh_token: str | None = None
    api_token: str | None = None

    @classmethod
    def from_pair(cls, url: str, pair: dict[str, Any], api_token: str | None = None) -> Session:
        """A session from the API's token pair (login, refresh or API-token exchange)."""
        return cls(
            url=url,
            access_token=str(pair["access_token"]),
            access_expires_at=pair.get("access_expires_at"),
            refresh_token=pair.get("refresh_token"),
            api_token=api_token,
        )

    def expired(self, now: datetime | None = None) -> bool:
        """Whether the access token has expired or is about to."""
        if not self.access_expires_at:
            return False
        try:
            expires = datetime.fromisoformat(self.access_expires_at)
        except ValueError:
            return False
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
        return (now or datetime.now(UTC)) >= expires - RENEW_MARGIN

    @property
    def renewable(self) -> bool:
        """Whether a new access token can be had without asking for the password."""
        return bool(self.refresh_token or self.api_token)


class CredentialStore:
    """The sessions in the credentials file, one per API URL."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @property
    def path(self) -> Path:
        """The credentials file."""
        return self.directory / FILENAME

    def current_url(self) -> str | None:
        """The URL signed in to last."""
        current = self._read().get("current")
        return current if isinstance(current, str) else None

    def get(self, url: str) -> Session | None:
        """The session on ``url``, if signed in there."""
        found = self._read().get("sessions", {}).get(url)
        if not isinstance(found, dict):
            return None
        try:
            return Session(**found)
        except TypeError:
            return None

    def put(self, session: Session) -> None:
        """Keep a session and make its URL the current one."""
        data = self._read()
        data.setdefault("sessions", {})[session.url] = asdict(session)
        data["current"] = session.url
        self._write(data)

    def remove(self, url: str) -> Session | None:
        """Forget the session on ``url``; return it."""
        session = self.get(url)
        data = self._read()
        data.get("sessions", {}).pop(url, None)
        if data.get("current") == url:
            data["current"] = next(iter(data.get("sessions", {})), None)
        self._write(data)
        return session

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, data: dict[str, Any]) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = self.path.with_name(f".{FILENAME}.{os.getpid()}")
        try:
            with os.fdopen(
                os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
                "w",
                encoding="utf-8",
            ) as out:
                os.fchmod(out.fileno(), 0o600)  # a stale partial file may have had other modes
                json.dump(data, out, indent=2)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, self.path)
