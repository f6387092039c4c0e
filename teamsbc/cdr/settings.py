"""The `cdr:` section of the config file -> CdrSettings.

    cdr:
      enabled: true
      path: cdr.sqlite          # relative to the config file's directory
      synchronous: normal       # normal | full (fsync every commit)
      url: postgresql://teamsbc:PASSWORD@db.example.net:5432/teamsbc   # instead of path: one
                                # PostgreSQL store for every box of a pair (docs/ha.md)

The password of `url` is a secret: it never appears in an error, a log line or a repr.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ..sealing import Secret
from ..settings import ConfigError, SettingsReader, read_yaml

DEFAULT_PATH = "cdr.sqlite"


class CdrError(Exception):
    """The CDR database cannot be used (the message names the file and what to do)."""


@dataclass(frozen=True, slots=True)
class PgUrl:
    """cdr.url: postgresql://USER:PASSWORD@HOST:PORT/DBNAME[?sslmode=MODE]."""
    user: str
    password: Secret
    host: str
    port: int
    dbname: str
    sslmode: str | None = None

    def connect_kwargs(self) -> dict[str, Any]:
        """For psycopg.connect(**kw) (libpq keywords; the password only here)."""
        kw: dict[str, Any] = {"user": self.user, "password": self.password.reveal().decode(),
                              "host": self.host, "port": self.port, "dbname": self.dbname}
        if self.sslmode:
            kw["sslmode"] = self.sslmode
        return kw

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"postgresql://{self.user}:***@{host}:{self.port}/{self.dbname}"


_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})")
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def parse_pg_url(text: str) -> PgUrl:
    """ValueError with a message that never contains the password."""
    try:
        u = urlsplit(text.strip())
        port = u.port
    except ValueError:
        raise ValueError("is not a URL like postgresql://user:password@host:5432/dbname") from None
    if u.scheme not in ("postgresql", "postgres"):
        raise ValueError("must start with postgresql:// (postgresql://user:password@host:5432/dbname)")
    if not u.username or u.password is None or not u.password:
        raise ValueError("needs a user and a password (postgresql://user:password@host:5432/dbname)")
    host = u.hostname or ""
    if not host:
        raise ValueError("needs a host (postgresql://user:password@host:5432/dbname)")
    if not (_HOST.fullmatch(host) or ":" in host):   # a name, an IPv4 or a bracketed IPv6
        raise ValueError(f"host {host!r} is not an IP address or a host name")
    dbname = unquote(u.path.lstrip("/"))
    if not dbname or "/" in dbname:
        raise ValueError("needs a database name after the port (postgresql://user:password@host:5432/dbname)")
    sslmode = None
    if u.query:
        for item in u.query.split("&"):
            k, _, v = item.partition("=")
            if k != "sslmode" or v not in SSLMODES:
                raise ValueError(f"only ?sslmode=({'|'.join(SSLMODES)}) may follow the database name")
            sslmode = v
    if u.fragment:
        raise ValueError("must not have a #fragment")
    return PgUrl(unquote(u.username), Secret(unquote(u.password)), host, port or 5432, dbname, sslmode)


@dataclass(frozen=True, slots=True)
class CdrSettings:
    enabled: bool = True
    path: Path = Path(DEFAULT_PATH)
    synchronous: str = "normal"     # normal | full
    url: PgUrl | None = None        # PostgreSQL instead of the SQLite file at `path`


def parse_cdr(r: SettingsReader, section: Any) -> CdrSettings:
    """The `cdr` section; a relative path is relative to the config file's directory."""
    if section is not None and not isinstance(section, dict):
        r.err("cdr", "must be a mapping {enabled, path, synchronous, url}")
        return CdrSettings(path=r.base / DEFAULT_PATH)
    section = r.mapping(section, "cdr", ("enabled", "path", "synchronous", "url"))
    enabled = r.bool_(section, "cdr", "enabled", True)
    p = section.get("path", DEFAULT_PATH)
    if not isinstance(p, str) or not p.strip():
        r.err("cdr.path", f"must be a file path like /var/lib/teamsbc/cdr.sqlite, got {p!r}")
        p = DEFAULT_PATH
    path = Path(p)
    if not path.is_absolute():
        path = r.base / path
    sync = section.get("synchronous", "normal")
    if sync not in ("normal", "full"):
        r.err("cdr.synchronous", f"{sync!r} is not one of normal, full")
        sync = "normal"
    url = None
    v = section.get("url")
    if v is not None:
        if not isinstance(v, str) or not v.strip():
            r.err("cdr.url", "must be a string like postgresql://user:password@host:5432/dbname")
        else:
            try:
                url = parse_pg_url(v)
            except ValueError as e:
                r.err("cdr.url", str(e))
            if url is not None and "path" in section:
                r.err("cdr.url", "and cdr.path both given: CDRs go to one store (remove cdr.path)")
    return CdrSettings(enabled, path, sync, url)


def settings_from_config_file(config_path: str | Path) -> CdrSettings:
    """Only the `cdr` section of a config file (the rest is not validated: `teamsbc cdr` must
    work on a box whose certificates are missing)."""
    try:
        data, r = read_yaml(config_path)
    except ConfigError as e:
        raise CdrError("\n".join(e.errors)) from None
    if not isinstance(data, dict):
        raise CdrError(f"{config_path}: top level must be a mapping")
    settings = parse_cdr(r, data.get("cdr"))
    if r.errors:
        raise CdrError("\n".join(r.errors))
    return settings
