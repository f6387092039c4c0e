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

DEFAULT_PATH = "cdr.sqlite"


class CdrError(Exception):
    """The CDR database cannot be used (the message names the file and what to do)."""


@dataclass(frozen=True, slots=True)
class CdrSettings:
    enabled: bool = True
    path: Path = Path(DEFAULT_PATH)
    synchronous: str = "normal"     # normal | full


def parse_settings(section: Any, base: Path) -> tuple[CdrSettings, list[tuple[str, str]]]:
    """The `cdr` section -> settings and [(key, problem)] (for config.py's error list)."""
    errors: list[tuple[str, str]] = []
    if section is None:
        section = {}
    if not isinstance(section, dict):
        return CdrSettings(path=base / DEFAULT_PATH), [("cdr", "must be a mapping {enabled, path, synchronous}")]
    for k in section:
        if k not in ("enabled", "path", "synchronous"):
            errors.append((f"cdr.{k}", "unknown key (known: enabled, path, synchronous)"))
    enabled = section.get("enabled", True)
    if not isinstance(enabled, bool):
        errors.append(("cdr.enabled", f"must be true or false, got {enabled!r}"))
        enabled = True
    p = section.get("path", DEFAULT_PATH)
    if not isinstance(p, str) or not p.strip():
        errors.append(("cdr.path", f"must be a file path like /var/lib/teamsbc/cdr.sqlite, got {p!r}"))
        p = DEFAULT_PATH
    path = Path(p)
    if not path.is_absolute():
        path = base / path
    sync = section.get("synchronous", "normal")
    if sync not in ("normal", "full"):
        errors.append(("cdr.synchronous", f"{sync!r} is not one of normal, full"))
        sync = "normal"
    return CdrSettings(enabled, path, sync), errors


def settings_from_config_file(config_path: str | Path) -> CdrSettings:
    """Only the `cdr` section of a config file (the rest is not validated: `teamsbc cdr` must
    work on a box whose certificates are missing)."""
    import yaml
    p = Path(config_path)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise CdrError(f"{p}: cannot read the config: {e}") from None
    if not isinstance(data, dict):
        raise CdrError(f"{p}: top level must be a mapping")
    settings, errors = parse_settings(data.get("cdr"), p.resolve().parent)
    if errors:
        raise CdrError("\n".join(f"{p}: {k}: {m}" for k, m in errors))
    return settings
