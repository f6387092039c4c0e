"""Certificates from ACME: issuance, renewal, the gate before going live, the on-disk store.

Modules, each one idea:
- settings: the `acme:` config section -> AcmeSettings (parse_acme collects precise errors)
- acme_client: the `acme` library with a kept account, EAB, profile, ARI, badNonce retries
- challenges: HTTP-01 (TokenStore for aiohttp, standalone responder), DNS-01 via RFC 2136
- gate: the checks Teams would make, run before a certificate goes live
- store: live/<name>/ swapped atomically, archive/, the lock
- policy: when renewal is due (ARI, else 2/3 of the lifetime)
- manager: issue/renew/status as functions; cli: the `teamsbc cert` commands

For the running SBC:
    from teamsbc.certs import TokenStore, live_paths, read_live_pair, expiry_line, renew_async
"""
from .challenges import ROUTE as HTTP01_ROUTE
from .challenges import TokenStore
from .manager import CertManager, CertTarget, Outcome, expiry_line, issue_async, renew_async
from .settings import AcmeSettings, parse_acme
from .store import CertStore, LivePaths, live_paths, read_live_pair

__all__ = ["AcmeSettings", "parse_acme", "TokenStore", "HTTP01_ROUTE", "CertManager",
           "CertTarget", "Outcome", "expiry_line", "issue_async", "renew_async", "CertStore",
           "LivePaths", "live_paths", "read_live_pair", "register"]


def register(subparsers):
    """Add the `cert` sub-command to teamsbc's argparse sub-parsers (see cli.register)."""
    from .cli import register as _register
    return _register(subparsers)
