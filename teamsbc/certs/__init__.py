"""Certificates from ACME: issuance, renewal, the gate before going live, the on-disk store.

Modules, each one idea:
- settings: the `acme:` config section -> AcmeSettings (parse_acme collects precise errors)
- acme_client: the `acme` library with a kept account, EAB, profile, ARI, badNonce retries
- challenges: HTTP-01 (TokenStore for aiohttp, standalone responder), DNS-01 via RFC 2136
- gate: the checks Teams would make, run before a certificate goes live
- store: live/<name>/ swapped atomically, archive/, the lock
- policy: when renewal is due (ARI, else 2/3 of the lifetime)
- manager: issue/renew/status as functions; cli: the `teamsbc cert` commands

Nothing is imported here: `certs.settings` (read by the config) must not pull in the ACME
library. Import what you need from its module.
"""
