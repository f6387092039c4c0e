"""Reading one YAML config file into typed settings: the one way errors are collected.

Every feature owns its settings type and its parser (`trunk_settings`, `security_settings`,
`media/settings`, `certs/settings`, `admin_settings`, `cdr/settings`, `capture/settings`);
each parser takes a `SettingsReader`, reports problems with `r.err(key, what)` and goes on, so
one `teamsbc check` lists every error, each as

    FILE: key: what is wrong (what would be right)

`config.py` only assembles the sections. This module is on the ground floor: it imports
nothing of teamsbc but `addresses`.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .addresses import AddressError, HostPort, is_ip, parse_hostport

FQDN_RE = re.compile(r"(?=.{1,253}\Z)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}\Z")

MISSING: Any = ...   # "no default": the key is required


class ConfigError(Exception):
    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


class SettingsReader:
    """Walks a YAML tree and records errors instead of raising. `source` names the file in
    messages; relative paths are resolved against `base` (the config file's directory)."""

    def __init__(self, source: str, base: Path, errors: list[str] | None = None):
        self.source = source
        self.base = base
        self.errors: list[str] = [] if errors is None else errors

    def err(self, key: str, msg: str) -> None:
        self.errors.append(f"{self.source}: {key}: {msg}")

    def raise_errors(self) -> None:
        if self.errors:
            raise ConfigError(list(self.errors))

    # ------------------------------------------------------------------ structure
    def section(self, data: Any, key: str, known: set[str] | tuple[str, ...],
                required: bool = True) -> dict:
        """`data[key]` as a mapping whose keys are all known (an absent optional one: {})."""
        v = data.get(key) if isinstance(data, dict) else None
        return self.mapping(v, key, known, required)

    def mapping(self, v: Any, where: str, known: set[str] | tuple[str, ...],
                required: bool = False) -> dict:
        if v is None:
            if required:
                self.err(where, "missing section")
            return {}
        if not isinstance(v, dict):
            self.err(where, f"must be a mapping, got {type(v).__name__}")
            return {}
        for k in v:
            if k not in known:
                self.err(f"{where}.{k}", f"unknown key (known: {', '.join(sorted(known))})")
        return v

    # ------------------------------------------------------------------ values
    def str_(self, d: dict, path: str, key: str, default: Any = MISSING,
             choices: tuple | None = None) -> str | None:
        v = d.get(key, default)
        if v is MISSING:
            self.err(f"{path}.{key}", "required")
            return None
        if v is None:
            return None
        if not isinstance(v, str) or not v.strip():
            self.err(f"{path}.{key}", f"must be a non-empty string, got {v!r}")
            return None
        if choices and v not in choices:
            self.err(f"{path}.{key}", f"{v!r} is not one of {', '.join(choices)}")
            return None
        return v.strip()

    def hostport(self, d: dict, path: str, key: str, default: Any = MISSING,
                 default_port: int | None = None) -> HostPort | None:
        v = d.get(key, default)
        where = f"{path}.{key}"
        if v is MISSING:
            self.err(where, "required (\"host:port\", e.g. 127.0.0.1:5060)")
            return None
        return self.parse_hostport(v, where, default_port)

    def parse_hostport(self, v: Any, where: str, default_port: int | None = None) -> HostPort | None:
        try:
            return parse_hostport(v, default_port)
        except AddressError as e:
            self.err(where, str(e))
            return None

    def ip_hostport(self, d: dict, path: str, key: str, default: Any = MISSING) -> HostPort | None:
        hp = self.hostport(d, path, key, default)
        if hp is not None and not is_ip(hp.host):
            self.err(f"{path}.{key}", f"{hp.host!r} must be an IP address (listeners and trunks "
                                      "bind/send by address)")
            return None
        return hp

    def path(self, d: dict, path: str, key: str, default: Any = MISSING,
             must_exist: bool = True) -> Path | None:
        v = self.str_(d, path, key, default)
        if v is None:
            return None
        p = Path(v)
        if not p.is_absolute():
            p = self.base / p
        if must_exist and not p.is_file():
            self.err(f"{path}.{key}", f"file {str(p)!r} does not exist or is not a file")
        return p

    def bool_(self, d: dict, path: str, key: str, default: bool) -> bool:
        v = d.get(key, default)
        if not isinstance(v, bool):
            self.err(f"{path}.{key}", f"must be true or false, got {v!r}")
            return default
        return v

    def number(self, d: dict, path: str, key: str, default: float, lo: float, hi: float) -> float:
        v = d.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            self.err(f"{path}.{key}", f"must be a number between {lo} and {hi}, got {v!r}")
            return default
        return v

    def whole(self, d: dict, path: str, key: str, default: int, lo: int, hi: int) -> int:
        v = d.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            self.err(f"{path}.{key}", f"must be a whole number between {lo} and {hi}, got {v!r}")
            return default
        return v


def read_yaml(path: str | Path) -> tuple[Any, SettingsReader]:
    """The YAML tree of a config file and a reader for it; ConfigError when the file cannot be
    read or is not YAML."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError([f"{p}: cannot read: {e.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        marked = isinstance(e, yaml.MarkedYAMLError)
        mark = e.problem_mark if marked else None
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = (e.problem if marked else None) or str(e)
        raise ConfigError([f"{p}: {where}not valid YAML: {problem}"]) from None
    return data, SettingsReader(str(p), p.resolve().parent)
