"""The `acme:` config section: contract keys as written, defaults, precise errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from teamsbc.settings import SettingsReader
from teamsbc.certs.settings import LETSENCRYPT, AcmeSettings, parse_acme

CONTRACT = """
certs_dir: certs
acme:
  directory: https://acme-v02.api.letsencrypt.org/directory
  email: ops@example.com
  names: []
  challenge: http-01
  http01_listen: 0.0.0.0:80
  ca_bundle: null
  eab: {kid: null, hmac_key: null}
  profile: null
  require_client_auth: false
  rfc2136: {server: null, port: 53, key_name: null, key_secret: null, key_algorithm: hmac-sha256}
"""


def parse(section, tmp_path: Path, fqdn: str = "sbc.example.com") -> tuple[AcmeSettings, list[str]]:
    r = SettingsReader("teamsbc.yaml", tmp_path)
    s = parse_acme(r, section, sbc_fqdn=fqdn)
    errors = r.errors
    return s, errors


def test_contract_keys_as_written(tmp_path):
    s, errors = parse(yaml.safe_load(CONTRACT)["acme"], tmp_path)
    assert errors == []
    assert s.directory == LETSENCRYPT
    assert s.email == "ops@example.com"
    assert s.names == () and s.challenge == "http-01"
    assert (s.http01_listen.host, s.http01_listen.port) == ("0.0.0.0", 80)
    assert s.ca_bundle is None and not s.eab.enabled and s.profile is None
    assert s.require_client_auth is False
    r = s.rfc2136
    assert (r.server, r.port, r.key_name, r.key_secret, r.key_algorithm) == \
        (None, 53, None, None, "hmac-sha256")
    assert s.key_type == "rsa2048" and s.key_bits == 2048 and s.min_key_bits == 2048


def test_absent_section_means_defaults(tmp_path):
    s, errors = parse(None, tmp_path)
    assert errors == []
    assert s.directory == LETSENCRYPT and s.challenge == "http-01"
    assert str(s.http01_listen) == "0.0.0.0:80"
    assert s.order_names("SBC.example.com") == ("sbc.example.com",)


def test_full_dns01_wildcard_section(tmp_path):
    (tmp_path / "ca.pem").write_text("x")
    s, errors = parse({
        "directory": "https://acme.example.net/dir", "names": ["*.sbc.example.com", "t1.example.com"],
        "challenge": "dns-01", "http01_listen": None, "ca_bundle": "ca.pem",
        "eab": {"kid": "kid-1", "hmac_key": "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"},
        "profile": "tlsserver", "require_client_auth": True, "key_type": "rsa3072",
        "rfc2136": {"server": "192.0.2.53", "port": 5353, "key_name": "acme.", "key_secret":
                    "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI=", "key_algorithm": "hmac-sha512",
                    "zone": "example.com", "propagation_seconds": 5},
    }, tmp_path)
    assert errors == []
    assert s.order_names("sbc.example.com") == ("sbc.example.com", "*.sbc.example.com", "t1.example.com")
    assert s.http01_listen is None
    assert s.ca_bundle == tmp_path / "ca.pem"
    assert s.eab.enabled and s.eab.kid == "kid-1"
    assert s.key_bits == 3072 and s.require_client_auth
    assert s.rfc2136.port == 5353 and s.rfc2136.key_algorithm == "hmac-sha512"
    assert s.rfc2136.zone == "example.com" and s.rfc2136.propagation_seconds == 5


@pytest.mark.parametrize("section, key, fragment", [
    ({"bogus": 1}, "acme.bogus", "unknown key"),
    ({"directory": "http://acme.example/dir"}, "acme.directory", "https:// URL"),
    ({"email": "not-an-address"}, "acme.email", "not an e-mail address"),
    ({"challenge": "tls-alpn-01"}, "acme.challenge", "not one of http-01, dns-01"),
    ({"names": "a.example.com"}, "acme.names", "must be a list"),
    ({"names": ["*.sbc.example.com"]}, "acme.names[0]", "only be validated with dns-01"),
    ({"names": ["a.*.example.com"]}, "acme.names[0]", "not an FQDN or a wildcard"),
    ({"names": ["sbc.example.com"]}, "acme.names[0]", "listed twice"),
    ({"http01_listen": "sbc.example.com:80"}, "acme.http01_listen", "not \"ip:port\""),
    ({"http01_listen": "0.0.0.0:70000"}, "acme.http01_listen", "out of range"),
    ({"ca_bundle": "missing.pem"}, "acme.ca_bundle", "does not exist"),
    ({"trusted_roots": "missing.pem"}, "acme.trusted_roots", "does not exist"),
    ({"eab": {"kid": "k"}}, "acme.eab.hmac_key", "required when the other EAB value is set"),
    ({"eab": {"kid": "k", "hmac_key": "not base64!"}}, "acme.eab.hmac_key", "not base64url"),
    ({"eab": "kid"}, "acme.eab", "must be a mapping"),
    ({"profile": "a b"}, "acme.profile", "not a profile name"),
    ({"require_client_auth": "yes"}, "acme.require_client_auth", "true or false"),
    ({"key_type": "ec256"}, "acme.key_type", "must be RSA"),
    ({"min_key_bits": 1024}, "acme.min_key_bits", "from 2048"),
    ({"min_key_bits": 4096}, "acme.min_key_bits", "raise key_type"),
    ({"challenge": "dns-01"}, "acme.rfc2136.server", "required for challenge dns-01"),
    ({"rfc2136": {"port": 0}}, "acme.rfc2136.port", "1-65535"),
    ({"rfc2136": {"key_algorithm": "hmac-sha3"}}, "acme.rfc2136.key_algorithm", "not one of"),
    ({"rfc2136": {"key_secret": "%%%"}}, "acme.rfc2136.key_secret", "not base64"),
    ({"rfc2136": {"nope": 1}}, "acme.rfc2136.nope", "unknown key"),
])
def test_precise_errors(tmp_path, section, key, fragment):
    _, errors = parse(section, tmp_path)
    assert any(e.startswith(f"teamsbc.yaml: {key}: ") and fragment in e for e in errors), errors


def test_all_errors_collected_at_once(tmp_path):
    _, errors = parse({"challenge": "dns-01", "key_type": "dsa", "email": "x"}, tmp_path)
    keys = {e.split(": ")[1] for e in errors}
    assert {"acme.key_type", "acme.email", "acme.rfc2136.server", "acme.rfc2136.key_name",
            "acme.rfc2136.key_secret"} <= keys


def test_not_a_mapping(tmp_path):
    _, errors = parse(["directory"], tmp_path)
    assert errors == ["teamsbc.yaml: acme: must be a mapping, got list"]
