"""Issue 17 item 1, sans-IO: x-tsbc-c and x-tsbc-rr are sealed (AEAD) with the shared
sbc.secret, open on any box that shares it (and during a rotation), and a value that does not
open is refused with 403, never routed. tests/test_e2e_pair.py does it with two real processes.
"""
from __future__ import annotations

import base64
import logging
import os
import re

import pytest

from teamsbc import config as cfg
from teamsbc.app import build
from teamsbc.decisions import PBX, TEAMS, Destination, Source
from teamsbc.keyfile import SecretFileError, keyring, read_or_create
from teamsbc.sealing import CONTACT, ROUTE, Keyring, Sealer, Secret, Unsealable
from teamsbc.settings import ConfigError
from teamsbc.sip.message import parse_message

S1, S2, S3 = "a" * 31 + "1", "b" * 40 + "two", "c" * 33


def sealer(*secrets: str) -> Sealer:
    return Sealer(Keyring(Secret(secrets[0]), Secret(secrets[1]) if len(secrets) > 1 else None))


def test_a_sealed_value_opens_only_with_its_secret_and_purpose():
    token = sealer(S1).seal("sip:1000@10.0.0.10:5060", CONTACT, os.urandom)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)       # a URI parameter token (RFC 3261 25.1)
    assert "10.0.0.10" not in base64.urlsafe_b64decode(token + "==").decode("latin-1")
    assert sealer(S1).open(token, CONTACT) == "sip:1000@10.0.0.10:5060"
    with pytest.raises(Unsealable):
        sealer(S2).open(token, CONTACT)                  # another secret
    with pytest.raises(Unsealable):
        sealer(S1).open(token, ROUTE)                    # a Contact never opens as a route


@pytest.mark.parametrize("mutate", [
    lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # tag altered
    lambda t: t[:10] + ("A" if t[10] != "A" else "B") + t[11:],  # nonce altered
    lambda t: t[:-4],                                     # truncated
    lambda t: "!!" + t,                                   # not base64url
    lambda t: "QUJD",                                     # too short
    lambda t: base64.urlsafe_b64encode(b"\x01" + b"\x00" * 40).decode(),  # unknown key id
    lambda t: "A" * 5000,                                 # absurdly long
])
def test_an_altered_or_foreign_token_does_not_open(mutate):
    token = sealer(S1).seal("sip:1000@10.0.0.10:5060", CONTACT, os.urandom)
    with pytest.raises(Unsealable):
        sealer(S1).open(mutate(token), CONTACT)


def test_rotation_opens_the_previous_secret_and_seals_with_the_new():
    old = sealer(S1).seal("sip:x@10.0.0.1", ROUTE, os.urandom)
    rotating = sealer(S2, S1)
    assert rotating.open(old, ROUTE) == "sip:x@10.0.0.1"
    new = rotating.seal("sip:y@10.0.0.2", ROUTE, os.urandom)
    assert sealer(S2).open(new, ROUTE) == "sip:y@10.0.0.2"
    with pytest.raises(Unsealable):
        sealer(S1).open(new, ROUTE)                       # the old secret no longer seals


def test_the_same_text_seals_differently_each_time():
    s = sealer(S1)
    assert s.seal("sip:a@b", CONTACT, os.urandom) != s.seal("sip:a@b", CONTACT, os.urandom)


# ------------------------------------------------------------------ settings
def make(tmp_path, **sbc):
    for n in ("c.pem", "k.pem"):
        (tmp_path / n).write_text("x")
    return cfg.from_dict({
        "sbc": {"fqdn": "sbc.example.com", **sbc},
        "teams": {"listen": "0.0.0.0:5061", "certificate": "c.pem", "private_key": "k.pem"},
        "pbx": {"listen": "10.0.0.5:5060", "transport": "udp", "address": "10.0.0.10:5060"},
        "numbers": {"country_code": "44"},
    }, base=tmp_path, source="ha.yaml")


@pytest.mark.parametrize("sbc, expected", [
    ({"secret": "short-but-secret-1234"}, "ha.yaml: sbc.secret: must be at least 32 characters, got 21"),
    ({"secret": 12345678901234567890123456789012345}, "ha.yaml: sbc.secret: must be a string of at least 32 characters (got a int; quote it in YAML)"),
    ({"previous_secret": S1}, "ha.yaml: sbc.previous_secret: needs sbc.secret"),
    ({"secret": S1, "previous_secret": S1}, "ha.yaml: sbc.previous_secret: is the same as sbc.secret"),
    ({"secret": " " + S1}, "ha.yaml: sbc.secret: must not contain spaces at either end"),
    ({"secrets": S1}, "ha.yaml: sbc.secrets: unknown key"),
])
def test_secret_errors_are_precise_and_never_show_the_value(tmp_path, sbc, expected):
    with pytest.raises(ConfigError) as e:
        make(tmp_path, **sbc)
    text = str(e.value)
    assert expected in text, text
    for v in sbc.values():
        assert str(v).strip() not in text, text


def test_the_secret_is_masked_in_the_config_repr(tmp_path):
    conf = make(tmp_path, secret=S2, previous_secret=S1)
    assert S1 not in repr(conf) and S2 not in repr(conf)
    assert "Secret(***)" in repr(conf.sbc)


def test_without_a_secret_a_box_makes_its_own_once_0600(tmp_path, caplog):
    conf = make(tmp_path)
    assert conf.sbc.secret is None and conf.sbc.secret_file == tmp_path / "sbc-secret"
    with pytest.raises(SecretFileError, match="no secret yet"):
        keyring(conf.sbc, create=False)
    with caplog.at_level(logging.INFO, logger="teamsbc"):   # information since 5a76d09
        first = keyring(conf.sbc)
    assert (tmp_path / "sbc-secret").stat().st_mode & 0o777 == 0o600
    assert "created this box's own sealing secret" in caplog.text
    assert first.current.reveal().decode() not in caplog.text
    assert keyring(conf.sbc) == first                        # the next start reads it back
    (tmp_path / "short").write_text("tooshort\n")
    with pytest.raises(SecretFileError, match="holds 8 characters"):
        read_or_create(tmp_path / "short")


def test_state_directory_is_the_default_home_of_the_secret_file(tmp_path):
    from teamsbc.settings import SettingsReader
    from teamsbc.trunk_settings import parse_sbc_keys
    r = SettingsReader("x.yaml", tmp_path)
    _, _, path = parse_sbc_keys(r, {"sbc": {}}, env={"STATE_DIRECTORY": "/var/lib/teamsbc"})
    assert str(path) == "/var/lib/teamsbc/sbc-secret"


# ------------------------------------------------------------------ the proxy
PBX_SRC = Source(PBX, "udp", ("10.0.0.10", 5060))
TEAMS_SRC = Source(TEAMS, "tls", ("52.114.14.70", 41234), conn=object())
SDP = b"v=0\r\no=- 1 1 IN IP4 10.0.0.10\r\ns=-\r\nc=IN IP4 10.0.0.10\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


def pbx_invite() -> bytes:
    return ("INVITE sip:02071234567@10.0.0.5:5060 SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 10.0.0.10:5060;branch=z9hG4bKpbx1;rport\r\nMax-Forwards: 70\r\n"
            "From: <sip:02079460000@10.0.0.10>;tag=pbxtag\r\nTo: <sip:02071234567@10.0.0.5>\r\n"
            "Call-ID: call-1@10.0.0.10\r\nCSeq: 1 INVITE\r\nContact: <sip:1000@10.0.0.10:5060>\r\n"
            "Record-Route: <sip:10.0.0.77;lr>\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(SDP)}\r\n\r\n").encode() + SDP


def teams_bye(contact: str, routes: list[str]) -> bytes:
    return (f"BYE {contact} SIP/2.0\r\nVIA: SIP/2.0/TLS 52.114.14.70:5061;branch=z9hG4bKhbye\r\n"
            + "".join(f"ROUTE: {r}\r\n" for r in routes) +
            "MAX-FORWARDS: 70\r\nFROM: <sip:+442071234567@sip.pstnhub.microsoft.com>;tag=t1\r\n"
            "TO: <sip:+442079460000@sbc.example.com>;tag=pbxtag\r\nCALL-ID: call-1@10.0.0.10\r\n"
            "CSEQ: 2 BYE\r\nCONTENT-LENGTH: 0\r\n\r\n").encode()


def invite_through(tmp_path, **sbc):
    """The INVITE box A relays to Teams (topology hiding on): its Contact and route set."""
    conf = make(tmp_path, **sbc)
    conf = cfg.Config(**{**{f: getattr(conf, f) for f in conf.__dataclass_fields__},
                         "security": cfg.SecuritySection(topology_hiding=True)})
    out = build(conf)[1].receive(pbx_invite(), PBX_SRC, 0.0)
    inv = parse_message(out[1].data)
    return conf, inv.headers.get("contact").strip("<>"), inv.headers.get_all("record-route")


def box(tmp_path, name, **sbc):
    d = tmp_path / name
    d.mkdir()
    conf = make(d, **sbc)
    conf = cfg.Config(**{**{f: getattr(conf, f) for f in conf.__dataclass_fields__},
                         "security": cfg.SecuritySection(topology_hiding=True)})
    return build(conf)[1]


def test_box_b_routes_what_box_a_sealed_and_a_stranger_refuses_it(tmp_path, caplog):
    a = tmp_path / "a"
    a.mkdir()
    _, contact, rr = invite_through(a, secret=S1)
    assert "10.0.0" not in contact + "".join(rr)           # nothing of the PBX network readable
    bye = teams_bye(contact, rr)   # Teams, the UAS, routes along the Record-Route as received
    for b in (box(tmp_path, "b", secret=S1), box(tmp_path, "rotating", secret=S2, previous_secret=S1)):
        sends = b.receive(bye, TEAMS_SRC, 1.0)
        fwd = parse_message(sends[0].data)
        assert sends[0].to == Destination(PBX, "udp", "10.0.0.10", 5060)
        assert fwd.uri == "sip:1000@10.0.0.10:5060"
        assert fwd.headers.get_all("route")[-1] == "<sip:10.0.0.77;lr>"   # the PBX's own route set
    stranger = box(tmp_path, "c", secret=S3)
    with caplog.at_level(logging.INFO):
        sends = stranger.receive(bye, TEAMS_SRC, 1.0)
    assert len(sends) == 1 and sends[0].to == TEAMS_SRC
    assert parse_message(sends[0].data).status == 403
    assert "x-tsbc-rr failed authentication" in caplog.text
    assert S1 not in caplog.text and S3 not in caplog.text


def test_forged_contact_is_refused_not_routed_even_with_our_route(tmp_path, caplog):
    """A Route naming us once made the R-URI route to the PBX trunk: no more."""
    b = box(tmp_path, "b", secret=S1)
    forged = base64.urlsafe_b64encode(b"sip:evil@203.0.113.9:5060").rstrip(b"=").decode()
    for contact in (f"sip:+4420@sbc.example.com:5061;transport=tls;x-tsbc-c={forged}",
                    f"sip:+4420@sbc.example.com:5061;transport=tls;x-tsbc-c={sealer(S3).seal('sip:x@10.0.0.10', CONTACT, os.urandom)}"):
        with caplog.at_level(logging.INFO):
            sends = b.receive(teams_bye(contact, ["<sip:sbc.example.com:5061;transport=tls;lr;r2=on>"]),
                              TEAMS_SRC, 1.0)
        assert [s.to for s in sends] == [TEAMS_SRC]
        assert parse_message(sends[0].data).status == 403
    assert "x-tsbc-c failed authentication" in caplog.text


def test_an_unusable_secret_file_stops_the_sbc_with_a_clear_line(tmp_path, test_pki):
    import subprocess
    import sys

    import yaml

    from tests.support.ports import free_port
    (tmp_path / "adir").mkdir()
    conf = {"sbc": {"fqdn": "sbc.example.com", "secret_file": str(tmp_path / "adir")},
            "teams": {"listen": f"127.0.0.1:{free_port('tcp')}", "certificate": str(test_pki.sbc_fullchain),
                      "private_key": str(test_pki.sbc_key)},
            "pbx": {"listen": "127.0.0.1:5060", "transport": "udp", "address": "127.0.0.2:5060"},
            "cdr": {"enabled": False}, "admin": {"enabled": False}}
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(conf))
    check = subprocess.run([sys.executable, "-m", "teamsbc", "check", "-c", str(path)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and f"sealing with this box's own secret in {tmp_path / 'adir'}" in check.stdout
    r = subprocess.run([sys.executable, "-m", "teamsbc", "run", "-c", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "sealing secret unusable" in r.stderr and "cannot read the secret file" in r.stderr
    assert "Traceback" not in r.stderr
