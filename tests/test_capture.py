"""teamsbc.capture: HEPv3 packets (decoded here by an independent decoder written from the
HEP3 specification), the HEP observer over a real UDP socket, pcap traces (read back by an
independent reader, checksums verified; tshark when installed), trace rules."""
from __future__ import annotations

import ipaddress
import socket
import struct
import subprocess
import time
from pathlib import Path


from teamsbc.addresses import HostPort
from teamsbc.capture.hep import HepObserver, encode_hep3
from teamsbc.capture.settings import parse_capture
from teamsbc.settings import SettingsReader
from teamsbc.capture.traces import CallTracer, call_id_of, fake_udp_packet

# --------------------------------------------------------------------------- HEP3 decoder

CHUNK_NAMES = {1: "family", 2: "ip_proto", 3: "src4", 4: "dst4", 5: "src6", 6: "dst6", 7: "sport",
               8: "dport", 9: "ts_sec", 10: "ts_usec", 11: "proto_type", 12: "agent_id",
               13: "keepalive", 14: "auth", 15: "payload", 16: "compressed", 17: "correlation"}
UINT_SIZES = {"family": 1, "ip_proto": 1, "sport": 2, "dport": 2, "ts_sec": 4, "ts_usec": 4,
              "proto_type": 1, "agent_id": 4}


def decode_hep3(data: bytes) -> dict:
    """HEP3 packet -> {"family", "ip_proto", "src": (ip, port), "dst": (ip, port), "ts",
    "proto_type", "agent_id", "auth", "payload", "chunks": [type ids in order]}."""
    assert data[:4] == b"HEP3", data[:4]
    (total,) = struct.unpack("!H", data[4:6])
    assert total == len(data), (total, len(data))
    out: dict = {"chunks": []}
    i = 6
    while i < total:
        vendor, ctype, length = struct.unpack("!HHH", data[i:i + 6])
        assert vendor == 0 and length >= 6 and i + length <= total, (vendor, ctype, length)
        value = data[i + 6:i + length]
        name = CHUNK_NAMES.get(ctype, f"chunk{ctype}")
        assert name not in out, f"chunk {name} twice"
        if name in UINT_SIZES:
            assert len(value) == UINT_SIZES[name], (name, len(value))
            out[name] = int.from_bytes(value, "big")
        elif name in ("src4", "dst4"):
            assert len(value) == 4
            out[name] = socket.inet_ntop(socket.AF_INET, value)
        elif name in ("src6", "dst6"):
            assert len(value) == 16
            out[name] = socket.inet_ntop(socket.AF_INET6, value)
        else:
            out[name] = value
        out["chunks"].append(ctype)
        i += length
    v = "4" if out["family"] == 2 else "6"
    assert out["family"] in (2, 10)
    out["src"] = (out[f"src{v}"], out["sport"])
    out["dst"] = (out[f"dst{v}"], out["dport"])
    out["ts"] = out["ts_sec"] + out["ts_usec"] / 1e6
    return out


INVITE = (b"INVITE sip:+442071234567@sip.pstnhub.microsoft.com:5061;transport=tls SIP/2.0\r\n"
          b"Via: SIP/2.0/TLS sbc.example.com:5061;branch=z9hG4bK1\r\n"
          b"Call-ID: abc-123@10.0.0.10\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")


def test_hep3_ipv4_with_auth():
    pkt = encode_hep3(src=("10.0.0.5", 5061), dst=("52.114.14.70", 5061), payload=INVITE,
                      ts=1714564800.123456, ip_proto=22, agent_id=2001, password="s3cret")
    h = decode_hep3(pkt)
    assert h["family"] == 2 and h["ip_proto"] == 22 and h["proto_type"] == 1 and h["agent_id"] == 2001
    assert h["src"] == ("10.0.0.5", 5061) and h["dst"] == ("52.114.14.70", 5061)
    assert h["ts_sec"] == 1714564800 and abs(h["ts_usec"] - 123456) <= 1
    assert h["auth"] == b"s3cret" and h["payload"] == INVITE
    assert h["chunks"][:2] == [1, 2] and h["chunks"][-1] == 15   # payload last


def test_hep3_ipv6_and_mixed_families():
    h = decode_hep3(encode_hep3(src=("2001:db8::5", 5060), dst=("2001:db8::10", 5080), payload=b"x",
                                ts=1.5, ip_proto=17))
    assert h["family"] == 10 and h["src"] == ("2001:db8::5", 5060) and h["dst"] == ("2001:db8::10", 5080)
    assert "auth" not in h and 14 not in h["chunks"]
    h = decode_hep3(encode_hep3(src=("10.0.0.5", 5060), dst=("2001:db8::10", 5080), payload=b"x", ts=1.0))
    assert h["family"] == 10 and h["src"] == ("::ffff:10.0.0.5", 5060)


def test_hep_observer_sends_each_message_over_udp():
    col = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    col.bind(("127.0.0.1", 0))
    col.settimeout(5)
    obs = HepObserver(col.getsockname(), agent_id=7, password=None)
    try:
        t = time.time()
        obs.sip("in", "pbx", "udp", ("10.0.0.5", 5060), ("10.0.0.10", 5062), INVITE, t)
        obs.sip("out", "teams", "tls", ("10.0.0.5", 40001), ("52.114.14.70", 5061), INVITE, t)
        obs.sip("out", "pbx", "tcp", ("10.0.0.5", 40002), ("10.0.0.10", 5060), INVITE, t)
        got = [decode_hep3(col.recv(65535)) for _ in range(3)]
    finally:
        obs.close()
        col.close()
    assert [(g["src"], g["dst"], g["ip_proto"]) for g in got] == [
        (("10.0.0.10", 5062), ("10.0.0.5", 5060), 17),        # in: remote -> local
        (("10.0.0.5", 40001), ("52.114.14.70", 5061), 22),    # out: local -> remote, TLS
        (("10.0.0.5", 40002), ("10.0.0.10", 5060), 6)]
    assert all(g["payload"] == INVITE and g["agent_id"] == 7 and abs(g["ts"] - t) < 1e-5 for g in got)
    assert obs.stats == {"sent": 3, "dropped": 0, "errors": 0}


def test_hep_observer_never_raises():
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))
    addr = dead.getsockname()
    dead.close()                                  # nothing listens: ICMP unreachable
    obs = HepObserver(addr)
    for _ in range(3):
        obs.sip("in", "pbx", "udp", ("10.0.0.5", 5060), ("10.0.0.10", 5062), INVITE, time.time())
    obs.sip("in", "pbx", "udp", ("not-an-ip", 5060), ("10.0.0.10", 5062), INVITE, time.time())
    obs.sip("in", "pbx", "udp", ("10.0.0.5", 5060), ("10.0.0.10", 5062), b"x" * 70000, time.time())
    obs.close()
    obs.sip("in", "pbx", "udp", ("10.0.0.5", 5060), ("10.0.0.10", 5062), INVITE, time.time())
    assert obs.stats["sent"] == 3 and obs.stats["dropped"] == 1 and obs.stats["errors"] == 2


# --------------------------------------------------------------------------- pcap

def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = 0
    for (w,) in struct.iter_unpack("!H", data):
        total += w
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return total


def read_pcap(path: Path) -> list[dict]:
    """Independent reader: global header (LINKTYPE_RAW), records, IPv4/IPv6 + UDP, checksums."""
    data = path.read_bytes()
    magic, vmaj, vmin, _, _, snaplen, linktype = struct.unpack("<IHHiIII", data[:24])
    assert (magic, vmaj, vmin, linktype) == (0xA1B2C3D4, 2, 4, 101)
    out, i = [], 24
    while i < len(data):
        sec, usec, incl, orig = struct.unpack("<IIII", data[i:i + 16])
        pkt = data[i + 16:i + 16 + incl]
        assert incl == orig == len(pkt) and incl <= snaplen
        i += 16 + incl
        if pkt[0] >> 4 == 4:
            ihl = (pkt[0] & 15) * 4
            total, proto = struct.unpack("!H", pkt[2:4])[0], pkt[9]
            assert total == len(pkt) and proto == 17 and checksum(pkt[:ihl]) == 0xFFFF
            src, dst = socket.inet_ntop(socket.AF_INET, pkt[12:16]), socket.inet_ntop(socket.AF_INET, pkt[16:20])
            udp = pkt[ihl:]
        else:
            plen, nxt = struct.unpack("!HB", pkt[4:7])
            assert pkt[0] >> 4 == 6 and nxt == 17 and plen == len(pkt) - 40
            src, dst = socket.inet_ntop(socket.AF_INET6, pkt[8:24]), socket.inet_ntop(socket.AF_INET6, pkt[24:40])
            udp = pkt[40:]
            pseudo = pkt[8:40] + struct.pack("!I3xB", len(udp), 17)
            assert checksum(pseudo + udp) == 0xFFFF
        sport, dport, ulen, _ = struct.unpack("!HHHH", udp[:8])
        assert ulen == len(udp)
        out.append({"ts": sec + usec / 1e6, "src": (src, sport), "dst": (dst, dport), "payload": udp[8:]})
    return out


def test_fake_udp_packets_have_valid_headers(tmp_path):
    p4 = fake_udp_packet(("10.0.0.5", 5061), ("52.114.14.70", 5061), INVITE)
    assert checksum(p4[:20]) == 0xFFFF and p4[28:] == INVITE
    p6 = fake_udp_packet(("2001:db8::5", 5061), ("2001:db8::7", 5061), INVITE)
    assert len(p6) == 48 + len(INVITE)


def test_trace_by_call_id_writes_pcap_and_text(tmp_path):
    tracer = CallTracer(tmp_path / "traces", "both", linger=0.0)
    tracer.sip("in", "pbx", "udp", ("10.0.0.5", 5060), ("10.0.0.10", 5060), INVITE, 100.0)  # no rule yet
    rule = tracer.trace_call("abc-123@10.0.0.10")
    other = INVITE.replace(b"abc-123", b"zzz")
    tracer.sip("in", "pbx", "udp", ("10.0.0.5", 5060), ("10.0.0.10", 5060), INVITE, 101.0)
    tracer.sip("out", "teams", "tls", ("10.0.0.5", 40001), ("2001:db8::70", 5061), INVITE, 101.5)
    tracer.sip("in", "pbx", "udp", ("10.0.0.5", 5060), ("10.0.0.10", 5060), other, 101.6)
    tracer.call_ended("abc-123@10.0.0.10", "teams", 102.0)
    tracer.sip("in", "teams", "tls", ("10.0.0.5", 40001), ("2001:db8::70", 5061), INVITE, 102.1)
    tracer.sip("in", "pbx", "udp", ("10.0.0.5", 5060), ("10.0.0.10", 5060), other, time.time())  # housekeeping
    assert tracer.active == {} and tracer.rules == {}     # closed after the linger; rule done
    pcap = [Path(f) for f in rule.files if f.endswith(".pcap")][0]
    text = [Path(f) for f in rule.files if f.endswith(".txt")][0]
    assert pcap.stat().st_mode & 0o777 == 0o600 and (tmp_path / "traces").stat().st_mode & 0o777 == 0o700
    pkts = read_pcap(pcap)
    assert [(p["src"], p["dst"]) for p in pkts] == [
        (("10.0.0.10", 5060), ("10.0.0.5", 5060)),
        (("::ffff:10.0.0.5", 40001), ("2001:db8::70", 5061)),
        (("2001:db8::70", 5061), ("::ffff:10.0.0.5", 40001))]
    assert all(p["payload"] == INVITE for p in pkts) and pkts[0]["ts"] == 101.0
    body = text.read_text()
    assert body.count("INVITE sip:+442071234567") == 3 and "zzz" not in body
    assert "pbx in udp 10.0.0.10:5060 -> 10.0.0.5:5060" in body


def test_trace_by_number_includes_the_message_before_call_started(tmp_path):
    tracer = CallTracer(tmp_path, "pcap", linger=0.0)
    rule = tracer.trace_number("+4420", calls=1)
    # the shell reports the INVITE before the proxy decides it is a new call
    tracer.sip("in", "pbx", "udp", ("10.0.0.5", 5060), ("10.0.0.10", 5060), INVITE, 1.0)
    tracer.call_started("abc-123@10.0.0.10", "pbx->teams", None, "+441632960123", "+442071234567", 1.0)
    tracer.sip("out", "teams", "tls", ("10.0.0.5", 40001), ("52.114.14.70", 5061), INVITE, 1.1)
    assert tracer.rules[rule.id].calls_left == 0           # its one call is taken (rule shown until it ends)
    tracer.call_started("other@x", "pbx->teams", None, "+441632960123", "+442071234567", 2.0)
    assert set(tracer.active) == {"abc-123@10.0.0.10"}
    tracer.call_ended("abc-123@10.0.0.10", "pbx", 3.0)
    tracer.sip("in", "pbx", "udp", ("10.0.0.5", 5060), ("10.0.0.10", 5060), b"OPTIONS x SIP/2.0\r\ni: z\r\n\r\n", 4.0)
    assert tracer.rules == {} and tracer.active == {}
    tracer.close()
    [pcap] = rule.files
    assert len(read_pcap(Path(pcap))) == 2


def test_tracer_rules_expire_and_cost_nothing_when_idle(tmp_path):
    tracer = CallTracer(tmp_path)
    assert tracer.sip("in", "pbx", "udp", ("10.0.0.5", 5060), ("10.0.0.10", 5060), INVITE, 1.0) is None
    r = tracer.trace_number("4420", ttl=1)
    assert [d["id"] for d in tracer.describe()] == [r.id]
    tracer._housekeeping(time.time() + 5)
    assert tracer.rules == {} and not tracer._on
    r2 = tracer.trace_call("x")
    assert tracer.remove(r2.id) and not tracer.remove(r2.id) and not tracer._on
    assert call_id_of(b"OPTIONS sip:a SIP/2.0\r\ni: short-form@x\r\n\r\n") == "short-form@x"
    assert call_id_of(b"garbage") is None


def test_wireshark_reads_the_trace_as_sip(tmp_path):
    tracer = CallTracer(tmp_path, "pcap")
    rule = tracer.trace_call("abc-123@10.0.0.10")
    tracer.sip("in", "pbx", "udp", ("10.0.0.5", 5060), ("10.0.0.10", 5060), INVITE, 1.0)
    tracer.close()
    out = subprocess.run(["tshark", "-r", rule.files[0], "-T", "fields", "-e", "sip.Call-ID"],
                         capture_output=True, timeout=60, text=True)
    assert out.stdout.strip() == "abc-123@10.0.0.10", out.stderr


def test_settings(tmp_path):
    r = SettingsReader("teamsbc.yaml", tmp_path)
    s = parse_capture(r, None)
    assert r.errors == [] and s.hep is None and s.agent_id == 2001 and s.trace_dir == tmp_path / "traces"
    s = parse_capture(r, {"hep": "[2001:db8::9]:9060", "agent_id": 7, "password": "pw",
                          "trace_dir": "/var/lib/teamsbc/traces", "trace_format": "text"})
    assert r.errors == [] and s.hep == HostPort("2001:db8::9", 9060) and s.password == "pw" and s.trace_format == "text"
    parse_capture(r, {"hep": "nowhere", "agent_id": -1, "trace_format": "mp3", "x": 1})
    assert [e.split(": ")[1] for e in r.errors] == ["capture.x", "capture.hep", "capture.agent_id", "capture.trace_format"]
    assert ipaddress.ip_address("::ffff:10.0.0.5").ipv4_mapped == ipaddress.ip_address("10.0.0.5")


# --------------------------------------------------------------------------- credentials (issue 12)
RESPONSE = "6629fae49393a05397450978507c4ef1"
AUTHED = INVITE.replace(b"\r\nContent-Length", (
    '\r\nProxy-Authorization: Digest username="pbx-trunk", realm="sbc.example.com", nonce="1.ab", '
    f'uri="sip:+442071234567@10.0.0.5", response="{RESPONSE}", algorithm=MD5, qop=auth, nc=00000001, '
    'cnonce="abc"\r\nAUTHORIZATION: Basic cGJ4OnNlY3JldA==\r\nContent-Length').encode(), 1)


def test_traces_mask_digest_responses_and_basic_credentials(tmp_path):
    """A trace keeps who authenticated (user, realm, nonce) but never the Digest response (an
    offline password guess with the nonce beside it) nor Basic credentials."""
    assert RESPONSE.encode() in AUTHED and b"cGJ4OnNlY3JldA==" in AUTHED
    tracer = CallTracer(tmp_path / "traces", "both", linger=0.0)
    rule = tracer.trace_call("abc-123@10.0.0.10")
    tracer.sip("in", "pbx", "udp", ("10.0.0.5", 5060), ("10.0.0.10", 5060), AUTHED, 101.0)
    tracer.close()
    for f in rule.files:
        data = Path(f).read_bytes()
        assert RESPONSE.encode() not in data and b"cGJ4OnNlY3JldA==" not in data, f
        assert b'username="pbx-trunk", realm="sbc.example.com"' in data and b'response="***"' in data
        assert b"AUTHORIZATION: Basic ***" in data
    [pkt] = read_pcap(Path(next(f for f in rule.files if f.endswith(".pcap"))))
    assert pkt["payload"].endswith(INVITE.split(b"\r\n\r\n", 1)[1])   # the body untouched


def test_hep_masks_credentials_too():
    col = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    col.bind(("127.0.0.1", 0))
    col.settimeout(5)
    obs = HepObserver(col.getsockname())
    try:
        obs.sip("in", "pbx", "udp", ("10.0.0.5", 5060), ("10.0.0.10", 5062), AUTHED, time.time())
        got = decode_hep3(col.recv(65535))
    finally:
        obs.close()
        col.close()
    assert RESPONSE.encode() not in got["payload"] and b'response="***"' in got["payload"]
