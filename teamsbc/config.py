"""One YAML file -> one typed, validated `Config`. Every error names the file, the key, what is
wrong and what would be right; all errors are collected so one `teamsbc check` shows them all.

This module only assembles: each section belongs to the feature that uses it and is parsed by
that feature's settings module (never its runtime module), through one `SettingsReader`:

    sbc, teams, pbx, numbers, log, certs_dir   trunk_settings
    security                                   security_settings
    media                                      media/settings
    acme                                       certs/settings
    admin                                      admin_settings
    cdr                                        cdr/settings
    capture                                    capture/settings
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .admin_settings import AdminSettings, parse_admin
from .capture.settings import CaptureSettings, parse_capture
from .cdr.settings import CdrSettings, parse_cdr
from .certs.settings import AcmeSettings, default_acme, parse_acme
from .media.settings import MediaSection, parse_media
from .security_settings import SecuritySection, parse_security
from .settings import ConfigError, SettingsReader, read_yaml
from .trunk_settings import (TEAMS_PROXIES, LogSection, NumbersSection, PbxSection, SbcSection,
                             TeamsSection, TenantSection, parse_certs_dir, parse_log, parse_numbers,
                             parse_pbx, parse_sbc, parse_sbc_keys, parse_teams,
                             parse_workers)

__all__ = ["Config", "ConfigError", "load", "from_dict", "TEAMS_PROXIES", "SbcSection", "TeamsSection",
           "TenantSection", "PbxSection", "NumbersSection", "LogSection", "MediaSection",
           "SecuritySection"]

SECTIONS = ("sbc", "teams", "pbx", "media", "numbers", "log", "certs_dir", "acme", "admin", "cdr",
            "capture", "security")


@dataclass(frozen=True, slots=True)
class Config:
    sbc: SbcSection
    teams: TeamsSection
    pbx: PbxSection
    media: MediaSection = field(default_factory=MediaSection)
    numbers: NumbersSection = field(default_factory=NumbersSection)
    log: LogSection = field(default_factory=LogSection)
    certs_dir: Path = Path("certs")
    source: str = "<embedded>"
    acme: AcmeSettings = field(default_factory=default_acme)
    security: SecuritySection = field(default_factory=SecuritySection)
    admin: AdminSettings = field(default_factory=AdminSettings)
    cdr: CdrSettings = field(default_factory=CdrSettings)
    capture: CaptureSettings = field(default_factory=CaptureSettings)


def load(path: str | Path) -> Config:
    data, r = read_yaml(path)
    return _assemble(r, data)


def from_dict(data: Any, *, source: str = "<dict>", base: Path | None = None) -> Config:
    return _assemble(SettingsReader(source, base or Path.cwd()), data)


def _assemble(r: SettingsReader, data: Any) -> Config:
    if not isinstance(data, dict):
        raise ConfigError([f"{r.source}: top level must be a mapping with sbc, teams, pbx sections"])
    for k in data:
        if k not in SECTIONS:
            r.err(k, f"unknown section (known: {', '.join(sorted(SECTIONS))})")
    fqdn = parse_sbc(r, data)
    secret, previous_secret, secret_file = parse_sbc_keys(r, data)
    workers = parse_workers(r, data)
    certs_dir = parse_certs_dir(r, data)
    teams = parse_teams(r, data, fqdn, certs_dir)
    pbx = parse_pbx(r, data, fqdn)
    media = parse_media(r, data)
    numbers = parse_numbers(r, data)
    acme = parse_acme(r, data.get("acme"), sbc_fqdn=fqdn)
    security = parse_security(r, data, teams.cloud if teams else "commercial")
    log = parse_log(r, data)
    admin = parse_admin(r, data.get("admin"))
    cdr = parse_cdr(r, data.get("cdr"))
    capture = parse_capture(r, data.get("capture"))
    r.raise_errors()
    assert fqdn and teams and pbx
    return Config(sbc=SbcSection(fqdn, secret, previous_secret, secret_file, workers), teams=teams, pbx=pbx, media=media, numbers=numbers, log=log,
                  certs_dir=certs_dir, source=r.source, acme=acme, security=security, admin=admin,
                  cdr=cdr, capture=capture)
