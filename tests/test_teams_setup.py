"""`teamsbc teams-setup`: the exact cmdlets with the config's values, carrier tenants, and
firewall rules that nftables itself accepts (`nft -c`, when nft is installed)."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml

from teamsbc import config as cfg
from teamsbc import teams_setup


def write_config(tmp_path, **teams):
    for n in ("c.pem", "k.pem"):
        (tmp_path / n).write_text("x")
    data = {
        "sbc": {"fqdn": "sbc.contoso.com"},
        "teams": {"listen": "0.0.0.0:5067", "certificate": "c.pem", "private_key": "k.pem", **teams},
        "pbx": {"listen": "10.0.0.5:5060", "transport": "udp", "address": "10.0.0.10:5060"},
    }
    path = tmp_path / "teamsbc.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run(path, *args):
    r = subprocess.run([sys.executable, "-m", "teamsbc.teams_setup", "-c", str(path), *args],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_powershell_has_the_exact_cmdlets_with_config_values(tmp_path):
    out = run(write_config(tmp_path, signaling_port=5068), "--max-sessions", "40")
    lines = out.splitlines()
    assert "Connect-MicrosoftTeams" in lines
    assert ("New-CsOnlinePSTNGateway -Fqdn sbc.contoso.com -SipSignalingPort 5068 -SendSipOptions $true "
            "-MaxConcurrentSessions 40 -Enabled $true") in lines
    assert 'Set-CsOnlinePstnUsage -Identity Global -Usage @{Add="teamsbc"}' in lines
    assert ('New-CsOnlineVoiceRoute -Identity teamsbc -NumberPattern ".*" -OnlinePstnGatewayList '
            'sbc.contoso.com -Priority 1 -OnlinePstnUsages "teamsbc"') in lines
    assert 'New-CsOnlineVoiceRoutingPolicy -Identity teamsbc -OnlinePstnUsages "teamsbc"' in lines
    assert "Grant-CsOnlineVoiceRoutingPolicy -Identity user@contoso.com -PolicyName teamsbc" in lines
    assert "contoso.com must be a verified domain" in out
    # the parameter names were checked against Microsoft's reference: said where
    assert "learn.microsoft.com/powershell" in out


def test_default_max_sessions_and_signaling_port_from_listen(tmp_path):
    out = run(write_config(tmp_path))
    assert "-SipSignalingPort 5067 -SendSipOptions $true -MaxConcurrentSessions 100 -Enabled $true" in out


def test_carrier_mode_one_gateway_per_tenant_and_the_base_domain_note(tmp_path):
    path = write_config(tmp_path, tenants={"customer1.sbc.contoso.com": {"pbx": "10.0.1.10:5060"},
                                           "customer2.sbc.contoso.com": {"numbers": ["+441632"]}})
    out = run(path, "--powershell-only")
    gws = [l for l in out.splitlines() if l.startswith("New-CsOnlinePSTNGateway")]
    assert gws == [
        "New-CsOnlinePSTNGateway -Fqdn customer1.sbc.contoso.com -SipSignalingPort 5067 -SendSipOptions $true "
        "-MaxConcurrentSessions 100 -Enabled $true",
        "New-CsOnlinePSTNGateway -Fqdn customer2.sbc.contoso.com -SipSignalingPort 5067 -SendSipOptions $true "
        "-MaxConcurrentSessions 100 -Enabled $true",
    ]
    assert "-Fqdn sbc.contoso.com " not in out   # the base FQDN is not paired in hosting mode
    assert "must be a verified domain of the CARRIER tenant" in out
    assert "-OnlinePstnGatewayList customer2.sbc.contoso.com -Priority 1" in out
    assert "nftables" not in out


def test_firewall_rules_for_commercial_and_gcch(tmp_path):
    out = run(write_config(tmp_path), "--firewall-only")
    assert "define TEAMS_SIGNALLING = { 52.112.0.0/14, 52.120.0.0/14, 52.122.0.0/15 }" in out
    assert "define SBC_TLS_PORT = 5067" in out and "define SBC_PBX_PORT = 5060" in out
    assert "define PBX_HOSTS = { 10.0.0.10 }" in out
    assert "tcp dport $SBC_TLS_PORT ip saddr $TEAMS_SIGNALLING accept" in out
    assert "ip daddr 10.0.0.5 udp dport $SBC_PBX_PORT ip saddr $PBX_HOSTS accept" in out
    assert "define MEDIA_PORTS = 30000-40000" in out
    assert "New-CsOnlinePSTNGateway" not in out
    gcch = run(write_config(tmp_path, cloud="gcch"), "--firewall-only", "--media-ports", "20000-29999")
    assert "define TEAMS_SIGNALLING = { 52.127.88.0/21 }" in gcch
    assert "define MEDIA_PORTS = 20000-29999" in gcch


def test_http01_port_stays_open_only_with_http01(tmp_path):
    path = write_config(tmp_path)   # no acme section: http-01 on 0.0.0.0:80
    assert "        tcp dport 80 accept" in run(path, "--firewall-only")
    data = yaml.safe_load(path.read_text())
    data["acme"] = {"challenge": "dns-01", "http01_listen": None, "rfc2136": {
        "server": "127.0.0.1", "key_name": "k.", "key_secret": "c2VjcmV0c2VjcmV0"}}
    path.write_text(yaml.safe_dump(data))
    assert "dport 80" not in run(path, "--firewall-only")


def test_firewall_installs_the_file_the_boot_unit_loads(tmp_path):
    """--firewall writes the table and loads it with nft; here into a file of the test and
    with nft's check only failing on a broken table (loading for real: test_booted_systemd)."""
    path = write_config(tmp_path)
    bad = subprocess.run([sys.executable, "-m", "teamsbc.teams_setup", "-c", str(path), "--firewall",
                          "--firewall-file", str(tmp_path / "fw.nft"), "--media-ports", "9-1"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and not (tmp_path / "fw.nft").exists(), bad.stdout + bad.stderr


def test_tenant_pbx_hosts_are_allowed_too(tmp_path):
    config = cfg.load(write_config(tmp_path, tenants={"c1.sbc.contoso.com": {"pbx": "10.0.1.10:5060"}}))
    assert "define PBX_HOSTS = { 10.0.0.10, 10.0.1.10 }" in teams_setup.nftables(config)


@pytest.mark.skipif(not shutil.which("nft"), reason="nft (nftables) not installed")
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_nft_accepts_the_generated_rules(tmp_path, transport):
    path = write_config(tmp_path, tenants={"c1.sbc.contoso.com": {"pbx": "10.0.1.10:5060"}})
    data = yaml.safe_load(path.read_text())
    data["pbx"]["transport"] = transport
    path.write_text(yaml.safe_dump(data))
    rules = tmp_path / "teamsbc.nft"
    rules.write_text(run(path, "--firewall-only"))
    r = subprocess.run(["nft", "-c", "-f", str(rules)], capture_output=True, text=True, timeout=30)
    if r.returncode != 0 and "Operation not permitted" in r.stderr:
        pytest.skip("nft -c needs CAP_NET_ADMIN here")
    assert r.returncode == 0, r.stderr


def test_bad_config_exits_2(tmp_path):
    (tmp_path / "bad.yaml").write_text("sbc: {fqdn: 10.0.0.1}\n")
    r = subprocess.run([sys.executable, "-m", "teamsbc.teams_setup", "-c", str(tmp_path / "bad.yaml")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "sbc.fqdn" in r.stderr
