"""The effective configuration as the console shows it (every default filled in, secrets
masked) and what `teamsbc check` says of the file on disk now (it may have changed since the
SBC started: then a restart or reload is pending)."""
from __future__ import annotations

import dataclasses
import enum
from pathlib import Path
from typing import Any

from ..addresses import HostPort

# Settings fields that hold a secret (admin.token, pbx.auth.password, capture.password,
# acme.eab.hmac_key, acme.rfc2136.key_secret): shown as set / not set, never as a value.
SECRET_FIELDS = frozenset({"token", "password", "hmac_key", "key_secret", "secret"})
MASKED = "******** (set)"


def plain(value: Any, key: str = "") -> Any:
    """Settings objects -> JSON-able values, secrets masked."""
    if key in SECRET_FIELDS:
        return None if value is None else MASKED
    if isinstance(value, HostPort):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name), f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)   # Path, HostPort, NgAddress: their operator spelling


def effective(config: Any) -> dict:
    return plain(config)


def check(config: Any) -> dict:
    """`teamsbc check` of the file the SBC was started with, and whether it still matches."""
    from .. import config as cfg
    source = str(config.source)
    path = Path(source)
    if source.startswith("<") or not path.is_file():
        return {"source": source, "file": False, "ok": True, "errors": [],
                "text": f"{source}: not a file (nothing to check)", "changed": False}
    try:
        loaded = cfg.load(path)
    except cfg.ConfigError as e:
        return {"source": source, "file": True, "ok": False, "errors": list(e.errors),
                "text": f"{source}: {len(e.errors)} problem(s); the running SBC keeps its configuration",
                "changed": True}
    changed = effective(loaded) != effective(config)
    c = loaded
    text = (f"{c.source}: ok (sbc {c.sbc.fqdn}, teams {c.teams.listen}, pbx {c.pbx.transport} "
            f"{c.pbx.listen} -> {c.pbx.address})")
    return {"source": source, "file": True, "ok": True, "errors": [], "text": text, "changed": changed}
