"""Password policy.

A password is 12 to 128 characters (the cap keeps hashing cheap and bounded), uses at least 5
different characters, is not the account's email and is not one of the passwords attackers try
first. Length beats composition rules (NIST SP 800-63B), so there are none of those.
"""

from __future__ import annotations

from compgrid_runtime.errors import Invalid

MIN_LENGTH = 12
MAX_LENGTH = 128
COMMON = frozenset(
    {
        "password1234",
        "123456789012",
        "qwertyuiop12",
        "letmein12345",
        "changeme1234",
        "administrator",
        "passwordpassword",
        "iloveyou1234",
        "welcome12345",
        "compgrid1234",
    }
)


def check_password(password: str, *, email: str = "", field: str = "password") -> None:
    """Raise Invalid (naming ``field``) unless the password is acceptable."""
    if len(password) > MAX_LENGTH:
        raise Invalid(f"{field}: at most {MAX_LENGTH} characters", field=field)
    if len(password) < MIN_LENGTH:
        raise Invalid(f"{field}: at least {MIN_LENGTH} characters", field=field)
    if len(set(password)) < 5:
        raise Invalid(f"{field}: use at least 5 different characters", field=field)
    if password.lower() in COMMON or (email and password.lower() == email.lower()):
        raise Invalid(f"{field}: too easy to guess", field=field)
