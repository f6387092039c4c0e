"""Test PKI built with teamsbc.labpki.

- "test CA" issues the SBC certificate (``sbc.example.com``, serverAuth+clientAuth) and a
  "Teams" certificate whose SAN holds the Teams FQDNs (sip, sip2, sip3 and the sip-du-a-us
  edge name that real Teams puts in Record-Route);
- an unrelated "rogue CA" with a leaf carrying the same Teams names, for negative tests
  (a peer presenting it must be refused).

    pki = build_test_pki(tmp_path_factory.mktemp("pki"))     # session fixture ``test_pki``
    pki.sbc_fullchain, pki.sbc_key, pki.ca_cert, pki.teams_fullchain, pki.teams_key
    chain, key = pki.issue("expired", ["sbc.example.com"], days=1,
                           not_before=datetime.now(timezone.utc) - timedelta(days=10))
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from teamsbc import labpki

__all__ = ["TestPki", "build_test_pki", "SBC_FQDN", "TEAMS_NAMES"]

SBC_FQDN = "sbc.example.com"
TEAMS_NAMES = [
    "sip.pstnhub.microsoft.com",
    "sip2.pstnhub.microsoft.com",
    "sip3.pstnhub.microsoft.com",
    "sip-du-a-us.pstnhub.microsoft.com",
]


@dataclass
class TestPki:
    __test__ = False  # not a pytest test class despite the name

    directory: Path
    sbc_fqdn: str
    teams_names: list[str]
    # test CA and the leaves it issued (fullchain = leaf + CA)
    ca_cert: Path
    ca_key: Path
    sbc_cert: Path
    sbc_fullchain: Path
    sbc_key: Path
    teams_cert: Path
    teams_fullchain: Path
    teams_key: Path
    # unrelated CA and a leaf for the Teams names
    rogue_ca_cert: Path
    rogue_ca_key: Path
    rogue_fullchain: Path
    rogue_key: Path
    _cas: dict[str, tuple[x509.Certificate, rsa.RSAPrivateKey]] = field(default_factory=dict, repr=False)

    def issue(
        self,
        name: str,
        names: Sequence[str],
        *,
        ca: str = "test",
        server_auth: bool = True,
        client_auth: bool = True,
        days: int = 365,
        not_before: dt.datetime | None = None,
    ) -> tuple[Path, Path]:
        """Issue another leaf (e.g. expired, wrong name, no clientAuth) from the ``test`` or
        ``rogue`` CA; returns (fullchain path, key path) under the PKI directory."""
        ca_cert, ca_key = self._cas[ca]
        cert, key = labpki.make_leaf(
            ca_cert, ca_key, list(names),
            server_auth=server_auth, client_auth=client_auth, days=days, not_before=not_before,
        )
        chain = labpki.write_cert_chain(self.directory / f"{name}-fullchain.pem", [cert, ca_cert])
        keyp = labpki.write_key(self.directory / f"{name}.key", key)
        return chain, keyp


def build_test_pki(
    directory: Path, sbc_fqdn: str = SBC_FQDN, teams_names: Sequence[str] = TEAMS_NAMES
) -> TestPki:
    """Create the test PKI under ``directory`` (use a session-scoped tmp dir)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)

    ca_cert, ca_key = labpki.make_ca("teamsbc test CA")
    rogue_cert, rogue_key = labpki.make_ca("unrelated rogue CA")

    def leaf(stem, names, issuer, issuer_key):
        cert, key = labpki.make_leaf(issuer, issuer_key, list(names), server_auth=True, client_auth=True)
        labpki.write_cert_chain(d / f"{stem}.pem", [cert])
        labpki.write_cert_chain(d / f"{stem}-fullchain.pem", [cert, issuer])
        labpki.write_key(d / f"{stem}.key", key)

    labpki.write_cert_chain(d / "ca.pem", [ca_cert])
    labpki.write_key(d / "ca.key", ca_key)
    labpki.write_cert_chain(d / "rogue-ca.pem", [rogue_cert])
    labpki.write_key(d / "rogue-ca.key", rogue_key)
    leaf("sbc", [sbc_fqdn], ca_cert, ca_key)
    leaf("teams", teams_names, ca_cert, ca_key)
    leaf("rogue-teams", teams_names, rogue_cert, rogue_key)

    return TestPki(
        directory=d,
        sbc_fqdn=sbc_fqdn,
        teams_names=list(teams_names),
        ca_cert=d / "ca.pem",
        ca_key=d / "ca.key",
        sbc_cert=d / "sbc.pem",
        sbc_fullchain=d / "sbc-fullchain.pem",
        sbc_key=d / "sbc.key",
        teams_cert=d / "teams.pem",
        teams_fullchain=d / "teams-fullchain.pem",
        teams_key=d / "teams.key",
        rogue_ca_cert=d / "rogue-ca.pem",
        rogue_ca_key=d / "rogue-ca.key",
        rogue_fullchain=d / "rogue-teams-fullchain.pem",
        rogue_key=d / "rogue-teams.key",
        _cas={"test": (ca_cert, ca_key), "rogue": (rogue_cert, rogue_key)},
    )
