"""The sealing keys of this box: `sbc.secret` from the config, or this box's own secret file.

A single box needs no configured secret: on its first start it writes 48 random bytes
(base64url, 64 characters) to `sbc.secret_file` (mode 0600, created exclusively so two
processes never write two different secrets) and uses them from then on, so calls survive
restarts. Two boxes that must route each other's calls share `sbc.secret` instead
(docs/ha.md). The secret never reaches a log line: only the file's path does.
"""
from __future__ import annotations

import base64
import logging
import os
from pathlib import Path

from .sealing import MIN_SECRET, Keyring, Secret
from .trunk_settings import SbcSection

log = logging.getLogger("teamsbc")


class SecretFileError(Exception):
    """The secret file cannot be read or created (the message names the file and the fix)."""


def keyring(sbc: SbcSection, *, create: bool = True) -> Keyring:
    """The keys to seal and open with. Without sbc.secret: the secret file, created when
    missing and `create` (the running SBC), else SecretFileError (`teamsbc check`)."""
    if sbc.secret is not None:
        return Keyring(sbc.secret, sbc.previous_secret)
    return Keyring(read_or_create(sbc.secret_file, create=create))


def read_or_create(path: Path, *, create: bool = True) -> Secret:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        if not create:
            raise SecretFileError(f"{path}: no secret yet (sbc.secret_file; the SBC creates it on "
                                  "its first start, or set sbc.secret)") from None
        return _create(path)
    except OSError as e:
        raise SecretFileError(f"{path}: cannot read the secret file: {e.strerror} (sbc.secret_file; "
                              "the SBC's user must be able to read it)") from None
    if len(text) < MIN_SECRET:
        raise SecretFileError(f"{path}: holds {len(text)} characters, at least {MIN_SECRET} needed "
                              "(delete it to get a new one; calls in progress then cannot be "
                              "routed in-dialog)")
    return Secret(text)


def _create(path: Path) -> Secret:
    value = base64.urlsafe_b64encode(os.urandom(48)).decode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_or_create(path, create=False)  # another process made it first
    except OSError as e:
        raise SecretFileError(f"{path}: cannot create the secret file: {e.strerror} (sbc.secret_file "
                              "must be in a directory the SBC's user can write, e.g. "
                              "/var/lib/teamsbc; or set sbc.secret)") from None
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
        f.flush()
        os.fsync(f.fileno())
    log.info("sbc.secret is not set: created this box's own sealing secret in %s (a second "
                "box needs sbc.secret shared by both: docs/ha.md)", path)
    return Secret(value)
