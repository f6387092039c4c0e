"""The `admin:` section (the admin API: teamsbc/admin.py) -> AdminSettings.

    admin:
      enabled: true
      listen: 127.0.0.1:7061     # off loopback only with a token
      token: ...                 # or token_file: /etc/teamsbc/admin.token
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .addresses import AddressError, HostPort, is_loopback, parse_hostport
from .settings import SettingsReader

# 7061: no registered service, not in the ephemeral range, unlike 8080 (proxies, dev servers,
# Jenkins...) a port nothing else on an SBC host is likely to hold; 7061 beside Teams' 5061.
DEFAULT_LISTEN = ("127.0.0.1", 7061)


class AdminConfigError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class AdminSettings:
    enabled: bool = True
    listen: HostPort = HostPort(*DEFAULT_LISTEN)
    token: str | None = None


def exposure_problem(listen: HostPort, token: str | None) -> str | None:
    """Why this admin listener must not start, or None."""
    if token or is_loopback(listen.host):
        return None
    return f"admin.listen {_exposure_text(listen)}"


def _exposure_text(listen: HostPort) -> str:
    return (f"{listen} is not a loopback address and admin.token is not set: anyone who reaches "
            f"it could reload certificates and trace calls. Set admin.token (or admin.token_file) "
            f"to a long random string, or listen on 127.0.0.1")


def parse_admin(r: SettingsReader, section: Any) -> AdminSettings:
    """The `admin` section, including the exposure rule (non-loopback listener without a
    token)."""
    start = len(r.errors)
    if section is not None and not isinstance(section, dict):
        r.err("admin", "must be a mapping {enabled, listen, token, token_file}")
        return AdminSettings()
    section = r.mapping(section, "admin", ("enabled", "listen", "token", "token_file"))
    base = r.base
    enabled = section.get("enabled", True)
    if not isinstance(enabled, bool):
        r.err("admin.enabled", f"must be true or false, got {enabled!r}")
        enabled = True
    listen = HostPort(*DEFAULT_LISTEN)
    v = section.get("listen")
    if v is not None:
        try:
            listen = parse_hostport(v)
        except AddressError as e:
            r.err("admin.listen", f"{e} (e.g. 127.0.0.1:7061)")
    token = section.get("token")
    if token is not None and (not isinstance(token, str) or len(token) < 16):
        r.err("admin.token", "must be a string of at least 16 characters (e.g. `openssl rand -hex 24`)")
        token = None
    tf = section.get("token_file")
    if tf is not None:
        if token is not None:
            r.err("admin.token_file", "give admin.token or admin.token_file, not both")
        elif not isinstance(tf, str):
            r.err("admin.token_file", f"must be a file path, got {tf!r}")
        else:
            p = Path(tf) if Path(tf).is_absolute() else base / tf
            try:
                token = p.read_text().strip()
            except OSError as e:
                r.err("admin.token_file", f"cannot read {p}: {e.strerror}")
            else:
                if len(token) < 16:
                    r.err("admin.token_file", f"{p} must hold at least 16 characters")
                    token = None
    settings = AdminSettings(enabled, listen, token)
    if enabled and len(r.errors) == start:
        if exposure_problem(listen, token):
            r.err("admin.listen", _exposure_text(listen))
    return settings


