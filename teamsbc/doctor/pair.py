"""Check `pair` (with --pair URL): the other box of an HA pair (docs/ha.md) is reachable, seals
with the same secret, serves the same FQDN, and its clock agrees with ours.

The secret is compared without being revealed: this box sends a random challenge to the other
box's admin API (`GET /pair?challenge=HEX`), which answers an HMAC of it under a key derived
from its sbc.secret (teamsbc.sealing.pair_proof); equal proofs mean equal secrets. Clocks are
compared with the other box's wall time against the middle of the request's round trip:
CDR rows written by either box and TLS validity are judged by them.
"""
from __future__ import annotations

import asyncio
import os
import time

import aiohttp

from ..config import Config
from ..keyfile import SecretFileError, keyring
from ..sealing import pair_proof
from .report import FAIL, PASS, WARN, Result

CLOCK_OK = 0.5      # s
CLOCK_WARN = 2.0    # s


async def check(config: Config, url: str, token: str | None, timeout: float) -> list[Result]:
    check = "pair"
    try:
        keys = keyring(config.sbc, create=False)
    except SecretFileError as e:
        return [Result(FAIL, f"{check} secret", str(e), "set sbc.secret (the same on both boxes)")]
    challenge = os.urandom(32)
    token = token if token is not None else config.admin.token
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    target = url.rstrip("/") + "/pair"
    t0 = time.time()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            async with s.get(target, params={"challenge": challenge.hex()}, headers=headers) as r:
                status = r.status
                body = await r.json(content_type=None) if status == 200 else await r.text()
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as e:
        return [Result(FAIL, f"{check} reachable", f"{target}: {type(e).__name__}: {e}",
                       "the other box's admin.listen must be reachable from this box (with admin.token)")]
    t1 = time.time()
    if status != 200 or not isinstance(body, dict):
        why = "wrong or missing token" if status == 401 else f"HTTP {status}"
        return [Result(FAIL, f"{check} reachable", f"{target}: {why}",
                       "give --admin-token (or the same admin.token on both boxes); both must run "
                       "this teamsbc version")]
    out = [Result(PASS, f"{check} reachable", f"{target} answered in {(t1 - t0) * 1000:.0f} ms")]

    ours = pair_proof(keys.current, challenge)
    theirs, their_previous = body.get("proof"), body.get("previous")
    if config.sbc.secret is None or not body.get("configured"):
        out.append(Result(FAIL, f"{check} secret", "sbc.secret is not set on "
                          f"{'this box' if config.sbc.secret is None else 'the other box'}: each box "
                          "seals with its own secret file and cannot route the other's calls",
                          "set the same sbc.secret (32+ characters) on both boxes"))
    elif theirs == ours:
        out.append(Result(PASS, f"{check} secret", "both boxes seal with the same sbc.secret "
                                                   "(compared by HMAC of a challenge)"))
    elif keys.previous is not None and theirs == pair_proof(keys.previous, challenge) \
            or their_previous == ours:
        out.append(Result(WARN, f"{check} secret", "a rotation is in progress: one box seals with the "
                          "other's sbc.previous_secret (calls still route both ways)",
                          "finish the rotation: the same sbc.secret on both, then drop previous_secret"))
    else:
        out.append(Result(FAIL, f"{check} secret", "the boxes have different sbc.secret: in-dialog "
                          "requests of one box's calls are refused (403) by the other",
                          "copy sbc.secret from one box to the other (rotate with sbc.previous_secret)"))

    fqdn = body.get("fqdn")
    if fqdn == config.sbc.fqdn:
        out.append(Result(PASS, f"{check} fqdn", f"both boxes are {fqdn}"))
    else:
        out.append(Result(WARN, f"{check} fqdn", f"the other box is {fqdn}, this one {config.sbc.fqdn} "
                          "(two paired FQDNs: fine; one floating FQDN: they must be equal)",
                          "docs/ha.md: the two designs"))

    their_time = body.get("time")
    if not isinstance(their_time, (int, float)):
        out.append(Result(WARN, f"{check} clock", "the other box did not tell its time"))
    else:
        offset = their_time - (t0 + t1) / 2
        status_ = PASS if abs(offset) <= CLOCK_OK else WARN if abs(offset) <= CLOCK_WARN else FAIL
        out.append(Result(status_, f"{check} clock", f"the other box's clock is {offset * 1000:+.0f} ms "
                          f"from ours (round trip {(t1 - t0) * 1000:.0f} ms)",
                          "enable NTP on both boxes (timedatectl set-ntp true or chrony)"))
    return out
