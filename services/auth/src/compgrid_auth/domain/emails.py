"""Email addresses: validated and normalised (lower case) before they are stored or compared."""

from __future__ import annotations

from email_validator import EmailNotValidError, validate_email

from compgrid_runtime.errors import Invalid


def normalise_email(address: str) -> str:
    """Return the address in canonical lower-case form, or raise Invalid naming ``email``."""
    if len(address) > 254:
        raise Invalid("email: at most 254 characters", field="email")
    try:
        checked = validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        raise Invalid(f"email: {exc}", field="email") from exc
    return checked.normalized.lower()
