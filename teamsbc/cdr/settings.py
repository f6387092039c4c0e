"""The `cdr:` section of the config file -> CdrSettings.

    cdr:
      enabled: true
      path: cdr.sqlite          # relative to the config file's directory
      synchronous: normal       # normal | full (fsync every commit)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..settings import ConfigError, SettingsReader, read_yaml

DEFAULT_PATH = "cdr.sqlite"


class CdrError(Exception):
    """The CDR database cannot be used (the message names the file and what to do)."""


@dataclass(frozen=True, slots=True)
class CdrSettings:
    enabled: bool = True
    path: Path = Path(DEFAULT_PATH)
    synchronous: str = "normal"     # normal | full


def parse_cdr(r: SettingsReader, section: Any) -> CdrSettings:
    """The `cdr` section; a relative path is relative to the config file's directory."""
    if section is not None and not isinstance(section, dict):
        r.err("cdr", "must be a mapping {enabled, path, synchronous}")
        return CdrSettings(path=r.base / DEFAULT_PATH)
    section = r.mapping(section, "cdr", ("enabled", "path", "synchronous"))
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
    return CdrSettings(enabled, path, sync)


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
