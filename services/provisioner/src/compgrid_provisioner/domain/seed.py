"""cloud-init NoCloud seed: a small ISO9660 image labelled ``cidata`` with the instance's
hostname and the user's SSH key, attached to the guest as a CD-ROM."""

from __future__ import annotations

import io
import json
import re
from uuid import UUID

import pycdlib

_HOSTNAME = re.compile(r"[^a-z0-9-]+")


def hostname(name: str) -> str:
    """A valid hostname from an instance name (lower case, letters, digits and dashes)."""
    cleaned = _HOSTNAME.sub("-", name.lower()).strip("-")[:63].strip("-")
    return cleaned or "instance"


def meta_data(instance_id: UUID, name: str) -> str:
    """The NoCloud ``meta-data`` file."""
    return json.dumps({"instance-id": str(instance_id), "local-hostname": hostname(name)})


def user_data(name: str, user: str, ssh_public_key: str | None) -> str:
    """The NoCloud ``user-data`` file (cloud-config)."""
    config: dict[str, object] = {
        "hostname": hostname(name),
        "users": [
            {
                "name": user,
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "shell": "/bin/bash",
                "ssh_authorized_keys": [ssh_public_key] if ssh_public_key else [],
            }
        ],
        "ssh_pwauth": False,
    }
    # JSON is YAML; cloud-init wants the header line.
    return "#cloud-config\n" + json.dumps(config, indent=2) + "\n"


def seed_iso(instance_id: UUID, name: str, user: str, ssh_public_key: str | None) -> bytes:
    """The seed image's bytes."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for file_name, text in (
        ("meta-data", meta_data(instance_id, name)),
        ("user-data", user_data(name, user, ssh_public_key)),
    ):
        data = text.encode()
        iso_name = "/" + file_name.replace("-", "_").upper() + ".;1"
        iso.add_fp(
            io.BytesIO(data),
            len(data),
            iso_name,
            rr_name=file_name,
            joliet_path="/" + file_name,
        )
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()
