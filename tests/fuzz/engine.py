"""Mutation fuzzing of the whole pipeline: `build(config)` -> `Proxy.receive()` from both legs,
answers fed back, timers run on a fake clock (issue 6: "no crash, no hang, no leak").

    fz = Fuzzer(seed=1)
    report = fz.run(3000)          # Report: messages, exceptions, slowest, tables, memory
    report.check()                 # raises AssertionError with the first failing input

Inputs: the seeds in tests/fuzz/seeds/ (Teams-like messages with UPPER CASE headers, PBX
messages), the RFC 4475 torture messages in tests/fixtures/rfc4475/, and the regression
inputs in tests/fuzz/corpus/ (any file there is fed unmutated first). Each message is
mutated by 1-4 operators (byte flips, truncation, header duplication/deletion, CRLF/NUL/
quote insertion, huge values, splicing of two messages, case and number games, our own Route
entries) and sent from the PBX (UDP), from Teams (TLS, through a StreamFramer like the shell)
or from a stranger. Requests the proxy relays are answered (100/180/183/200/4xx/5xx, sometimes
mutated, sometimes twice), transports fail at random, and the clock moves on.
"""
from __future__ import annotations

import random
import time
import traceback
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path

from teamsbc import config as cfg
from teamsbc.app import build
from teamsbc.decisions import PBX, TEAMS, Destination, MediaCall, Source
from teamsbc.sip.errors import ParseError
from teamsbc.sip.message import KEEPALIVE_PING, Request, StreamFramer, parse_message

HERE = Path(__file__).resolve().parent
SEEDS = sorted((HERE / "seeds").glob("*.sip"))
RFC4475 = sorted((HERE.parent / "fixtures" / "rfc4475").glob("*.sip"))
CORPUS = sorted(p for p in (HERE / "corpus").glob("*") if p.is_file() and p.suffix != ".md")

PBX_SRC = Source(PBX, "udp", ("10.0.0.10", 5060))
STRANGER_SRC = Source(PBX, "udp", ("192.0.2.66", 5060))

OUR_ROUTES = (b"<sip:sbc.example.com:5061;transport=tls;lr;r2=on>", b"<sip:10.0.0.5:5060;lr;r2=on>")
INJECT = (b"\r\n", b"\n", b"\r", b"\0", b'"', b"\\", b"<", b">", b",", b";", b":", b"%00", b"%", b" ",
          b"\t", b"\r\n ", b"\r\n\r\n", b"\xff", b"\xc3\x28", b"@", b"[", b"]", b"=", b"?")
NUMBERS = (b"0", b"-1", b"4294967296", b"2147483648", b"99999999999999999999", b"1e9", b"00000000001",
           b"256", b"65536", b"\xd9\xa3")
METHODS = (b"INVITE", b"ACK", b"BYE", b"CANCEL", b"OPTIONS", b"REFER", b"NOTIFY", b"INFO",
           b"UPDATE", b"PRACK", b"REGISTER", b"MESSAGE", b"SUBSCRIBE", b"X", b"invite")


def fuzz_config(tmp: Path) -> cfg.Config:
    for n in ("c.pem", "k.pem"):
        (tmp / n).write_text("x")
    return cfg.from_dict({
        "sbc": {"fqdn": "sbc.example.com"},
        "teams": {"listen": "0.0.0.0:5061", "certificate": "c.pem", "private_key": "k.pem",
                  "tenants": {"alpha.sbc.example.com": {"pbx": "10.0.1.10:5060", "numbers": ["+4420"]}}},
        "pbx": {"listen": "10.0.0.5:5060", "transport": "udp", "address": "10.0.0.10:5060"},
        "numbers": {"country_code": "44"},
        # strangers are parsed (403 policy) so the fuzz reaches the whole pipeline from them too
        "security": {"unknown_source": "403", "call_idle_timeout": 60, "report_interval": 30},
    }, base=tmp)


class Mutator:
    def __init__(self, rng: random.Random, pool: list[bytes]):
        self.rng, self.pool = rng, pool
        self.ops = [self.flip, self.truncate, self.dup_header, self.del_header, self.inject,
                    self.huge_value, self.splice, self.case, self.number, self.content_length,
                    self.our_route, self.method, self.to_tag, self.params, self.swap_lines]

    def mutate(self, data: bytes) -> bytes:
        for _ in range(self.rng.choice((1, 1, 1, 2, 2, 3, 4))):
            data = self.rng.choice(self.ops)(data)
        return data

    # --- helpers
    def _lines(self, data: bytes) -> tuple[list[bytes], bytes]:
        head, sep, body = data.partition(b"\r\n\r\n")
        return head.split(b"\r\n"), (sep + body)

    def _pos(self, data: bytes) -> int:
        return self.rng.randrange(len(data) + 1)

    # --- operators
    def flip(self, d: bytes) -> bytes:
        if not d:
            return d
        b = bytearray(d)
        for _ in range(self.rng.randint(1, 8)):
            b[self.rng.randrange(len(b))] = self.rng.randrange(256)
        return bytes(b)

    def truncate(self, d: bytes) -> bytes:
        return d[: self._pos(d)]

    def dup_header(self, d: bytes) -> bytes:
        lines, rest = self._lines(d)
        if len(lines) > 1:
            i = self.rng.randrange(1, len(lines))
            for _ in range(self.rng.choice((1, 1, 2, 50, 200))):
                lines.insert(i, lines[i])
        return b"\r\n".join(lines) + rest

    def del_header(self, d: bytes) -> bytes:
        lines, rest = self._lines(d)
        if len(lines) > 1:
            del lines[self.rng.randrange(1, len(lines))]
        return b"\r\n".join(lines) + rest

    def inject(self, d: bytes) -> bytes:
        p = self._pos(d)
        return d[:p] + self.rng.choice(INJECT) * self.rng.choice((1, 1, 2, 3, 100)) + d[p:]

    def huge_value(self, d: bytes) -> bytes:
        lines, rest = self._lines(d)
        if len(lines) > 1:
            i = self.rng.randrange(1, len(lines))
            name = lines[i].split(b":", 1)[0]
            filler = self.rng.choice((b"A", b";x=y", b",<sip:a@b>", b"%41", b" ", b'\\"'))
            lines[i] = name + b": " + filler * self.rng.choice((100, 2000, 8200, 17000, 70000))
        return b"\r\n".join(lines) + rest

    def splice(self, d: bytes) -> bytes:
        other = self.rng.choice(self.pool)
        return d[: self._pos(d)] + other[self.rng.randrange(len(other) + 1):]

    def case(self, d: bytes) -> bytes:
        lines, rest = self._lines(d)
        f = self.rng.choice((bytes.upper, bytes.lower, bytes.swapcase))
        return b"\r\n".join(f(l.split(b":", 1)[0]) + (b":" + l.split(b":", 1)[1] if b":" in l else b"")
                            if i else l for i, l in enumerate(lines)) + rest

    def number(self, d: bytes) -> bytes:
        digits = [i for i, c in enumerate(d) if 48 <= c <= 57]
        if not digits:
            return d
        i = self.rng.choice(digits)
        j = i
        while j < len(d) and 48 <= d[j] <= 57:
            j += 1
        return d[:i] + self.rng.choice(NUMBERS) + d[j:]

    def content_length(self, d: bytes) -> bytes:
        lines, rest = self._lines(d)
        lines = [l for l in lines if not l.lower().startswith((b"content-length", b"l:"))]
        v = self.rng.choice((b"0", b"1", b"5", b"100000", b"-5", b"abc", str(len(rest)).encode(), b""))
        lines.insert(self.rng.randrange(1, len(lines) + 1), self.rng.choice((b"Content-Length: ", b"l:", b"CONTENT-LENGTH:")) + v)
        return b"\r\n".join(lines) + rest

    def our_route(self, d: bytes) -> bytes:
        lines, rest = self._lines(d)
        route = b", ".join(self.rng.sample(OUR_ROUTES + (b"<sip:evil.example.net;lr>", b"<sip:198.51.100.7:5060;lr>"),
                                           self.rng.randint(1, 3)))
        lines.insert(min(1, len(lines)), self.rng.choice((b"Route: ", b"ROUTE: ", b"Record-Route: ")) + route)
        return b"\r\n".join(lines) + rest

    def method(self, d: bytes) -> bytes:
        lines, rest = self._lines(d)
        parts = lines[0].split(b" ", 1)
        m = self.rng.choice(METHODS)
        if lines[0].startswith(b"SIP/2.0"):
            lines[0] = b"SIP/2.0 " + self.rng.choice((b"100 Trying", b"180 Ringing", b"200 OK", b"302 Moved",
                                                     b"487 Terminated", b"503 Busy", b"699 X", b"999 Y"))
        elif len(parts) == 2:
            lines[0] = m + b" " + parts[1]
        for i, l in enumerate(lines):
            if l.lower().startswith(b"cseq") and self.rng.random() < 0.7:
                lines[i] = b"CSeq: " + str(self.rng.randint(1, 9)).encode() + b" " + m
        return b"\r\n".join(lines) + rest

    def to_tag(self, d: bytes) -> bytes:
        lines, rest = self._lines(d)
        for i, l in enumerate(lines):
            if l.lower().startswith((b"to:", b"t:")):
                lines[i] = l.split(b";tag=")[0] if b";tag=" in l else l + b";tag=fz" + str(self.rng.randrange(99)).encode()
        return b"\r\n".join(lines) + rest

    def params(self, d: bytes) -> bytes:
        p = d.find(b";", self.rng.randrange(len(d) + 1))
        if p < 0:
            return d
        extra = self.rng.choice((b";lr", b";r2=on", b";transport=tcp", b";transport=sctp", b";maddr=198.51.100.9",
                                 b";x-tsbc-c=Zm9v", b";x-tsbc-c=!!!", b";received=1.2.3.4", b";rport=0",
                                 b";branch=", b";user=phone", b";tag=", b";;;", b"?Route=%3Csip:x%3E"))
        return d[:p] + extra + d[p:]

    def swap_lines(self, d: bytes) -> bytes:
        lines, rest = self._lines(d)
        if len(lines) > 2:
            i, j = self.rng.randrange(1, len(lines)), self.rng.randrange(1, len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        return b"\r\n".join(lines) + rest


@dataclass
class Failure:
    where: str
    data: bytes
    trace: str


@dataclass
class Report:
    messages: int = 0
    receives: int = 0
    seconds: float = 0.0
    slowest: float = 0.0
    slowest_input: bytes = b""
    failures: list[Failure] = field(default_factory=list)
    tables_after: dict = field(default_factory=dict)
    memory: list[tuple[int, int]] = field(default_factory=list)   # (messages, bytes traced)
    guard: dict = field(default_factory=dict)

    def check(self, *, max_growth: int = 4 << 20, max_slowest: float = 1.0) -> None:
        if self.failures:
            f = self.failures[0]
            raise AssertionError(f"{len(self.failures)} exceptions escaped; first in {f.where} for input "
                                 f"{f.data[:600]!r}\n{f.trace}")
        assert self.slowest < max_slowest, f"one receive took {self.slowest:.3f}s: {self.slowest_input[:300]!r}"
        leftover = {k: v for k, v in self.tables_after.items() if v}
        assert not leftover, f"tables not empty after all timers ran out: {leftover}"
        if len(self.memory) >= 2:
            growth = self.memory[-1][1] - self.memory[0][1]
            assert growth < max_growth, f"memory grew by {growth} bytes: {self.memory}"


class Fuzzer:
    def __init__(self, seed: int = 1, tmp: Path | None = None, config: cfg.Config | None = None):
        import tempfile
        self.rng = random.Random(seed)
        self.tmp = tmp or Path(tempfile.mkdtemp(prefix="teamsbc-fuzz-"))
        self.config = config or fuzz_config(self.tmp)
        self.router, self.proxy, self.guard = build(self.config, 0.0)
        self.now = 0.0
        self.pool = [p.read_bytes() for p in SEEDS + RFC4475]
        self.regressions = [p.read_bytes() for p in CORPUS]
        self.mut = Mutator(self.rng, self.pool)
        self.framer = StreamFramer()
        self.teams_src = Source(TEAMS, "tls", ("52.114.14.70", 41234), conn=object())
        self.report = Report()
        self.last_input = b""

    # ------------------------------------------------------------------ driving
    def _call(self, where: str, data: bytes, fn, *args):
        t0 = time.perf_counter()
        try:
            out = fn(*args)
        except Exception:
            self.report.failures.append(Failure(where, data, traceback.format_exc()))
            return []
        dt = time.perf_counter() - t0
        self.report.receives += 1
        if dt > self.report.slowest:
            self.report.slowest, self.report.slowest_input = dt, data
        return out

    def deliver(self, data: bytes, leg: str) -> list:
        if leg == TEAMS:
            try:
                frames = self.framer.feed(data if self.rng.random() < 0.3 else data + b"")
            except ParseError:
                self.framer = StreamFramer()  # the shell closes the connection
                self.teams_src = Source(TEAMS, "tls", ("52.114.14.70", self.rng.randrange(1024, 65535)), conn=object())
                return []
            out = []
            for f in frames:
                if f is not KEEPALIVE_PING:
                    out += self._call("receive(teams)", f, self.proxy.receive, f, self.teams_src, self.now)
            return out
        src = STRANGER_SRC if leg == "stranger" else PBX_SRC
        return self._call(f"receive({leg})", data, self.proxy.receive, data, src, self.now)

    def answer(self, sends: list, depth: int = 0) -> None:
        """Play the far ends: answer what the proxy relayed or originated."""
        if depth > 3:
            return
        for s in sends:
            if isinstance(s, MediaCall):
                continue
            # no request over pbx.max_udp_size toward a UDP PBX (an answer to the PBX's own
            # request echoes its Vias, RFC 3261 8.2.6.2, and may be as large as that request)
            limit = self.proxy.policy.udp_limit
            if (isinstance(s.to, Destination) and s.to.leg == PBX and s.to.transport == "udp" and limit
                    and len(s.data) > limit):
                self.report.failures.append(Failure("datagram over pbx.max_udp_size", self.last_input,
                                                    f"{len(s.data)} bytes: {s.data[:300]!r}"))
            if not isinstance(s.to, Destination):
                continue
            if s.token is not None and self.rng.random() < 0.04:
                out = self._call("transport_failed", s.data, self.proxy.transport_failed, s.token, self.now, "fuzz")
                self.answer(out, depth + 1)
                continue
            try:
                req = parse_message(s.data)
            except ParseError as e:
                self.report.failures.append(Failure("proxy sent unparsable", self.last_input,
                                                    f"{e.reason}: {s.data[:800]!r}"))
                continue
            if not isinstance(req, Request) or req.method == "ACK" or self.rng.random() < 0.15:
                continue  # silence: timers will act
            for status in self.rng.choice(((100,), (180,), (180, 200), (183, 200), (200,), (486,), (503,),
                                           (408,), (603,), (100, 180, 487), (200, 200))):
                resp = build_response(req, status, self.rng)
                if self.rng.random() < 0.1:
                    resp = self.mut.mutate(resp)
                leg = TEAMS if s.to.leg == TEAMS else PBX
                if leg == TEAMS:
                    out = self._call("receive(teams answer)", resp, self.proxy.receive, resp,
                                     Source(TEAMS, "tls", ("52.114.75.24", 5061), conn=object()), self.now)
                else:
                    out = self._call("receive(pbx answer)", resp, self.proxy.receive, resp,
                                     Source(PBX, "udp", (s.to.host, s.to.port)), self.now)
                self.answer(out, depth + 1)

    def tick(self, dt: float) -> None:
        self.now += dt
        while True:
            due = self.proxy.next_timer()
            if due is None or due > self.now:
                break
            out = self._call("handle_timer", b"", self.proxy.handle_timer, self.now)
            self.answer(out)

    def one(self) -> None:
        r = self.rng.random()
        if self.regressions and self.report.messages < len(self.regressions):
            data = self.regressions[self.report.messages]
        else:
            data = self.mut.mutate(self.rng.choice(self.pool)) if r < 0.93 else self.rng.choice(self.pool)
        leg = self.rng.choices((PBX, TEAMS, "stranger"), (45, 45, 10))[0]
        self.report.messages += 1
        self.last_input = data
        self.answer(self.deliver(data, leg))
        self.tick(self.rng.choice((0.0, 0.001, 0.01, 0.05, 0.3, 2.0)))

    def run(self, count: int, *, memory_every: int = 0, progress=None) -> Report:
        t0 = time.perf_counter()
        tracing = memory_every > 0
        if tracing:
            tracemalloc.start()
        try:
            for i in range(count):
                self.one()
                if tracing and (i + 1) % memory_every == 0:
                    self.drain()
                    self.report.memory.append((i + 1, tracemalloc.get_traced_memory()[0]))
                    if progress:
                        progress(self.report)
            self.drain()
            if tracing:
                self.report.memory.append((count, tracemalloc.get_traced_memory()[0]))
        finally:
            if tracing:
                tracemalloc.stop()
        self.report.seconds = time.perf_counter() - t0
        self.report.tables_after = self.tables()
        self.report.guard = dict(self.proxy.gate.counters)
        return self.report

    def drain(self) -> None:
        """Let every timer run out (transactions end, failover deadlines pass)."""
        for _ in range(400):
            due = self.proxy.next_timer()
            pending = [t for t in self.proxy.t.timer_objects() if t is not self.proxy.gate]
            if not pending:
                break
            self.tick(max(1.0, (due or self.now) - self.now + 0.001))
        self.framer = StreamFramer()

    def tables(self) -> dict:
        p = self.proxy
        return {"server": len(p.t.server), "client": len(p.t.client), "relays": sum(1 for _ in p.t.relays()),
                "media_ops": len(p._media_ops),
                "timers": sum(1 for t in p.t.timer_objects() if t is not p.gate and not t.terminated)}


def build_response(req: Request, status: int, rng: random.Random) -> bytes:
    reasons = {100: "Trying", 180: "Ringing", 183: "Session Progress", 200: "OK", 408: "Request Timeout",
               486: "Busy Here", 487: "Request Terminated", 503: "Service Unavailable", 603: "Decline"}
    h = req.headers
    lines = [f"SIP/2.0 {status} {reasons[status]}"]
    lines += [f"Via: {v}" for v in h.get_all("via")]
    if status > 100 and req.method == "INVITE":
        lines += ["Record-Route: <sip:sip-du-a-eu.pstnhub.microsoft.com:5061;transport=tls;lr>"]
        lines += [f"Record-Route: {r}" for r in h.get_all("record-route")]
    to = h.get("to") or ""
    if status > 100 and ";tag=" not in to:
        to += f";tag=fz{rng.randrange(1000)}"
    lines += [f"From: {h.get('from')}", f"To: {to}", f"Call-ID: {req.call_id}", f"CSeq: {h.get('cseq')}"]
    if status in (180, 183, 200):
        lines.append(rng.choice(("Contact: <sip:api-du-a-euwe.pstnhub.microsoft.com:443;x-i=abc;transport=tls>",
                                 "Contact: <sip:+15551230000@10.0.0.10:5060>", "Contact: *")))
    if status == 503:
        lines.append(f"Retry-After: {rng.choice(('0', '30', '99999999', 'x'))}")
    body = b"v=0\r\no=- 1 1 IN IP4 52.114.1.1\r\ns=-\r\nc=IN IP4 52.114.1.1\r\nt=0 0\r\nm=audio 5000 RTP/SAVP 0\r\n" \
        if status in (183, 200) and req.method == "INVITE" else b""
    lines += [f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode() + body
