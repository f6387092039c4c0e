"""teamsbc.metrics: counters from the real sans-IO proxy's events, the Prometheus text format
(checked by a strict parser written here from the 0.0.4 format description), scrape-time
sources (peer health, TLS counters, rtpengine, certificate, rate-limit drops), cost per event.

`parse_prometheus` is also used by tests/test_admin_e2e.py.
"""
from __future__ import annotations

import math
import re
import shutil
import time
import tracemalloc
from types import SimpleNamespace

import pytest

from teamsbc import __version__
from teamsbc import config as cfg
from teamsbc.app import build
from teamsbc.health import HealthBook
from teamsbc.metrics import CONTENT_TYPE, Metrics, escape_label
from teamsbc.decisions import PBX, TEAMS, Source
from teamsbc.events import Observers
from teamsbc.media.stats import parse_stats
from teamsbc.sip.message import parse_message
from teamsbc.tls import days_left

# --------------------------------------------------------------------------- strict parser

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


def _unescape(v: str, *, label: bool) -> str:
    out, i = [], 0
    while i < len(v):
        c = v[i]
        if c == "\\":
            nxt = v[i + 1] if i + 1 < len(v) else ""
            if nxt == "\\":
                out.append("\\")
            elif nxt == "n":
                out.append("\n")
            elif nxt == '"' and label:
                out.append('"')
            else:
                raise AssertionError(f"bad escape \\{nxt} in {v!r}")
            i += 2
            continue
        if label and c == '"':
            raise AssertionError(f"unescaped quote in label value {v!r}")
        out.append(c)
        i += 1
    return "".join(out)


def _value(text: str) -> float:
    if text in ("NaN", "+Inf", "-Inf", "Inf"):
        return float(text.replace("Inf", "inf"))
    if not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", text):
        raise AssertionError(f"not a float: {text!r}")
    return float(text)


def parse_prometheus(text: str) -> tuple[dict[tuple[str, frozenset], float], dict[str, str]]:
    """{(name, frozenset(labels.items())): value}, {name: type}. Raises AssertionError on
    anything the text format 0.0.4 does not allow: lines not ending in LF, a TYPE after its
    samples or twice, HELP twice, an unknown type, bad names, bad escapes, duplicate series,
    a family whose samples are not together."""
    assert text.endswith("\n"), "exposition must end with a line feed"
    samples: dict[tuple[str, frozenset], float] = {}
    types: dict[str, str] = {}
    helps: set[str] = set()
    seen_samples: set[str] = set()
    closed: set[str] = set()
    current: str | None = None
    for line in text[:-1].split("\n"):
        assert "\r" not in line
        if line.startswith("#"):
            m = re.fullmatch(rf"# (HELP|TYPE) ({_NAME}) ?(.*)", line)
            if not m:
                continue  # a plain comment
            kind, name, rest = m.groups()
            assert name not in closed, f"{name}: family split in two"
            if kind == "TYPE":
                assert rest in _TYPES, f"{name}: unknown type {rest!r}"
                assert name not in types, f"{name}: TYPE twice"
                assert name not in seen_samples, f"{name}: TYPE after samples"
                types[name] = rest
            else:
                assert name not in helps, f"{name}: HELP twice"
                _unescape(rest, label=False)
                helps.add(name)
            if current is not None and current != name:
                closed.add(current)
            current = name
            continue
        if not line.strip():
            continue
        m = re.fullmatch(rf"({_NAME})(\{{(.*)\}})? (\S+)( -?\d+)?", line)
        assert m, f"bad sample line {line!r}"
        name, _, inner, value, _ts = m.groups()
        family = name
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and name[: -len(suffix)] in types:
                family = name[: -len(suffix)]
        assert family not in closed, f"{family}: samples not together"
        if current is not None and current != family:
            closed.add(current)
        current = family
        labels: dict[str, str] = {}
        if inner:
            rest = inner
            while rest:
                lm = re.match(rf'({_LABEL})="((?:[^"\\]|\\.)*)"(,|$)', rest)
                assert lm, f"bad labels in {line!r}"
                assert lm.group(1) not in labels, f"label twice in {line!r}"
                labels[lm.group(1)] = _unescape(lm.group(2), label=True)
                rest = rest[lm.end():]
        key = (name, frozenset(labels.items()))
        assert key not in samples, f"duplicate series {line!r}"
        samples[key] = _value(value)
        seen_samples.add(family)
    return samples, types


def sample(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


# --------------------------------------------------------------------------- a real core

PBX_ADDR = ("10.0.0.10", 5060)
PBX_SRC = Source(PBX, "udp", PBX_ADDR)
TEAMS_CONN = Source(TEAMS, "tls", ("52.114.14.70", 41234), conn=object())
SDP = b"v=0\r\no=- 1 1 IN IP4 10.0.0.10\r\ns=-\r\nc=IN IP4 10.0.0.10\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


@pytest.fixture
def conf(tmp_path, test_pki):
    return cfg.from_dict({
        "sbc": {"fqdn": "sbc.example.com"},
        "teams": {"listen": "0.0.0.0:5061", "certificate": str(test_pki.sbc_fullchain),
                  "private_key": str(test_pki.sbc_key)},
        "pbx": {"listen": "10.0.0.5:5060", "transport": "udp", "address": "10.0.0.10:5060"},
        "numbers": {"country_code": "44"},
    }, base=tmp_path)


def invite_from_pbx(n: int) -> bytes:
    return (f"INVITE sip:02071234567@10.0.0.5:5060 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 10.0.0.10:5060;branch=z9hG4bKpbx{n};rport\r\n"
            f"Max-Forwards: 70\r\n"
            f"From: <sip:02079460000@10.0.0.10>;tag=pbxtag{n}\r\n"
            f"To: <sip:02071234567@10.0.0.5>\r\n"
            f"Call-ID: call-{n}@10.0.0.10\r\n"
            f"CSeq: 1 INVITE\r\n"
            f"Contact: <sip:1000@10.0.0.10:5060>\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(SDP)}\r\n\r\n").encode() + SDP


def response_to(req_bytes: bytes, status: int, reason: str) -> bytes:
    req = parse_message(req_bytes)
    to = req.headers.get("to")
    if status > 100 and ";tag=" not in to:
        to += ";tag=teamstag"
    lines = [f"SIP/2.0 {status} {reason}", *[f"Via: {v}" for v in req.headers.get_all("via")],
             *[f"Record-Route: {r}" for r in req.headers.get_all("record-route")],
             f"From: {req.headers.get('from')}", f"To: {to}", f"Call-ID: {req.call_id}",
             f"CSeq: {req.headers.get('cseq')}", "Contact: <sip:api-du-a-euwe.pstnhub.microsoft.com:443;transport=tls>",
             "Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


def bye_from_teams(inv_out: bytes, n: int) -> bytes:
    ruri = parse_message(inv_out).headers.get("contact").strip("<>")
    return (f"BYE {ruri} SIP/2.0\r\n"
            f"Via: SIP/2.0/TLS sip-du-a-eu.pstnhub.microsoft.com:5061;branch=z9hG4bKbye{n}\r\n"
            "Route: <sip:sbc.example.com:5061;transport=tls;lr;r2=on>\r\n"
            "Route: <sip:10.0.0.5:5060;lr;r2=on>\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:+442071234567@sip.pstnhub.microsoft.com>;tag=teamstag\r\n"
            f"To: <sip:+441000@sbc.example.com>;tag=pbxtag{n}\r\nCall-ID: call-{n}@10.0.0.10\r\n"
            "CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n").encode()


class Shell:
    """What the shell does with the core's call events: stamp and fan them out (transport.py)."""

    def __init__(self, proxy, metrics: Metrics):
        self.proxy, self.observers = proxy, Observers(metrics)

    def __call__(self, out: list) -> list:
        for ev in self.proxy.next_events():
            self.observers.deliver(ev, time.time())
        return out


def run_calls(proxy, m: Metrics, answered: int, rejected: int) -> None:
    """`answered` PBX->Teams calls answered and ended by Teams, `rejected` refused 486, all
    through the real proxy (the metrics observer sees what the shell would make it see)."""
    shell = Shell(proxy, m)
    now = 0.0
    for n in range(answered + rejected):
        sends = shell(proxy.receive(invite_from_pbx(n), PBX_SRC, now))
        inv_out = sends[1].data
        if n < answered:
            shell(proxy.receive(response_to(inv_out, 200, "OK"), TEAMS_CONN, now + 0.1))
            bye = shell(proxy.receive(bye_from_teams(inv_out, n), TEAMS_CONN, now + 1))
            shell(proxy.receive(response_to(bye[0].data, 200, "OK"), PBX_SRC, now + 1.1))
        else:
            shell(proxy.receive(response_to(inv_out, 486, "Busy Here"), TEAMS_CONN, now + 0.1))
        now += 2


def test_counters_follow_real_calls_through_the_proxy(conf):
    m = Metrics()
    router, proxy, _ = build(conf)
    m.attach(proxy=proxy, health=router.health)
    run_calls(proxy, m, answered=3, rejected=2)
    s, types = parse_prometheus(m.render(0.0))
    assert sample(s, "teamsbc_calls_total", direction="pbx->teams") == 5
    assert sample(s, "teamsbc_calls_total", direction="teams->pbx") == 0
    assert sample(s, "teamsbc_calls_answered_total", direction="pbx->teams") == 3
    assert sample(s, "teamsbc_calls_failed_total", direction="pbx->teams", code="486") == 2
    assert sample(s, "teamsbc_calls_ended_total", direction="pbx->teams", by="teams") == 3
    assert sample(s, "teamsbc_calls_active", direction="pbx->teams") == 0
    assert sample(s, "teamsbc_sip_requests_total", leg="pbx", method="INVITE") == 5
    assert sample(s, "teamsbc_sip_requests_total", leg="teams", method="BYE") == 3
    assert sample(s, "teamsbc_sip_responses_total", leg="teams", code="200", method="INVITE") == 3
    assert sample(s, "teamsbc_sip_responses_total", leg="teams", code="486", method="INVITE") == 2
    assert sample(s, "teamsbc_sip_responses_total", leg="pbx", code="200", method="BYE") == 3
    assert sample(s, "teamsbc_requests_pending") == 0
    assert sample(s, "teamsbc_build_info", version=__version__) == 1
    assert types["teamsbc_calls_total"] == "counter" and types["teamsbc_calls_active"] == "gauge"


def test_active_calls_and_timeouts(conf):
    m = Metrics()
    router, proxy, _ = build(conf)
    m.attach(proxy=proxy, health=router.health)
    shell = Shell(proxy, m)
    shell(proxy.receive(invite_from_pbx(7), PBX_SRC, 0.0))
    [call] = m.active_calls()
    assert call["call_id"] == "call-7@10.0.0.10" and call["direction"] == "pbx->teams"
    assert call["answered"] is None and call["started"].endswith("Z")
    s, _ = parse_prometheus(m.render(0.0))
    assert sample(s, "teamsbc_calls_active", direction="pbx->teams") == 1
    assert sample(s, "teamsbc_requests_pending") == 1
    # Teams never answers: sip, sip2, sip3 in turn (each invite_timeout), then the caller gets an error
    t = 0.0
    while m.active_calls() and t < 200:
        t += 0.5
        shell(proxy.handle_timer(t))
    s, _ = parse_prometheus(m.render(t))
    assert sample(s, "teamsbc_calls_active", direction="pbx->teams") == 0
    failed = {dict(k[1])["code"]: v for k, v in s.items() if k[0] == "teamsbc_calls_failed_total"}
    assert sum(failed.values()) == 1
    assert sample(s, "teamsbc_failovers_total") == 2          # sip -> sip2 -> sip3
    # the abandoned branches' client transactions end with Timer B
    t2 = t
    while sample(parse_prometheus(m.render(t2))[0], "teamsbc_transaction_timeouts_total", method="INVITE") is None and t2 < t + 100:
        t2 += 1
        shell(proxy.handle_timer(t2))
    assert sample(parse_prometheus(m.render(t2))[0], "teamsbc_transaction_timeouts_total", method="INVITE") >= 1


def test_peer_state_rtt_tls_certificate_and_drops(test_pki):
    book = HealthBook()
    book.ok("sip.pstnhub.microsoft.com", 10.0, rtt=0.042)
    book.failed("sip2.pstnhub.microsoft.com", 11.0, "OPTIONS timed out")
    book.retry_after("sip3.pstnhub.microsoft.com", 12.0, 30, "503 Service Unavailable")
    book.teams_pinged(15.0)
    shell = SimpleNamespace(stats={"tls_handshakes": 7, "tls_failures": 2, "cert_reloads": 1},
                            conns=[SimpleNamespace(leg="teams", proto="tls", closed=False),
                                   SimpleNamespace(leg="teams", proto="tls", closed=False),
                                   SimpleNamespace(leg="pbx", proto="tcp", closed=True)])
    drops = {"flood": 12, "unknown-source": 3}
    m = Metrics().attach(health=book, shell=shell, certificate=test_pki.sbc_fullchain, drops=drops)
    s, _ = parse_prometheus(m.render(20.0))
    for peer, state in (("sip.pstnhub.microsoft.com", "up"), ("sip2.pstnhub.microsoft.com", "down"),
                        ("sip3.pstnhub.microsoft.com", "cooling")):
        for st in ("up", "down", "cooling"):
            assert sample(s, "teamsbc_peer_state", peer=peer, state=st) == (1 if st == state else 0)
    assert sample(s, "teamsbc_peer_rtt_seconds", peer="sip.pstnhub.microsoft.com") == 0.042
    assert sample(s, "teamsbc_peer_rtt_seconds", peer="sip2.pstnhub.microsoft.com") is None
    assert sample(s, "teamsbc_peer_usable", peer="sip3.pstnhub.microsoft.com") == 0
    assert sample(s, "teamsbc_teams_options_age_seconds") == 5
    assert sample(s, "teamsbc_tls_handshakes_total") == 7
    assert sample(s, "teamsbc_tls_failures_total") == 2
    assert sample(s, "teamsbc_certificate_reloads_total") == 1
    assert sample(s, "teamsbc_connections", leg="teams", transport="tls") == 2
    assert sample(s, "teamsbc_connections", leg="pbx", transport="tcp") is None   # closed
    expiry = sample(s, "teamsbc_certificate_expiry_seconds")
    assert abs(expiry - days_left(test_pki.sbc_fullchain) * 86400) < 5
    assert sample(s, "teamsbc_certificate_readable") == 1
    assert sample(s, "teamsbc_ratelimit_drops_total", reason="flood") == 12
    drops["flood"] = 13                                        # read at scrape time
    m.attach(drops=lambda: drops)
    assert sample(parse_prometheus(m.render(20.0))[0], "teamsbc_ratelimit_drops_total", reason="flood") == 13


def test_certificate_expiry_follows_the_file(tmp_path, test_pki):
    cert = tmp_path / "fullchain.pem"
    shutil.copy(test_pki.sbc_fullchain, cert)
    m = Metrics().attach(certificate=cert)
    first = m.certificate_days_left()
    chain, _key = test_pki.issue("short", ["sbc.example.com"], days=2)
    shutil.copy(chain, cert)
    assert abs(m.certificate_days_left() - days_left(cert)) < 1e-3 and first > 10
    cert.write_text("garbage")
    s, _ = parse_prometheus(m.render(0.0))
    assert sample(s, "teamsbc_certificate_readable") == 0
    assert sample(s, "teamsbc_certificate_expiry_seconds") is None


def test_label_values_are_escaped():
    book = HealthBook()
    odd = 'pbx "main"\\trunk\nline2'
    book.failed(odd, 1.0, "x")
    text = Metrics().attach(health=book).render(2.0)
    assert r'peer="pbx \"main\"\\trunk\nline2"' in text
    s, _ = parse_prometheus(text)
    assert sample(s, "teamsbc_peer_state", peer=odd, state="down") == 1
    assert escape_label('a"b') == 'a\\"b'


def test_method_labels_are_bounded(conf):
    """Attacker-chosen method tokens, through the real proxy, all count as "other"."""
    _, proxy, _ = build(conf)
    m = Metrics().attach(proxy=proxy)
    for i in range(1000):
        req = invite_from_pbx(i).replace(b"INVITE", f"X{i}".encode())
        proxy.receive(req, PBX_SRC, float(i))
        resp = (f"SIP/2.0 599 Odd\r\nVia: SIP/2.0/TLS sbc.example.com:5061;branch=z9hG4bK-y{i}\r\n"
                f"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: y{i}\r\nCSeq: 1 Y{i}\r\n"
                "Content-Length: 0\r\n\r\n").encode()
        proxy.receive(resp, TEAMS_CONN, float(i))
    s, _ = parse_prometheus(m.render(0.0))
    assert sample(s, "teamsbc_sip_requests_total", leg="pbx", method="other") == 1000
    assert sample(s, "teamsbc_sip_responses_total", leg="teams", code="599", method="other") == 1000
    assert len(proxy.counters.requests["pbx"]) == 1 and len(proxy.counters.responses["teams"]) == 1


def test_call_table_is_bounded_and_forgets_calls_without_bye():
    m = Metrics(max_calls=3, call_ttl=100)
    now = time.time()
    for i in range(5):
        m.call_started(f"c{i}", "pbx->teams", None, "a", "b", now - 50 + i)
    assert [c["call_id"] for c in m.active_calls(now)] == ["c2", "c3", "c4"]
    assert m.calls_total["pbx->teams"] == 5
    assert m.active_calls(now + 60) == []          # older than call_ttl
    m.call_ended("c9", "pbx", now)                 # BYE of a call this process never saw
    assert m.calls_ended[("unknown", "pbx")] == 1


def test_media_totals_from_delete_replies():
    m = Metrics()
    m.media_stats(parse_stats("c1", {"result": "ok"}), 0.0)  # a call-id-only delete has no stats
    m.media_stats(parse_stats("c2", {"result": "ok", "totals": {"RTP": {"packets": 8, "bytes": 1376, "errors": 1}}}), 0.0)
    s, _ = parse_prometheus(m.render(0.0))
    assert sample(s, "teamsbc_media_deletes_total") == 2
    assert sample(s, "teamsbc_media_packets_total") == 8
    assert sample(s, "teamsbc_media_bytes_total") == 1376
    assert sample(s, "teamsbc_media_errors_total") == 1


@pytest.mark.e2e
async def test_rtpengine_state_and_latency_from_a_real_pool(procs):
    from teamsbc.media.pool import MediaPool
    from tests.support.ports import free_port
    from tests.support.rtpengine import RtpEngine
    eng = RtpEngine(procs).start()
    dead = f"udp:127.0.0.1:{free_port('udp')}"
    pool = MediaPool([eng.ng_udp, dead], timeout=0.5, ping_interval=60, down_after=1)
    await pool.start()
    try:
        for _ in range(3):
            await pool.request_to(eng.ng_udp, {"command": "ping"})
        status = {st["address"]: st for st in pool.status()}
        s, _ = parse_prometheus(Metrics().attach(media=pool).render(0.0))
        live = str(pool.instance(eng.ng_udp).address)
        assert sample(s, "teamsbc_rtpengine_up", instance=live) == 1
        assert sample(s, "teamsbc_rtpengine_up", instance=str(pool.instance(dead).address)) == 0
        median = sample(s, "teamsbc_rtpengine_rtt_seconds", instance=live, quantile="0.5")
        assert median == status[live]["rtt"]["median"] and 0 < median < 0.5
        assert sample(s, "teamsbc_rtpengine_rtt_seconds", instance=live, quantile="0.99") == status[live]["rtt"]["p99"]
        assert sample(s, "teamsbc_rtpengine_rtt_max_seconds", instance=live) == status[live]["rtt"]["max"]
    finally:
        await pool.close()


def test_hot_path_cost_and_allocations():
    """The observer runs per SIP message: a few dict operations, no growth once warm."""
    m = Metrics()
    data = b"x" * 800
    local, remote = ("10.0.0.5", 5060), ("10.0.0.10", 5060)

    def one():
        m.sip("in", "pbx", "udp", local, remote, data, 0.0)
        m.sip("out", "teams", "tls", local, remote, data, 0.0)
        m.sip("in", "teams", "tls", local, remote, data, 0.0)

    for _ in range(1000):
        one()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(20000):
        one()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(st.size_diff for st in after.compare_to(before, "filename")
                if st.traceback[0].filename.endswith("metrics.py"))
    assert grown < 2048, grown
    n = 100_000
    t0 = time.perf_counter()
    for _ in range(n):
        one()
    per_message = (time.perf_counter() - t0) / n / 3
    print(f"metrics observer: {per_message * 1e6:.2f} us per event")
    assert per_message < 20e-6
    assert not math.isnan(per_message)


def test_content_type_is_the_prometheus_one():
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
