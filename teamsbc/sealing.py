"""Sealed values: what the SBC hands out in URIs and must get back unchanged and unread.

The SBC keeps no dialog state (calls survive a restart, and any box of a pair routes any
in-dialog request): the PBX Contact travels toward Teams inside our FQDN Contact (`x-tsbc-c`)
and the PBX side's Record-Route entries inside one folded entry (`x-tsbc-rr`). Anyone who reads
those URIs (Teams, a log, a trace) must learn nothing of the PBX network, and nobody may forge
one to make the SBC send a request somewhere else: each value is sealed with an AEAD.

    sealer = Sealer(keyring)                   # keyring: Keyring(current, previous)
    token = sealer.seal("sip:1000@10.0.0.10", CONTACT, entropy)
    sealer.open(token, CONTACT)                # -> "sip:1000@10.0.0.10", or raises Unsealable

Construction (RFC 8439 ChaCha20-Poly1305, RFC 5869 HKDF): the key is HKDF-SHA256 of the
shared secret (`sbc.secret`), one key per purpose (Contact, Record-Route), so a sealed Contact
never opens as a route and the other way round. A token is

    base64url( VERSION(1) | KEY_ID(2) | NONCE(12) | CIPHERTEXT | TAG(16) )

KEY_ID tells which secret sealed it (two bytes of a second HKDF output, not the key): during a
rotation (`sbc.previous_secret`) the box opens tokens of either secret and seals with the
current one. The nonce comes from the caller's entropy (the core never draws random numbers
itself); 96 random bits make a collision under one key negligible for the life of a key.
The base64url alphabet is a SIP URI parameter's `token` characters (RFC 3261 25.1).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION = 1
CONTACT = b"x-tsbc-c"       # purpose: a PBX Contact inside our FQDN Contact
ROUTE = b"x-tsbc-rr"        # purpose: PBX-side Record-Route entries folded into one
NONCE = 12
MIN_SECRET = 32             # characters of sbc.secret
MAX_TOKEN = 4096            # characters; a longer parameter is refused before any crypto
_B64URL = re.compile(r"[A-Za-z0-9_-]+")


class Unsealable(ValueError):
    """A token that is not ours: malformed, from an unknown secret, or altered."""


class Secret:
    """A secret string that never shows itself in a repr, a log line or a trace."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> bytes:
        return self._value.encode()

    def __len__(self) -> int:
        return len(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(hashlib.sha256(self.reveal()).digest())

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class Keyring:
    """The secret that seals, and the one still accepted during a rotation."""
    current: Secret
    previous: Secret | None = None


def _derive(secret: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=b"teamsbc sealing v1",
                info=info).derive(secret)


def key_id(secret: Secret) -> bytes:
    """Two bytes that name a secret in tokens (and in `teamsbc doctor`'s pair check the
    secret is compared by HMAC, never by this id)."""
    return _derive(secret.reveal(), b"key id", 2)


class Sealer:
    def __init__(self, keyring: Keyring):
        # key id -> the keys of each secret with that id (two ids may collide: try both)
        self._keys: dict[bytes, list[dict[bytes, ChaCha20Poly1305]]] = {}
        self._current = key_id(keyring.current)
        for s in (keyring.current, keyring.previous):
            if s is None:
                continue
            raw = s.reveal()
            self._keys.setdefault(key_id(s), []).append(
                {p: ChaCha20Poly1305(_derive(raw, b"aead " + p)) for p in (CONTACT, ROUTE)})

    def seal(self, text: str, purpose: bytes, entropy: Callable[[int], bytes]) -> str:
        nonce = entropy(NONCE)
        aead = self._keys[self._current][0][purpose]
        head = bytes([VERSION]) + self._current
        sealed = head + nonce + aead.encrypt(nonce, text.encode(), head)
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode()

    def open(self, token: str, purpose: bytes) -> str:
        """The sealed text; Unsealable when the token is not one we sealed for `purpose`."""
        if len(token) > MAX_TOKEN:
            raise Unsealable("too long")
        if not _B64URL.fullmatch(token):
            raise Unsealable("not base64url")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise Unsealable("not base64url") from None
        if len(raw) < 3 + NONCE + 16 or raw[0] != VERSION:
            raise Unsealable("not a sealed value of this version")
        candidates = self._keys.get(raw[1:3])
        if candidates is None:
            raise Unsealable("sealed with an unknown secret")
        for keys in candidates:
            try:
                plain = keys[purpose].decrypt(raw[3:3 + NONCE], raw[3 + NONCE:], raw[:3])
                break
            except InvalidTag:
                continue
        else:
            raise Unsealable("authentication failed")
        try:
            return plain.decode()
        except UnicodeDecodeError:
            raise Unsealable("not text") from None


def pair_proof(secret: Secret, challenge: bytes) -> str:
    """What a box answers to a pair check's challenge (`teamsbc doctor --pair`): an HMAC under
    a key derived for this purpose only, so equal proofs mean equal secrets and a proof tells
    nothing about the secret or the sealing keys."""
    key = _derive(secret.reveal(), b"pair proof")
    return hmac.new(key, challenge, hashlib.sha256).hexdigest()
