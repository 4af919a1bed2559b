"""The password policy and email normalisation, without any server."""

from __future__ import annotations

import pytest

from compgrid_auth.domain.emails import normalise_email
from compgrid_auth.domain.passwords import COMMON, MAX_LENGTH, MIN_LENGTH, check_password
from compgrid_runtime.errors import Invalid

# --- passwords --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "password",
    [
        "a perfectly fine passphrase",
        "abcde" + "x" * (MIN_LENGTH - 5),  # exactly the minimum length, 6 distinct
        "abcde" + "x" * (MAX_LENGTH - 5),  # exactly the maximum length
        "abcdeabcdeab",  # exactly 5 different characters
        "ümlaut ßtraße ok",
        "🔑🔒🔓🗝️🚪 emoji pass",
    ],
)
def test_acceptable_passwords_pass(password: str) -> None:
    check_password(password)  # raises Invalid when refused
    check_password(password, email="someone@example.org")


@pytest.mark.parametrize(
    ("password", "says"),
    [
        ("", f"at least {MIN_LENGTH}"),
        ("abcde" + "x" * (MIN_LENGTH - 6), f"at least {MIN_LENGTH}"),
        ("abcde" + "x" * (MAX_LENGTH - 4), f"at most {MAX_LENGTH}"),
        ("x" * 1_000_000, f"at most {MAX_LENGTH}"),
        ("aaaaaaaaaaaaaaaa", "5 different"),
        ("abcdabcdabcdabcd", "5 different"),
        ("            ", "5 different"),
    ],
)
def test_unacceptable_passwords_name_the_rule(password: str, says: str) -> None:
    with pytest.raises(Invalid) as refused:
        check_password(password)
    assert refused.value.field == "password"
    assert refused.value.status == 422
    assert refused.value.message.startswith("password: ")
    assert says in refused.value.message


def test_the_length_cap_is_checked_before_anything_else() -> None:
    # a huge password made of one character breaks two rules; the cheap cap wins
    with pytest.raises(Invalid) as refused:
        check_password("a" * (MAX_LENGTH + 1))
    assert "at most" in refused.value.message


@pytest.mark.parametrize("common", sorted(COMMON))
def test_common_passwords_are_refused_in_any_case(common: str) -> None:
    for variant in (common, common.upper(), common.capitalize()):
        with pytest.raises(Invalid) as refused:
            check_password(variant)
        assert refused.value.field == "password"
        assert "too easy" in refused.value.message


def test_common_list_entries_are_otherwise_long_enough() -> None:
    # so that the "too easy" rule, not the length rule, is what refuses them
    assert all(len(p) >= MIN_LENGTH for p in COMMON)


def test_password_equal_to_the_email_is_refused() -> None:
    email = "ada.lovelace@example.org"
    for password in (email, email.upper(), "Ada.Lovelace@Example.org"):
        with pytest.raises(Invalid) as refused:
            check_password(password, email=email)
        assert refused.value.field == "password"
        assert "too easy" in refused.value.message
    # without the email the same string is fine (no Invalid raised)
    check_password(email)


# --- emails -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "normalised"),
    [
        ("ada@example.org", "ada@example.org"),
        ("Ada@Example.ORG", "ada@example.org"),
        ("ADA.LOVELACE+grid@EXAMPLE.ORG", "ada.lovelace+grid@example.org"),
        ("ada@bücher.de", "ada@bücher.de"),
        ("ada@BÜCHER.de", "ada@bücher.de"),
        ("ada@xn--bcher-kva.de", "ada@bücher.de"),
    ],
)
def test_emails_are_normalised_to_lower_case(address: str, normalised: str) -> None:
    assert normalise_email(address) == normalised


def test_normalising_is_idempotent() -> None:
    once = normalise_email("Grace.Hopper@Navy.Example.ORG")
    assert normalise_email(once) == once


@pytest.mark.parametrize(
    "address",
    [
        "",
        "plainaddress",
        "@example.org",
        "ada@",
        "ada@@example.org",
        "ada@example",
        "ada @example.org",
        " ada@example.org",
        "ada@example..org",
        "ada@-example.org",
        "ada@localhost",
        "<script>@example.org",
        "ada'); DROP TABLE user_account;--@example.org",
        "ada@example.org\r\nBcc: victim@example.org",
    ],
)
def test_invalid_emails_are_refused_naming_the_field(address: str) -> None:
    with pytest.raises(Invalid) as refused:
        normalise_email(address)
    assert refused.value.field == "email"
    assert refused.value.status == 422
    assert refused.value.message.startswith("email: ")


def test_overlong_emails_are_refused_before_parsing() -> None:
    address = "a" * 64 + "@" + ("b" * 60 + ".") * 4 + "org"
    assert len(address) > 254
    with pytest.raises(Invalid) as refused:
        normalise_email(address)
    assert refused.value.message == "email: at most 254 characters"
    with pytest.raises(Invalid) as huge:
        normalise_email("x" * 1_000_000)
    assert huge.value.message == "email: at most 254 characters"


def test_an_email_of_exactly_254_characters_is_accepted() -> None:
    domain = ".".join(["d" * 61] * 3) + ".org"  # 3*61 + 2 + 4 = 189 characters
    local = "l" * (254 - 1 - len(domain))
    address = f"{local}@{domain}"
    assert len(address) == 254
    assert len(local) <= 64
    assert normalise_email(address) == address
