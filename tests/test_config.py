"""Config validation: typed objects out, precise errors (file, key, what is wrong, what is right)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from teamsbc import config as cfg
from teamsbc.addresses import HostPort

GOOD = """
sbc:   {fqdn: sbc.example.com}
teams:
  listen: 0.0.0.0:5061
  certificate: certs/live/sbc.example.com/fullchain.pem
  private_key: certs/live/sbc.example.com/privkey.pem
  trusted_ca: null
  proxies: [sip.pstnhub.microsoft.com, sip2.pstnhub.microsoft.com, sip3.pstnhub.microsoft.com]
  port: 5061
  resolve: {}
pbx:
  listen: 10.0.0.5:5060
  transport: udp
  address: 10.0.0.10:5060
media:
  rtpengine: []
"""


@pytest.fixture
def confdir(tmp_path: Path) -> Path:
    live = tmp_path / "certs" / "live" / "sbc.example.com"
    live.mkdir(parents=True)
    (live / "fullchain.pem").write_text("x")
    (live / "privkey.pem").write_text("x")
    return tmp_path


def write(d: Path, text: str) -> Path:
    p = d / "teamsbc.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_issue_contract_keys_load(confdir):
    c = cfg.load(write(confdir, GOOD))
    assert c.sbc.fqdn == "sbc.example.com"
    assert c.teams.listen == HostPort("0.0.0.0", 5061)
    assert c.teams.certificate == confdir / "certs/live/sbc.example.com/fullchain.pem"
    assert c.teams.trusted_ca is None
    assert c.teams.proxies == ("sip.pstnhub.microsoft.com", "sip2.pstnhub.microsoft.com", "sip3.pstnhub.microsoft.com")
    assert c.teams.port == 5061 and c.teams.resolve == {} and c.teams.signaling_port == 5061
    assert c.pbx == cfg.PbxSection(HostPort("10.0.0.5", 5060), "udp", HostPort("10.0.0.10", 5060))
    assert c.media.rtpengine == ()


def test_certificate_defaults_to_live_files_of_fqdn(confdir):
    text = GOOD.replace("  certificate: certs/live/sbc.example.com/fullchain.pem\n", "").replace(
        "  private_key: certs/live/sbc.example.com/privkey.pem\n", "")
    c = cfg.load(write(confdir, text))
    assert c.teams.certificate == confdir / "certs" / "live" / "sbc.example.com" / "fullchain.pem"
    assert c.teams.private_key == confdir / "certs" / "live" / "sbc.example.com" / "privkey.pem"


def test_resolve_override(confdir):
    c = cfg.load(write(confdir, GOOD.replace("resolve: {}", "resolve: {sip.pstnhub.microsoft.com: \"127.0.0.1:15061\", Sip-Du-A-Us.pstnhub.microsoft.com: 127.0.0.1}")))
    assert c.teams.resolve == {"sip.pstnhub.microsoft.com": HostPort("127.0.0.1", 15061),
                               "sip-du-a-us.pstnhub.microsoft.com": HostPort("127.0.0.1", 5061)}


@pytest.mark.parametrize("change,expected", [
    (("fqdn: sbc.example.com", "fqdn: 10.0.0.5"), "sbc.fqdn: '10.0.0.5' is not a fully qualified domain name"),
    (("transport: udp", "transport: sctp"), "pbx.transport: 'sctp' is not one of udp, tcp"),
    (("address: 10.0.0.10:5060", "address: pbx.local:5060"), "pbx.address: 'pbx.local' must be an IP address"),
    (("address: 10.0.0.10:5060", "address: 10.0.0.10"), "pbx.address: '10.0.0.10' has no port"),
    (("listen: 10.0.0.5:5060", "listen: 10.0.0.5:99999"), "pbx.listen: port 99999 out of range 1-65535"),
    (("port: 5061\n", "port: tls\n"), "teams.port: must be a number between 1 and 65535, got 'tls'"),
    (("proxies: [sip.pstnhub", "proxies: [sip-all.pstnhub.microsoft.com, sip.pstnhub"), "teams.proxies[0]: sip-all.pstnhub.microsoft.com was retired in 2022"),
    (("trusted_ca: null", "trusted_ca: /nonexistent/ca.pem"), "teams.trusted_ca: file '/nonexistent/ca.pem' does not exist"),
    (("media:", "medya:"), "medya: unknown section"),
    (("  port: 5061\n", "  port: 5061\n  sip_port: 5061\n"), "teams.sip_port: unknown key"),
])
def test_each_error_names_file_key_and_fix(confdir, change, expected):
    path = write(confdir, GOOD.replace(*change))
    with pytest.raises(cfg.ConfigError) as ei:
        cfg.load(path)
    assert any(e.startswith(f"{path}: ") and expected in e for e in ei.value.errors), ei.value.errors


def test_media_limits_load_and_must_fit_a_udp_ng_reply(confdir):
    """Issue 12: the SDP limits checked before any NG command; limits that would let an NG
    reply outgrow one UDP datagram are refused while an instance is reached over UDP."""
    c = cfg.load(write(confdir, GOOD.replace("rtpengine: []", "rtpengine: [udp:127.0.0.1:22222]")))
    m = c.media
    assert (m.max_media_lines, m.max_sdp_size, m.max_sdp_attributes, m.max_sdp_line_length) == (8, 16384, 256, 1024)
    big = "rtpengine: [{}]\n  max_sdp_size: 60000\n  max_media_lines: 16"
    path = write(confdir, GOOD.replace("rtpengine: []", big.format("udp:127.0.0.1:22222")))
    with pytest.raises(cfg.ConfigError) as ei:
        cfg.load(path)
    assert any(e.startswith(f"{path}: media.max_sdp_size: ") and "more than one UDP datagram" in e
               and "http:// or ws://" in e for e in ei.value.errors), ei.value.errors
    assert cfg.load(write(confdir, GOOD.replace("rtpengine: []", big.format("http://10.0.0.7:8080")))).media.max_sdp_size == 60000
    path = write(confdir, GOOD.replace("rtpengine: []", "rtpengine: []\n  max_media_lines: 0"))
    with pytest.raises(cfg.ConfigError, match=r"media\.max_media_lines: must be a whole number between 1 and 64"):
        cfg.load(path)


def test_all_errors_reported_at_once(confdir):
    bad = GOOD.replace("transport: udp", "transport: sctp").replace("fqdn: sbc.example.com", "fqdn: x")
    with pytest.raises(cfg.ConfigError) as ei:
        cfg.load(write(confdir, bad))
    assert len(ei.value.errors) >= 2


def test_yaml_syntax_error_has_line(confdir):
    with pytest.raises(cfg.ConfigError) as ei:
        cfg.load(write(confdir, "sbc: {fqdn: [unclosed\n"))
    assert "line 2" in ei.value.errors[0] or "line 1" in ei.value.errors[0]
    assert "not valid YAML" in ei.value.errors[0]


def run_cli(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "teamsbc", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd, env=env)


def test_cli_check_exit_codes(confdir):
    # check also loads the certificate (tests/test_preflight.py): a real pair for the good case
    from teamsbc import labpki
    pki = labpki.ensure_lab_pki(confdir / "pki", "sbc.example.com", ["sip.pstnhub.microsoft.com"])
    live = confdir / "certs" / "live" / "sbc.example.com"
    (live / "fullchain.pem").write_bytes(pki.sbc_fullchain.read_bytes())
    (live / "privkey.pem").write_bytes(pki.sbc_key.read_bytes())
    ok = run_cli("check", "-c", str(write(confdir, GOOD)))
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout
    bad = run_cli("check", "-c", str(write(confdir, GOOD.replace("transport: udp", "transport: sctp"))))
    assert bad.returncode == 2
    assert "pbx.transport: 'sctp' is not one of udp, tcp" in bad.stderr
    assert "Traceback" not in bad.stderr
    missing = run_cli("check", "-c", str(confdir / "nope.yaml"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_cli_run_with_bad_config_exits_2_without_traceback(confdir):
    r = run_cli("run", "-c", str(write(confdir, GOOD.replace("fqdn: sbc.example.com", "fqdn: nope"))))
    assert r.returncode == 2 and "sbc.fqdn" in r.stderr and "Traceback" not in r.stderr


def test_cli_run_with_unusable_certificate_exits_2(confdir):
    # the files exist but are not PEM: a clear TLS error before any socket is opened
    r = run_cli("run", "-c", str(write(confdir, GOOD)))
    assert r.returncode == 2, r.stderr
    assert "teams.certificate: " in r.stderr and "is not a PEM certificate chain" in r.stderr
    assert "fix: " in r.stderr and "Traceback" not in r.stderr


def test_admin_api_default_listener_is_loopback_7061(confdir):
    """Issue 12: 127.0.0.1:8080 collided with whatever else a host runs there (a busy 8080
    stopped the SBC from starting); 7061 is registered to nothing."""
    from teamsbc.admin_settings import DEFAULT_LISTEN
    from teamsbc.doctor.teams_ping import DEFAULT_ADMIN
    assert cfg.load(write(confdir, GOOD)).admin.listen == HostPort("127.0.0.1", 7061)
    assert DEFAULT_LISTEN == ("127.0.0.1", 7061) and DEFAULT_ADMIN == "127.0.0.1:7061"


def test_the_lab_default_admin_api_is_on_the_same_port(monkeypatch, tmp_path):
    """`teamsbc run` without a config (what a new user runs first) kept 8080 after the
    configured default moved to 7061: a busy 8080 still stopped the lab from starting."""
    from teamsbc import labdefault
    monkeypatch.delenv("TEAMSBC_LAB_PORTS", raising=False)
    monkeypatch.setenv("TEAMSBC_LAB_DIR", str(tmp_path / "lab"))
    assert labdefault.lab_ports()[2] == 7061
    assert labdefault.lab_config().admin.listen == HostPort("127.0.0.1", 7061)


@pytest.mark.e2e
def test_a_busy_admin_port_stops_the_sbc_with_a_clear_error(tmp_path, procs, test_pki):
    import socket
    import re
    from tests.support.ports import free_port
    from tests.support.procs import ProcessExited
    from tests.support.sbc import SbcProcess
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    sbc = SbcProcess(tmp_path, procs, test_pki, pbx_port=free_port("udp"),
                     extra={"admin": {"listen": f"127.0.0.1:{port}"}})
    try:
        try:
            sbc.start(timeout=10)           # its SIP listeners may be up for a moment before it exits
        except ProcessExited:
            pass
        assert sbc.process.wait(timeout=10) == 1
        assert re.search(rf"cannot start: admin API cannot listen on 127\.0\.0\.1:{port}: .*address already in use",
                         sbc.log(), re.I), sbc.log()
        assert "Traceback" not in sbc.log()
    finally:
        busy.close()
