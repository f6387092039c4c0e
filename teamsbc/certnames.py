"""Certificate names: does a certificate's name cover a host name. One rule, used wherever a
certificate is matched to a name: the SBC accepting a Teams peer (transport), the doctor
predicting that, and the certificate gate checking the SBC's own certificate (certs/gate).

    exact            sip.pstnhub.microsoft.com  covers  sip.pstnhub.microsoft.com
    one label        *.pstnhub.microsoft.com    covers  sip.pstnhub.microsoft.com
    two labels       *.microsoft.com            does not cover  sip.pstnhub.microsoft.com
    a public suffix  *.com                      covers nothing
    wanted wildcard  *.sbc.example.com          is covered only by *.sbc.example.com itself

RFC 6125 6.4.1: DNS names compare case-insensitively (a trailing dot is ignored); 6.4.3: the
wildcard is the whole left-most label and stands for exactly one label. Microsoft's SBC
certificate rule says the same ("a wildcard covers one label only"). Teams' own certificate
carries sip.pstnhub.microsoft.com (reference section 2; GCC High / DoD: their own name), which
`teams.require_san` lists.

A leaf module: it imports nothing of teamsbc.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence


def _norm(name: str) -> str:
    return name.strip().lower().rstrip(".")


def name_covered(wanted: str, names: Iterable[str]) -> bool:
    """True when one of the certificate's `names` covers the host name `wanted` (table above)."""
    want = _norm(wanted)
    have = {_norm(n) for n in names}
    if want in have:
        return True
    if want.startswith("*."):
        return False
    _, _, parent = want.partition(".")
    return "." in parent and f"*.{parent}" in have


def dns_names(peercert: dict | None) -> list[str]:
    """The DNS subjectAltNames of `ssl.SSLSocket.getpeercert()`'s dict, lower case, in order."""
    if not peercert:
        return []
    return [v.lower() for k, v in peercert.get("subjectAltName", ()) if k == "DNS"]


def teams_name_problem(names: Sequence[str], wanted: Sequence[str]) -> str | None:
    """None when the peer certificate's `names` cover one of `wanted` (teams.require_san),
    else why not: the words the SBC logs when it refuses the peer."""
    if any(name_covered(w, names) for w in wanted):
        return None
    return f"certificate names {list(names) or ['(none)']} do not include {' or '.join(wanted)}"
