"""Issue 3 in the sans-IO core: OPTIONS keep-alive, peer health, routing around down peers,
carrier-mode tenants, cloud selection. A float is the clock."""
from __future__ import annotations

import logging

import pytest

from teamsbc import __version__
from teamsbc import config as cfg
from teamsbc.app import build
from teamsbc.health import COOLING, DOWN, UP, HealthBook
from teamsbc.decisions import PBX, TEAMS, Destination, Source
from teamsbc.sip.message import parse_message

from .test_proxy import PBX_SRC, SDP, TEAMS_SRC, pbx_invite, response_to, teams_invite

BASE = {
    "sbc": {"fqdn": "sbc.example.com"},
    "teams": {"listen": "0.0.0.0:5061", "certificate": "c.pem", "private_key": "k.pem"},
    "pbx": {"listen": "10.0.0.5:5060", "transport": "udp", "address": "10.0.0.10:5060"},
    "numbers": {"country_code": "44"},
}


def make(tmp_path, **over):
    for n in ("c.pem", "k.pem"):
        (tmp_path / n).write_text("x")
    data = {k: dict(v) for k, v in BASE.items()}
    for section, values in over.items():
        data.setdefault(section, {}).update(values)
    return cfg.from_dict(data, base=tmp_path)


def parsed(sends):
    return [(s.to, parse_message(s.data), s) for s in sends]


# ---------------------------------------------------------------- health book
def test_health_transitions_and_one_log_line_per_change(caplog):
    book = HealthBook()
    caplog.set_level(logging.INFO, logger="teamsbc.health")
    book.failed("sip.pstnhub.microsoft.com", 1.0, "timed out")
    book.failed("sip.pstnhub.microsoft.com", 2.0, "timed out")      # no second line
    assert book.peers["sip.pstnhub.microsoft.com"].state == DOWN
    assert not book.usable("sip.pstnhub.microsoft.com", 2.0)
    book.response("sip.pstnhub.microsoft.com", 3.0, 200, None, rtt=0.012)
    assert book.peers["sip.pstnhub.microsoft.com"].state == UP
    book.response("sip.pstnhub.microsoft.com", 4.0, 503, 30)
    p = book.peers["sip.pstnhub.microsoft.com"]
    assert p.state == COOLING and p.cooling_until == 34.0
    assert not book.usable("sip.pstnhub.microsoft.com", 33.9)
    assert book.usable("sip.pstnhub.microsoft.com", 34.0)
    book.response("sip.pstnhub.microsoft.com", 5.0, 200, None)       # alive, but Retry-After holds
    assert p.state == COOLING and not book.usable("sip.pstnhub.microsoft.com", 5.0)
    book.response("sip.pstnhub.microsoft.com", 34.5, 404, None)      # any answer but 503 = alive
    assert p.state == UP
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "peer sip.pstnhub.microsoft.com is now down (was up): timed out",
        "peer sip.pstnhub.microsoft.com is now up (was down): answered 200",
        "peer sip.pstnhub.microsoft.com is now cooling (was up): 503 Service Unavailable, Retry-After 30s",
        "peer sip.pstnhub.microsoft.com is now up (was cooling): answered 404",
    ]
    assert p.snapshot(34.5)["rtt_ms"] == [12.0]


def test_teams_options_alarm_once(caplog):
    book = HealthBook()
    book.started = 0.0
    caplog.set_level(logging.WARNING, logger="teamsbc.health")
    assert not book.check_teams_alarm(179.0, 180)
    assert book.check_teams_alarm(180.0, 180)
    assert book.check_teams_alarm(240.0, 180)
    assert len([r for r in caplog.records if "ALARM" in r.getMessage()]) == 1
    book.teams_pinged(250.0)
    assert not book.check_teams_alarm(300.0, 180)


# ---------------------------------------------------------------- pinger
def test_options_to_each_teams_proxy_and_the_pbx_at_start_then_on_interval(tmp_path):
    conf = make(tmp_path, teams={"options_interval": 60}, pbx={"options_interval": 30})
    router, proxy, _ = build(conf, 100.0, keepalive=True)
    assert proxy.next_timer() == 100.0
    out = parsed(proxy.handle_timer(100.0))
    dests = [d for d, _, _ in out]
    assert dests == [Destination(TEAMS, "tls", "sip.pstnhub.microsoft.com", 5061),
                     Destination(TEAMS, "tls", "sip2.pstnhub.microsoft.com", 5061),
                     Destination(TEAMS, "tls", "sip3.pstnhub.microsoft.com", 5061),
                     Destination(PBX, "udp", "10.0.0.10", 5060)]
    opt = out[0][1]
    h = opt.headers
    assert opt.method == "OPTIONS" and opt.uri == "sip:sip.pstnhub.microsoft.com:5061;transport=tls"
    assert h.get("contact") == "<sip:sbc.example.com:5061;transport=tls>"
    assert h.get("from").startswith("<sip:sbc.example.com:5061>;tag=")
    assert h.get("to") == "<sip:sip.pstnhub.microsoft.com>"
    assert h.get("x-ms-sbc") == f"teamsbc/sbc/{__version__}"
    assert h.get("user-agent") == f"teamsbc/{__version__}"
    assert "REFER" not in h.get("allow")
    assert opt.top_via.host == "sbc.example.com" and opt.top_via.transport == "TLS"
    pbx_opt = out[3][1]
    assert pbx_opt.uri == "sip:10.0.0.10:5060" and pbx_opt.top_via.host == "10.0.0.5"
    assert pbx_opt.headers.get("x-ms-sbc") is None
    # answers mark peers up with their round-trip time
    for _, req, _ in out[:3]:
        proxy.receive(response_to(req.to_bytes(), 200, "OK"), TEAMS_SRC, 100.02)
    assert router.health.peers["sip2.pstnhub.microsoft.com"].state == UP
    assert list(router.health.peers["sip2.pstnhub.microsoft.com"].rtts) == [pytest.approx(0.02)]
    # next round: the PBX after 30 s, Teams after 60 s
    later = [(d.host, m.method) for d, m, _ in parsed(proxy.handle_timer(130.0))]
    assert later == [("10.0.0.10", "OPTIONS")]
    again = [d.host for d, m, _ in parsed(proxy.handle_timer(160.0)) if m.method == "OPTIONS"]
    assert again[:3] == ["sip.pstnhub.microsoft.com", "sip2.pstnhub.microsoft.com", "sip3.pstnhub.microsoft.com"]


def test_allow_refer_when_transfer_enabled(tmp_path):
    router, proxy, _ = build(make(tmp_path, teams={"allow_refer": True}), 0.0, keepalive=True)
    opt = parsed(proxy.handle_timer(0.0))[0][1]
    assert opt.headers.get("allow").endswith("REFER")


def test_unanswered_ping_marks_peer_down_and_calls_skip_it(tmp_path):
    conf = make(tmp_path, teams={"options_timeout": 2}, pbx={"options_interval": 0})
    router, proxy, _ = build(conf, 0.0, keepalive=True)
    out = parsed(proxy.handle_timer(0.0))
    for _, req, _ in out[1:]:  # sip2 and sip3 answer, sip does not
        proxy.receive(response_to(req.to_bytes(), 200, "OK"), TEAMS_SRC, 0.05)
    proxy.handle_timer(2.0)  # Timer F of the ping = options_timeout
    assert router.health.peers["sip.pstnhub.microsoft.com"].state == DOWN
    sends = parsed(proxy.receive(pbx_invite(), PBX_SRC, 3.0))
    invites = [(d, m) for d, m, _ in sends if getattr(m, "method", None) == "INVITE"]
    assert [d.host for d, _ in invites] == ["sip2.pstnhub.microsoft.com"]
    assert invites[0][1].uri.startswith("sip:+442071234567@sip2.pstnhub.microsoft.com:5061")


def test_transport_failure_of_a_call_marks_teams_proxy_down(tmp_path):
    router, proxy, _ = build(make(tmp_path))
    first = proxy.receive(pbx_invite(), PBX_SRC, 0.0)[1]
    proxy.transport_failed(first.token, 0.1)
    assert router.health.peers["sip.pstnhub.microsoft.com"].state == DOWN
    assert "transport failure" in router.health.peers["sip.pstnhub.microsoft.com"].reason


def test_503_retry_after_cools_a_proxy_then_it_is_used_again(tmp_path):
    router, proxy, _ = build(make(tmp_path))
    first = proxy.receive(pbx_invite("z9hG4bKc1"), PBX_SRC, 0.0)[1]
    resp = response_to(first.data, 503, "Service Unavailable").replace(
        b"Content-Length: 0", b"Retry-After: 10\r\nContent-Length: 0")
    out = parsed(proxy.receive(resp, TEAMS_SRC, 0.1))
    assert [d.host for d, m, _ in out if getattr(m, "method", "") == "INVITE"] == ["sip2.pstnhub.microsoft.com"]
    second = parsed(proxy.receive(pbx_invite("z9hG4bKc2").replace(b"call-1@", b"call-2@"), PBX_SRC, 5.0))
    assert [d.host for d, m, _ in second if getattr(m, "method", "") == "INVITE"] == ["sip2.pstnhub.microsoft.com"]
    third = parsed(proxy.receive(pbx_invite("z9hG4bKc3").replace(b"call-1@", b"call-3@"), PBX_SRC, 10.2))
    assert [d.host for d, m, _ in third if getattr(m, "method", "") == "INVITE"] == ["sip.pstnhub.microsoft.com"]


def test_pbx_down_means_503_at_once_for_teams_calls_and_optionally_for_options(tmp_path):
    conf = make(tmp_path, teams={"options_503_when_pbx_down": True, "options_interval": 0},
                pbx={"options_interval": 5, "options_timeout": 1})
    router, proxy, _ = build(conf, 0.0, keepalive=True)
    proxy.handle_timer(0.0)
    proxy.handle_timer(1.0)  # the PBX did not answer its OPTIONS
    assert router.health.peers["pbx 10.0.0.10:5060"].state == DOWN
    sends = parsed(proxy.receive(teams_invite(), TEAMS_SRC, 1.5))
    statuses = [m.status for _, m, _ in sends]
    assert statuses == [503]  # at once, not even a 100 first
    assert sends[0][1].headers.get("retry-after") == "30"
    assert all(d == TEAMS_SRC for d, _, _ in sends)  # nothing went to the PBX
    opt = ("OPTIONS sip:sbc.example.com:5061 SIP/2.0\r\nVia: SIP/2.0/TLS 52.114.14.70:5061;branch=z9hG4bKo\r\n"
           "From: <sip:sip.pstnhub.microsoft.com>;tag=x\r\nTo: <sip:sbc.example.com>\r\nCall-ID: o\r\n"
           "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()
    assert parsed(proxy.receive(opt, TEAMS_SRC, 1.6))[0][1].status == 503
    assert router.health.teams_options_last == 1.6


# ---------------------------------------------------------------- carrier mode
def tenants_conf(tmp_path):
    return make(tmp_path, teams={"tenants": {
        "alpha.sbc.example.com": {"pbx": "10.0.1.10:5060"},
        "beta.sbc.example.com": {"numbers": ["+441632"]},
    }})


def test_teams_call_to_a_tenant_fqdn_reaches_its_pbx(tmp_path):
    router, proxy, _ = build(tenants_conf(tmp_path))
    inv = teams_invite().replace(b"@sbc.example.com:5061;user=phone;transport=tls SIP/2.0",
                                 b"@alpha.sbc.example.com:5061;user=phone;transport=tls SIP/2.0")
    out = parsed(proxy.receive(inv, TEAMS_SRC, 0.0))
    dest, fwd, _ = out[1]
    assert dest == Destination(PBX, "udp", "10.0.1.10", 5060)
    assert fwd.uri == "sip:+15551230000@10.0.1.10:5060;user=phone"
    assert fwd.headers.get_all("record-route")[:2] == ["<sip:10.0.0.5:5060;lr;r2=on>",
                                                       "<sip:alpha.sbc.example.com:5061;transport=tls;lr;r2=on>"]
    ringing = response_to(out[1][2].data, 180, "Ringing", contact="<sip:+15551230000@10.0.1.10:5060>")
    up = parsed(proxy.receive(ringing, Source(PBX, "udp", ("10.0.1.10", 5060)), 0.1))[0][1]
    assert up.headers.get("contact").startswith("<sip:+15551230000@alpha.sbc.example.com:5061;transport=tls;x-tsbc-c=")


def test_pbx_calls_carry_their_tenant_fqdn_by_trunk_or_number(tmp_path):
    router, proxy, _ = build(tenants_conf(tmp_path))
    alpha_src = Source(PBX, "udp", ("10.0.1.10", 5060))
    inv = parsed(proxy.receive(pbx_invite(), alpha_src, 0.0))[1][1]
    assert inv.headers.get_all("record-route")[0] == "<sip:alpha.sbc.example.com:5061;transport=tls;lr;r2=on>"
    assert "@alpha.sbc.example.com:5061;transport=tls;x-tsbc-c=" in inv.headers.get("contact")
    assert inv.headers.get("from").startswith('"Alice" <sip:+442079460000@alpha.sbc.example.com;user=phone>')
    beta = pbx_invite("z9hG4bKb").replace(b"sip:02079460000@", b"sip:01632960000@").replace(b"call-1@", b"call-b@")
    inv = parsed(proxy.receive(beta, PBX_SRC, 0.0))[1][1]
    assert inv.headers.get_all("record-route")[0] == "<sip:beta.sbc.example.com:5061;transport=tls;lr;r2=on>"
    plain = parsed(proxy.receive(pbx_invite("z9hG4bKp").replace(b"call-1@", b"call-p@"), PBX_SRC, 0.0))[1][1]
    assert plain.headers.get_all("record-route")[0] == "<sip:sbc.example.com:5061;transport=tls;lr;r2=on>"


def test_options_only_for_the_base_fqdn(tmp_path):
    router, proxy, _ = build(tenants_conf(tmp_path), 0.0, keepalive=True)
    out = parsed(proxy.handle_timer(0.0))
    teams_opts = [m for d, m, _ in out if d.leg == TEAMS]
    assert len(teams_opts) == 3
    assert {m.headers.get("contact") for m in teams_opts} == {"<sip:sbc.example.com:5061;transport=tls>"}
    # both trunks are pinged
    assert sorted(d.host for d, _, _ in out if d.leg == PBX) == ["10.0.0.10", "10.0.1.10"]


def test_tenant_config_errors(tmp_path):
    with pytest.raises(cfg.ConfigError) as ei:
        make(tmp_path, teams={"tenants": {"other.example.org": {"pbx": "10.0.0.1:5060"},
                                          "gamma.sbc.example.com": {}}})
    text = "\n".join(ei.value.errors)
    assert "teams.tenants.other.example.org: must be a subdomain of sbc.fqdn (sbc.example.com)" in text
    assert "teams.tenants.gamma.sbc.example.com: needs pbx" in text


@pytest.mark.parametrize("cloud,proxies,san", [
    ("commercial", ("sip.pstnhub.microsoft.com", "sip2.pstnhub.microsoft.com", "sip3.pstnhub.microsoft.com"),
     ("sip.pstnhub.microsoft.com",)),
    ("gcch", ("sip.pstnhub.gov.teams.microsoft.us",), ("sip.pstnhub.gov.teams.microsoft.us",)),
    ("dod", ("sip.pstnhub.dod.teams.microsoft.us",), ("sip.pstnhub.dod.teams.microsoft.us",)),
])
def test_cloud_selects_proxies_and_required_san(tmp_path, cloud, proxies, san):
    c = make(tmp_path, teams={"cloud": cloud})
    assert c.teams.proxies == proxies and c.teams.require_san == san
