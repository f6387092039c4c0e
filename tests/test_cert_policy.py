"""Renewal policy: lifetime rule, ARI (RFC 9773) parsing, cert IDs, decisions; ARI fetched from
a small fake ACME directory over HTTP."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import random
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from teamsbc.certs.acme_client import AcmeClient
from teamsbc.certs.policy import (RenewalWindow, ari_cert_id, decide, lifetime_due_at,
                                  parse_renewal_info)

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 1, 1, tzinfo=UTC)
_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def cert(days: float, *, start: dt.datetime = T0, serial: int = 0x87654321,
         aki: bytes = bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4")) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sbc.example.com")])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(_KEY.public_key()).serial_number(serial)
            .not_valid_before(start).not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.AuthorityKeyIdentifier(aki, None, None), critical=False)
            .sign(_KEY, hashes.SHA256()))


def test_two_thirds_of_a_90_day_lifetime():
    assert lifetime_due_at(cert(90)) == T0 + dt.timedelta(days=60)


def test_half_of_a_short_lifetime():
    assert lifetime_due_at(cert(6)) == T0 + dt.timedelta(days=3)
    assert lifetime_due_at(cert(9.9)) == T0 + dt.timedelta(days=4.95)


def test_decide_lifetime():
    c = cert(90)
    d = decide(c, T0 + dt.timedelta(days=59))
    assert not d.due and d.source == "lifetime" and "2/3" in d.reason
    assert decide(c, T0 + dt.timedelta(days=60)).due
    e = decide(c, T0 + dt.timedelta(days=91))
    assert e.due and e.source == "expired"


def test_decide_missing_names_is_due_at_once():
    d = decide(cert(90), T0 + dt.timedelta(days=1), missing_names=("t1.example.com",))
    assert d.due and d.source == "names" and "t1.example.com" in d.reason


def test_ari_cert_id_rfc9773_example():
    # RFC 9773 section 4.1: keyIdentifier 69:88:5B:6B:87:46:40:41:E1:B3:7B:84:7B:A0:AE:2C:DE:01:C8:D4,
    # serial 00:87:65:43:21
    assert ari_cert_id(cert(90)) == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"


FAKE_ARI = {
    "suggestedWindow": {"start": "2026-02-20T00:00:00Z", "end": "2026-02-22T00:00:00Z"},
    "explanationURL": "https://ca.example/why",
}


def test_parse_renewal_info():
    w = parse_renewal_info(FAKE_ARI)
    assert w.start == dt.datetime(2026, 2, 20, tzinfo=UTC)
    assert w.end == dt.datetime(2026, 2, 22, tzinfo=UTC)
    assert w.explanation_url == "https://ca.example/why"


@pytest.mark.parametrize("bad", [
    {}, {"suggestedWindow": "soon"},
    {"suggestedWindow": {"start": "2026-02-20T00:00:00Z"}},
    {"suggestedWindow": {"start": "yesterday", "end": "2026-02-22T00:00:00Z"}},
    {"suggestedWindow": {"start": "2026-02-22T00:00:00Z", "end": "2026-02-20T00:00:00Z"}},
    {"suggestedWindow": {"start": "2026-02-20T00:00:00", "end": "2026-02-22T00:00:00"}},
])
def test_parse_renewal_info_rejects_malformed(bad):
    with pytest.raises(ValueError):
        parse_renewal_info(bad)


def test_ari_window_overrides_lifetime():
    c = cert(90)  # lifetime rule: day 60
    w = parse_renewal_info(FAKE_ARI)  # days 50-52: the CA wants it earlier (e.g. revocation)
    before = decide(c, T0 + dt.timedelta(days=49), window=w, rng=random.Random(1))
    assert not before.due and before.source == "ari" and w.start <= before.at <= w.end
    after = decide(c, T0 + dt.timedelta(days=53), window=w)
    assert after.due and after.source == "ari"


def test_ari_random_point_inside_window():
    w = RenewalWindow(T0, T0 + dt.timedelta(hours=10))
    now = T0 + dt.timedelta(hours=5)
    dues = [decide(cert(90), now, window=w, rng=random.Random(i)).due for i in range(200)]
    assert 50 < sum(dues) < 150   # about half the random points lie before "now"


# ------------------------------------------------------------------ ARI through a fake CA

class _FakeCA(http.server.BaseHTTPRequestHandler):
    ari: dict = FAKE_ARI
    seen: list[str] = []

    def log_message(self, *a):
        pass

    def do_GET(self):
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        if self.path == "/dir":
            body = {"newNonce": base + "/nonce", "newAccount": base + "/acct",
                    "newOrder": base + "/order", "renewalInfo": base + "/ari"}
        elif self.path.startswith("/ari/"):
            self.seen.append(self.path)
            body = self.ari
        else:
            self.send_response(404)
            self.end_headers()
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def fake_ca():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeCA)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/dir"
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


def test_renewal_window_fetched_from_directory(fake_ca, tmp_path):
    client = AcmeClient(fake_ca, accounts_dir=tmp_path / "accounts")
    assert client.has_ari
    w = client.renewal_window(cert(90))
    assert w == parse_renewal_info(FAKE_ARI)
    assert _FakeCA.seen[-1] == "/ari/aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"


def test_parse_renewal_info_accepts_nanoseconds_and_offsets():
    w = parse_renewal_info({"suggestedWindow": {"start": "2026-02-20T00:00:00.123456789Z",
                                                "end": "2026-02-20T03:00:00+02:00"}})
    assert w.start == dt.datetime(2026, 2, 20, 0, 0, 0, 123456, tzinfo=UTC)
    assert w.end == dt.datetime(2026, 2, 20, 1, tzinfo=UTC)
