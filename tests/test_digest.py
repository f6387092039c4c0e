"""PBX digest authentication (RFC 2617/7616 MD5, qop=auth): the computation and the nonces."""
from __future__ import annotations

import hashlib

from teamsbc.digest import DigestAuth, DigestCredentials, parse_digest

MUFASA = DigestCredentials("testrealm@host.com", "Mufasa", "Circle Of Life")


def test_rfc2617_section_3_5_example_response():
    # the RFC's nonce is not one of ours: the response is verified first, then called stale
    hdr = ('Digest username="Mufasa", realm="testrealm@host.com", '
           'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", qop=auth, '
           'nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1", '
           'opaque="5ccc069c403ebaf9f0171e9517f40e41"')
    assert DigestAuth(MUFASA).check("GET", hdr, 0.0) == (False, True, "stale nonce")
    wrong = hdr.replace("6629fae49393a05397450978507c4ef1", "6629fae49393a05397450978507c4ef2")
    assert DigestAuth(MUFASA).check("GET", wrong, 0.0) == (False, False, "wrong password")


def answer(auth: DigestAuth, challenge: str, method: str, uri: str, password: str, nc: str = "00000001") -> str:
    p = parse_digest(challenge)
    md5 = lambda t: hashlib.md5(t.encode()).hexdigest()  # noqa: E731
    ha1 = md5(f"{auth.creds.username}:{p['realm']}:{password}")
    resp = md5(f"{ha1}:{p['nonce']}:{nc}:abc:auth:{md5(f'{method}:{uri}')}")
    return (f'Digest username="{auth.creds.username}", realm="{p["realm"]}", nonce="{p["nonce"]}", '
            f'uri="{uri}", response="{resp}", algorithm=MD5, qop=auth, nc={nc}, cnonce="abc"')


def test_own_nonce_accepted_then_expires_and_other_process_nonce_is_stale():
    auth = DigestAuth(MUFASA)
    ch = auth.challenge(100.0)
    assert ch.startswith('Digest realm="testrealm@host.com", nonce="') and 'qop="auth"' in ch
    good = answer(auth, ch, "INVITE", "sip:+4420@sbc", "Circle Of Life")
    assert auth.check("INVITE", good, 101.0) == (True, False, "")
    assert auth.check("INVITE", good, 100.0 + 301) == (False, True, "stale nonce")
    assert DigestAuth(MUFASA).check("INVITE", good, 101.0) == (False, True, "stale nonce")  # restarted
    assert auth.check("INVITE", answer(auth, ch, "INVITE", "sip:+4420@sbc", "guess"), 101.0)[2] == "wrong password"
    assert auth.check("INVITE", None, 0.0) == (False, False, "no credentials")
    assert auth.check("INVITE", 'Basic QWxhZGRpbjpvcGVu', 0.0) == (False, False, "not Digest credentials")
    assert auth.check("INVITE", 'Digest username="Scar"', 0.0)[2] == "credentials without realm"


def test_an_answer_within_half_a_millisecond_of_its_challenge_is_not_stale():
    """The nonce's time stamp is rounded to the millisecond (100.0006 -> "100.001")."""
    auth = DigestAuth(MUFASA)
    ch = auth.challenge(100.0006)
    good = answer(auth, ch, "REGISTER", "sip:sbc", "Circle Of Life")
    assert auth.check("REGISTER", good, 100.0008) == (True, False, "")
