"""cloud-init NoCloud seed ISO: label, files, hostname and SSH key, read back with pycdlib."""

from __future__ import annotations

import io
import json
from typing import Any
from uuid import UUID

import pycdlib
import pytest
import yaml

from compgrid_provisioner.domain.seed import hostname, meta_data, seed_iso, user_data

INSTANCE = UUID("3c9d4e5f-6a7b-4c8d-9e0f-112233445566")
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTestsOnly alice@laptop"


def _read_iso(data: bytes) -> tuple[pycdlib.PyCdlib, dict[str, bytes]]:
    """The opened image and its files by Rock Ridge name (read before closing)."""
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    files: dict[str, bytes] = {}
    for name in ("meta-data", "user-data"):
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
        files[name] = out.getvalue()
    return iso, files


def _cloud_config(text: str) -> dict[str, Any]:
    assert text.splitlines()[0] == "#cloud-config"
    loaded = yaml.safe_load(text)
    assert isinstance(loaded, dict)
    return loaded


# --- hostname ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("web-01", "web-01"),
        ("My Box_01!", "my-box-01"),
        ("  spaced   out  ", "spaced-out"),
        ("--edge--", "edge"),
        ("Ünïcode Näme", "n-code-n-me"),
        ("a.b.c", "a-b-c"),
        ("", "instance"),
        ("!!!", "instance"),
        ("日本語", "instance"),
    ],
)
def test_hostname_is_lower_case_letters_digits_and_dashes(name: str, expected: str) -> None:
    assert hostname(name) == expected


def test_hostname_is_at_most_63_characters_and_does_not_end_in_a_dash() -> None:
    long_name = "a" * 62 + "-" + "b" * 40
    result = hostname(long_name)
    assert len(result) <= 63
    assert result == "a" * 62
    assert hostname("x" * 200) == "x" * 63


# --- meta-data and user-data ------------------------------------------------------------------


def test_meta_data_names_the_instance_and_its_hostname() -> None:
    assert json.loads(meta_data(INSTANCE, "My Box")) == {
        "instance-id": str(INSTANCE),
        "local-hostname": "my-box",
    }


def test_user_data_is_cloud_config_with_the_user_and_key() -> None:
    config = _cloud_config(user_data("My Box", "alice", KEY))
    assert config["hostname"] == "my-box"
    assert config["ssh_pwauth"] is False
    (user,) = config["users"]
    assert user["name"] == "alice"
    assert user["ssh_authorized_keys"] == [KEY]
    assert user["sudo"] == "ALL=(ALL) NOPASSWD:ALL"
    assert user["shell"] == "/bin/bash"


@pytest.mark.parametrize("key", [None, ""])
def test_user_data_without_a_key_authorises_none(key: str | None) -> None:
    config = _cloud_config(user_data("box", "ubuntu", key))
    (user,) = config["users"]
    assert user["name"] == "ubuntu"
    assert user["ssh_authorized_keys"] == []
    assert config["ssh_pwauth"] is False


# --- the ISO image ----------------------------------------------------------------------------


def test_seed_iso_is_labelled_cidata() -> None:
    iso, _ = _read_iso(seed_iso(INSTANCE, "box", "alice", KEY))
    try:
        assert iso.pvd.volume_identifier.decode().strip() == "cidata"
        assert iso.has_rock_ridge()
        assert iso.has_joliet()
    finally:
        iso.close()


def test_seed_iso_holds_exactly_meta_data_and_user_data() -> None:
    iso, _ = _read_iso(seed_iso(INSTANCE, "box", "alice", KEY))
    try:
        names = sorted(
            child.rock_ridge.name().decode()
            for child in iso.list_children(rr_path="/")
            if not (child.is_dot() or child.is_dotdot())
        )
        joliet = sorted(
            child.file_identifier().decode("utf-16-be")
            for child in iso.list_children(joliet_path="/")
            if not (child.is_dot() or child.is_dotdot())
        )
    finally:
        iso.close()
    assert names == ["meta-data", "user-data"]
    assert joliet == ["meta-data", "user-data"]


def test_seed_iso_files_hold_the_instance_hostname_user_and_ssh_key() -> None:
    iso, files = _read_iso(seed_iso(INSTANCE, "GPU Runner #7", "alice", KEY))
    iso.close()
    meta = yaml.safe_load(files["meta-data"])  # cloud-init reads meta-data as YAML
    assert meta == {"instance-id": str(INSTANCE), "local-hostname": "gpu-runner-7"}
    config = _cloud_config(files["user-data"].decode())
    assert config["hostname"] == "gpu-runner-7"
    (user,) = config["users"]
    assert user["name"] == "alice"
    assert user["ssh_authorized_keys"] == [KEY]


def test_seed_iso_files_equal_the_generated_texts_and_read_the_same_via_joliet() -> None:
    data = seed_iso(INSTANCE, "box", "alice", KEY)
    iso, files = _read_iso(data)
    try:
        for name in ("meta-data", "user-data"):
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, joliet_path=f"/{name}")
            assert out.getvalue() == files[name]
    finally:
        iso.close()
    assert files["meta-data"].decode() == meta_data(INSTANCE, "box")
    assert files["user-data"].decode() == user_data("box", "alice", KEY)


def test_seed_iso_without_key_has_no_authorised_keys() -> None:
    iso, files = _read_iso(seed_iso(INSTANCE, "box", "alice", None))
    iso.close()
    (user,) = _cloud_config(files["user-data"].decode())["users"]
    assert user["ssh_authorized_keys"] == []


def test_seed_iso_is_deterministic_in_content_for_the_same_input() -> None:
    first_iso, first = _read_iso(seed_iso(INSTANCE, "box", "alice", KEY))
    first_iso.close()
    second_iso, second = _read_iso(seed_iso(INSTANCE, "box", "alice", KEY))
    second_iso.close()
    assert first == second


def test_seed_iso_differs_per_instance() -> None:
    other = UUID("00000000-0000-4000-8000-000000000001")
    iso, files = _read_iso(seed_iso(other, "box", "alice", KEY))
    iso.close()
    assert json.loads(files["meta-data"])["instance-id"] == str(other)
