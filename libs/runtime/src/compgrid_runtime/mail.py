"""Outgoing email: one port, delivered over SMTP with aiosmtplib.

Auth sends password-reset and invitation mails and billing sends invoices through the same
``COMPGRID_SMTP_*`` settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Protocol

import aiosmtplib
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class SmtpSettings(BaseSettings):
    """Where mail goes (shared by every service that sends mail)."""

    model_config = SettingsConfigDict(env_prefix="COMPGRID_SMTP_", extra="ignore")
    host: str = "127.0.0.1"
    port: int = Field(default=1025, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    starttls: bool = False
    sender: str = "CompGrid <compgrid@localhost>"
    timeout_s: float = 10.0


@dataclass(frozen=True)
class Attachment:
    """A file attached to a mail."""

    filename: str
    content: bytes
    mime_type: str = "application/octet-stream"


@dataclass(frozen=True)
class Mail:
    """One message to send."""

    to: tuple[str, ...]
    subject: str
    text: str
    attachments: tuple[Attachment, ...] = field(default=())


class Mailer(Protocol):
    """Sends mail; raises when the server refuses it."""

    async def send(self, mail: Mail) -> None:
        """Deliver one message."""


class SmtpMailer:
    """The real mailer: SMTP through aiosmtplib."""

    def __init__(self, settings: SmtpSettings) -> None:
        self._settings = settings

    async def send(self, mail: Mail) -> None:
        """Deliver one message over SMTP."""
        s = self._settings
        await aiosmtplib.send(
            build_message(mail, s.sender),
            hostname=s.host,
            port=s.port,
            username=s.username,
            password=s.password.get_secret_value() if s.password else None,
            start_tls=s.starttls,
            timeout=s.timeout_s,
        )


def build_message(mail: Mail, sender: str) -> EmailMessage:
    """Return the MIME message for a mail."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(mail.to)
    message["Subject"] = mail.subject
    message.set_content(mail.text)
    for item in mail.attachments:
        main, _, sub = item.mime_type.partition("/")
        message.add_attachment(item.content, maintype=main, subtype=sub, filename=item.filename)
    return message
