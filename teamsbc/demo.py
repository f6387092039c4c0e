"""`teamsbc demo`: the whole thing working on loopback, in one command, in a few seconds.

It generates a lab PKI in a temporary directory, starts the SBC in this process
(`teamsbc.app.serve` with a generated config on free loopback ports), the lab's simulated Teams
(mutual TLS with a "Teams" certificate from the lab CA; UPPER CASE header names, its edge
proxy in Record-Route, an api-du host as Contact, SRTP offers, like the real one) and the lab's
simulated PBX (SIP over UDP on 127.0.0.2 when available), then places one call each way
(INVITE, 100, 180, 200, ACK, BYE, 200) and prints the SIP ladder of each leg with the headers
that matter: Request-URI, Via, Contact, Record-Route, Route, X-MS-SBC and the SDP m= line.

Exit code 0 when both calls completed, 1 otherwise. The peers are teamsbc.lab's (the ones the
tests talk to); this module only places the calls and draws the ladders.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import re
import shutil
import socket
import ssl
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .lab.pbx import NoAnswer, PbxUa
from .lab.teams import Answer, NoMessage, TeamsProxy
from .sip.errors import ParseError
from .sip.message import Message, Request, Response, parse_message

DEMO_FQDN = "sbc.demo.teamsbc.test"
TEAMS_PROXIES = ["sip.pstnhub.microsoft.com", "sip2.pstnhub.microsoft.com", "sip3.pstnhub.microsoft.com"]
EDGE = "sip-du-a-us.pstnhub.microsoft.com"
WAIT = 5.0          # every wait for a message is bounded by this
TOTAL = 30.0        # and the whole demo by this
RING = 0.1          # seconds both callees ring before they answer (the ladder shows it)
SHOWN = ("via", "contact", "record-route", "route", "x-ms-sbc")
log = logging.getLogger("teamsbc.demo")


class DemoError(Exception):
    pass


# ============================================================================ the recording
@dataclass
class Wire:
    at: float
    leg: str          # "teams" | "pbx"
    to_sbc: bool
    msg: Message


class Tape:
    """Every message both simulated peers sent and received, in order (their taps)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.wires: list[Wire] = []

    def tap(self, leg: str):
        def add(sent: bool, data: bytes) -> None:
            try:
                msg = parse_message(data)
            except ParseError:
                return
            self.wires.append(Wire(time.monotonic() - self.t0, leg, sent, msg))
        return add


# ============================================================================ printing
def _short(value: str) -> str:
    """Long opaque parameters shortened for the eye (x-tsbc-c carries the PBX Contact)."""
    value = re.sub(r"(x-tsbc-c=)([A-Za-z0-9_-]{10})[A-Za-z0-9_-]+", r"\1\2...", value)
    return re.sub(r"(branch=z9hG4bK[-.]?)([0-9a-fA-F.-]{8})[0-9a-fA-F.-]+", r"\1\2...", value)


def ladder(tape: Tape, call_id: str, leg: str) -> list[str]:
    left, right = ("PBX", "SBC") if leg == "pbx" else ("SBC", "Teams")
    out = []
    for w in tape.wires:
        if w.leg != leg or w.msg.call_id != call_id:
            continue
        from_left = (leg == "pbx") == w.to_sbc  # pbx leg: PBX->SBC is to_sbc; teams leg: SBC->Teams is not
        arrow = f"{left} ------> {right}" if from_left else f"{left} <------ {right}"
        m = w.msg
        first = f"{m.method} {m.uri}" if isinstance(m, Request) else \
            f"SIP/2.0 {m.status} {m.reason}  ({m.cseq.method})" if isinstance(m, Response) else "?"
        out.append(f"  {w.at * 1000:6.0f} ms  {arrow}  {_short(first)}")
        pad = " " * 13
        for name in SHOWN:
            for k, v in m.headers:
                if k.lower() == name:
                    out.append(f"{pad}{k}: {_short(v)}")
        mline = next((x for x in m.body.decode(errors="replace").split("\r\n") if x.startswith("m=")), None)
        if mline:
            proto = mline.split()[2] if len(mline.split()) > 2 else "?"
            out.append(f"{pad}SDP {mline}   [{proto}{', SRTP' if 'SAVP' in proto else ', plain RTP'}]")
    return out


# ============================================================================ the demo
def _free_port(kind: int, host: str = "127.0.0.1") -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        other = socket.SOCK_DGRAM if kind == socket.SOCK_STREAM else socket.SOCK_STREAM
        try:
            with socket.socket(socket.AF_INET, other) as s2:
                s2.bind((host, port))
            return port
        except OSError:
            continue
    raise DemoError("no free loopback port")


def _pbx_host() -> str:
    """127.0.0.2 makes the PBX side visibly another host (Linux routes all of 127/8 to lo)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.2", 0))
        return "127.0.0.2"
    except OSError:
        return "127.0.0.1"


async def call_from_pbx(pbx: PbxUa, to: str, from_: str) -> dict:
    """The PBX calls through the SBC, the call is ACKed, talks a moment, the PBX hangs up."""
    call = await pbx.invite(to, from_, timeout=WAIT)
    if call.final is None or call.final.status != 200:
        raise DemoError(f"the Teams-bound call from the PBX was answered "
                        f"SIP/2.0 {call.status} {call.final.reason if call.final else ''}")
    await asyncio.sleep(0.3)
    bye = await call.bye(timeout=WAIT)
    return {"call_id": call.call_id, "invite": call.status, "bye": bye.status}


async def call_from_teams(teams: TeamsProxy, to: str, from_: str) -> dict:
    """Teams calls the PBX through the SBC on its own connection, the same way."""
    call = await teams.invite(to, from_, timeout=WAIT)
    final = call.final.sip if call.final else None
    if not isinstance(final, Response) or final.status != 200:
        raise DemoError(f"the PBX-bound call from Teams was answered "
                        f"SIP/2.0 {call.status} {final.reason if final else ''}")
    await asyncio.sleep(0.3)
    bye = (await call.bye(timeout=WAIT)).sip
    return {"call_id": call.call_id, "invite": call.status, "bye": bye.status if isinstance(bye, Response) else None}


def tls_lines(teams: TeamsProxy) -> list[str]:
    return [f"{'connection the SBC opened' if c.direction == 'inbound' else 'connection Teams opened'}: "
            f"{c.tls_version} {c.cipher}, the SBC presented {', '.join(c.peer_names)}"
            for c in teams.connections]


async def run(out=print, verbose: bool = False) -> int:
    from . import config as cfg
    from .app import serve
    from .labpki import ensure_lab_pki

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="teamsbc-demo-") as tmp:
        pki = ensure_lab_pki(Path(tmp) / "pki", DEMO_FQDN, TEAMS_PROXIES + [EDGE])
        tape = Tape()
        pbx_host = _pbx_host()
        sbc_tls, sbc_udp = _free_port(socket.SOCK_STREAM), _free_port(socket.SOCK_DGRAM)
        # what Teams speaks: TLS 1.2 (reference section 2)
        teams = TeamsProxy(pki.teams_fullchain, pki.teams_key, pki.ca_cert, sbc_fqdn=DEMO_FQDN,
                           sbc_port=sbc_tls, tls_max=ssl.TLSVersion.TLSv1_2, tap=tape.tap("teams"))
        teams.default_answer = Answer(ring=RING)
        teams_port = await teams.listen(0)
        pbx = PbxUa(pbx_host, 0, sbc=("127.0.0.1", sbc_udp), transport="udp", tap=tape.tap("pbx"), ring=RING)
        await pbx.start()
        data = {
            "sbc": {"fqdn": DEMO_FQDN},
            "teams": {"listen": f"127.0.0.1:{sbc_tls}", "certificate": str(pki.sbc_fullchain),
                      "private_key": str(pki.sbc_key), "trusted_ca": str(pki.ca_cert),
                      "proxies": TEAMS_PROXIES,
                      "resolve": {n: f"127.0.0.1:{teams_port}" for n in TEAMS_PROXIES + [EDGE]},
                      "options_interval": 0},
            "pbx": {"listen": f"127.0.0.1:{sbc_udp}", "transport": "udp", "address": str(pbx.me),
                    "options_interval": 0},
            "numbers": {"country_code": "44"},
        }
        config = cfg.from_dict(data, source="<teamsbc demo>", base=Path(tmp))
        out("teamsbc demo: everything on loopback, in this process")
        out(f"  SBC    {DEMO_FQDN}: Teams side TLS 127.0.0.1:{sbc_tls}, PBX side UDP 127.0.0.1:{sbc_udp}")
        out(f"  Teams  simulated sip/sip2/sip3 + edge {EDGE} at 127.0.0.1:{teams_port} (teams.resolve)")
        out(f"  PBX    simulated UDP trunk at {pbx.me}; numbers.country_code 44")
        out(f"  PKI    lab CA + SBC and \"Teams\" certificates in {pki.directory} (deleted at exit)")
        rtpengine = shutil.which("rtpengine")
        out("  media  " + (f"rtpengine found at {rtpengine}: with media.rtpengine set the SBC anchors media "
                           "(SRTP/SDES toward Teams, plain RTP toward the PBX); this demo shows signalling only"
                           if rtpengine else "signalling only (rtpengine is not installed: SDP passes unchanged)"))
        out("")
        stop, ready = asyncio.Event(), asyncio.Event()
        server = asyncio.get_running_loop().create_task(serve(config, ready=ready, stop=stop))
        results: list[tuple[str, str, dict | None, str | None]] = []
        try:
            waiter = asyncio.get_running_loop().create_task(ready.wait())
            await asyncio.wait({waiter, server}, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
            if not ready.is_set():
                waiter.cancel()
                why = repr(server.exception()) if server.done() else f"not ready within {WAIT:g}s"
                raise DemoError(f"the SBC did not start: {why}")
            for title, place in (
                    ("Call 1: PBX -> SBC -> Teams (the PBX dials 020 7946 0123; Teams gets +442079460123)",
                     lambda: call_from_pbx(pbx, "02079460123", "01632960001")),
                    ("Call 2: Teams -> SBC -> PBX (a Teams user calls the PBX extension's number)",
                     lambda: call_from_teams(teams, "+441632960001", "+12065550123"))):
                try:
                    res = await place()
                    results.append((title, res["call_id"], res, None))
                except (DemoError, NoMessage, NoAnswer, OSError, ssl.SSLError, asyncio.TimeoutError) as e:
                    results.append((title, "", None, str(e) or type(e).__name__))
                await asyncio.sleep(0.1)
        except DemoError as e:
            out(f"FAILED: {e}")
        finally:
            stop.set()
            try:
                await asyncio.wait_for(server, 8)
            except (asyncio.TimeoutError, Exception) as e:  # noqa: BLE001 - report, never hang
                if not isinstance(e, asyncio.TimeoutError):
                    out(f"SBC stopped with an error: {e!r}")
                server.cancel()
            await teams.close()
            await pbx.close()

        failed = 0
        for title, call_id, res, err in results:
            out("=" * 100)
            out(title)
            if err:
                failed += 1
                out(f"  FAILED: {err}")
                continue
            out(f"  Call-ID {call_id}: INVITE {res['invite']}, BYE {res['bye']}")
            for leg, name in (("pbx", "PBX leg (UDP)"), ("teams", "Teams leg (TLS, mutual)")):
                out("")
                out(f"  -- {name} " + "-" * (80 - len(name)))
                out("\n".join(ladder(tape, call_id, leg)))
            out("")
        if not results:
            failed = 1
            out("the SBC did not start")
        out("=" * 100)
        out("TLS on the Teams leg:")
        for line in dict.fromkeys(tls_lines(teams)):
            out(f"  {line}")
        out("")
        out("What to notice:")
        out("  * Toward Teams every Contact, Record-Route and Via carries the SBC FQDN, never an IP (Teams")
        out("    answers 403 to an IP). The PBX's Contact travels inside x-tsbc-c, so Teams' in-dialog")
        out("    requests find the PBX without state in the SBC.")
        out("  * Two Record-Route entries (RFC 5658, r2=on): the FQDN one faces Teams, the IP one the PBX.")
        out("  * Teams' header names arrive in UPPER CASE; its Contact (api-du...:443) is not a SIP listener,")
        out("    so the ACK and BYE follow the Route set through Teams' edge proxy.")
        out("  * X-MS-SBC appears on the Teams leg only; numbers become +E.164 toward Teams.")
        out("  * The SDP m= line: without rtpengine the SDP passes unchanged, so Teams sees the PBX's plain")
        out("    RTP/AVP (real Teams answers 488) and the PBX sees Teams' RTP/SAVP. With media.rtpengine the")
        out("    SBC rewrites both: RTP/SAVP + a=crypto toward Teams, RTP/AVP toward the PBX.")
        out("")
        elapsed = time.monotonic() - started
        out(f"{len(results) - failed} of 2 calls completed in {elapsed:.1f} s" +
            ("" if not failed else " -- see FAILED above"))
        return 0 if not failed and len(results) == 2 else 1


def cmd_demo(args: argparse.Namespace) -> int:
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                            format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")
    else:
        logging.getLogger("teamsbc").setLevel(logging.ERROR)
    try:
        return asyncio.run(asyncio.wait_for(run(verbose=args.verbose), TOTAL))
    except asyncio.TimeoutError:
        print(f"teamsbc demo: did not finish within {TOTAL:g}s", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def register(subparsers) -> argparse.ArgumentParser:
    """Add `teamsbc demo` to teamsbc's argparse sub-parsers."""
    p = subparsers.add_parser("demo", help="show the SBC working on loopback: one call each way, "
                                            "with the SIP ladder of both legs",
                              description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("-v", "--verbose", action="store_true", help="also show the SBC's debug log on stderr")
    p.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="teamsbc")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["demo", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
