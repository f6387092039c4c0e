"""Run sipp with the record-route-aware scenarios of tests/sipp/ and read what happened.

    uas = Sipp("uas.xml", workdir=tmp_path, local_port=p_uas, transport="t1", calls=3,
               procs=procs).start()                      # background server, port bound
    uac = Sipp("uac.xml", workdir=tmp_path, local_port=p_uac, remote=("127.0.0.1", p_uas),
               transport="t1", calls=3, procs=procs).run()   # runs to the end
    res = uas.wait()
    assert uac.ok and res.ok, uac.describe() + res.describe()
    invite = res.received("INVITE")[0]
    assert invite.header("record-route") ...

Every run gets its own control port (-cp) and media ports (-mp) so parallel runs do not
collide, is bounded three ways (-m, -timeout/-recv_timeout inside sipp, an outer timeout that
stops the process by PID), and traces messages, errors, statistics and the final screen to
files in its own directory.

sipp facts this relies on (checked on sipp 3.6.1):
- ``-t t1 -p P`` listens on P *and* binds its outgoing connection to P; a request arriving on
  any of its connections is matched to its call by Call-ID. Its response, however, goes out
  on the call's own socket (the connection sipp opened / accepted first), not necessarily the
  one the request came on.
- a ``-key`` value may contain CRLF: optional header lines are passed as CRLF-prefixed values
  appended to an always-present line (an empty ``-key`` on a line of its own would leave an
  empty line, i.e. end the headers). Empty ``[routes]``/``[last_X:]``/``[$var]`` lines are
  dropped by sipp.
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .ports import free_port, free_port_range
from .procs import ManagedProcess, ProcessManager, wait_port

__all__ = [
    "SCENARIO_DIR",
    "Sipp",
    "SippResult",
    "SipMessage",
    "parse_sip_message",
    "parse_message_log",
    "run_sipp",
    "REASONS",
    "TEAMS_EDGE_RR",
    "teams_caller",
    "teams_callee",
]

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "sipp"
LOOPBACK = "127.0.0.1"

REASONS = {
    400: "Bad Request", 403: "Forbidden", 404: "Not Found", 408: "Request Timeout",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist", 486: "Busy Here",
    487: "Request Terminated", 488: "Not Acceptable Here", 500: "Server Internal Error",
    503: "Service Unavailable", 504: "Server Time-out", 600: "Busy Everywhere",
    603: "Decline", 604: "Does Not Exist Anywhere", 606: "Not Acceptable",
}

# What real Teams puts in Record-Route (its edge proxy); Teams-side scenarios add it.
TEAMS_EDGE_RR = "Record-Route: <sip:sip-du-a-us.pstnhub.microsoft.com:5061;transport=tls;lr>"


def teams_caller(
    *,
    sbc_fqdn: str = "sbc.example.com",
    sbc_port: int = 5061,
    callee: str = "+14255550100",
    caller: str = "+12065550123",
    **key_overrides: object,
) -> dict:
    """Sipp(...) keyword arguments that make a UAC scenario look like Teams calling the SBC:
    R-URI sip:+E164@sbc:port;user=phone;transport=tls, From/To with +E164 and user=phone,
    Via TLS, Contact at an api-du-* host (not a SIP listener), Teams' own Record-Route.
    ``key_overrides`` replace single keys (e.g. ``code=603``)."""
    return {
        "keys": {
            "ruri_user": callee,
            "ruri_host": f"{sbc_fqdn}:{sbc_port}",
            "ruri_params": ";user=phone;transport=tls",
            "from_user": caller,
            "from_host": "sip.pstnhub.microsoft.com;user=phone",
            "to_user": callee,
            "to_host": f"{sbc_fqdn}:{sbc_port};user=phone",
            "contact_uri": "sip:api-du-a-usea.pstnhub.microsoft.com:443;x-i=0a1b2c3d;x-c=4e5f",
            "via_transport": "TLS",
            **key_overrides,
        },
        "extra_headers": [TEAMS_EDGE_RR],
    }


def teams_callee(**key_overrides: object) -> dict:
    """Sipp(...) keyword arguments that make a UAS scenario look like Teams answering:
    Contact at an api-du-* host, Teams' own Record-Route on top of the copied ones, Via TLS."""
    return {
        "keys": {
            "contact_uri": "sip:api-du-b-euwe.pstnhub.microsoft.com:443;x-i=9f8e7d6c;x-c=5b4a",
            "via_transport": "TLS",
            **key_overrides,
        },
        "extra_headers": [TEAMS_EDGE_RR],
    }


# RFC 3261 7.3.3 + common extensions: compact header names -> full names
_COMPACT = {
    "v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact", "l": "content-length",
    "c": "content-type", "k": "supported", "e": "content-encoding", "s": "subject",
    "o": "event", "r": "refer-to", "b": "referred-by", "x": "session-expires",
    "u": "allow-events", "a": "accept-contact", "j": "reject-contact", "d": "request-disposition",
    "y": "identity",
}
# Headers whose comma-separated values are separate list elements.
_LIST_HEADERS = {
    "via", "route", "record-route", "contact", "allow", "supported", "require",
    "proxy-require", "unsupported", "allow-events", "accept", "path",
}
_counter = itertools.count(1)


def sipp_binary() -> str:
    path = shutil.which("sipp")
    if not path:
        raise FileNotFoundError("sipp not found (apt-get install sip-tester)")
    return path


# --------------------------------------------------------------------------- messages


def _split_list(value: str) -> list[str]:
    """Split a header value on commas outside <...> and "..."."""
    out, cur, depth, quoted, esc = [], [], 0, False, False
    for ch in value:
        if quoted:
            cur.append(ch)
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                quoted = False
            continue
        if ch == '"':
            quoted = True
        elif ch == "<":
            depth += 1
        elif ch == ">":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    tail = "".join(cur).strip()
    if tail or out:
        out.append(tail)
    return [v for v in out if v]


@dataclass
class SipMessage:
    """One SIP message from sipp's message trace."""

    start_line: str
    headers: dict[str, list[str]]  # lower-case full header name -> values, one per header line
    body: str
    raw: str
    direction: str = ""  # "received" / "sent"
    transport: str = ""  # "UDP" / "TCP"
    timestamp: str = ""

    # -- convenience
    @property
    def is_request(self) -> bool:
        return not self.start_line.startswith("SIP/2.0")

    @property
    def method(self) -> str | None:
        """Request method, or the CSeq method of a response."""
        if self.is_request:
            return self.start_line.split(" ", 1)[0]
        cseq = self.header("cseq")
        return cseq.split()[-1] if cseq else None

    @property
    def status(self) -> int | None:
        if self.is_request:
            return None
        try:
            return int(self.start_line.split()[1])
        except (IndexError, ValueError):
            return None

    @property
    def request_uri(self) -> str | None:
        return self.start_line.split()[1] if self.is_request else None

    @property
    def call_id(self) -> str | None:
        return self.header("call-id")

    def header(self, name: str) -> str | None:
        """First value of a header (case-insensitive, compact forms accepted), or None."""
        vals = self.headers.get(_norm_name(name))
        return vals[0] if vals else None

    def values(self, name: str) -> list[str]:
        """All values of a header: every header line, and for list headers (Via, Route,
        Record-Route, Contact, Allow, ...) every comma-separated element, in order."""
        key = _norm_name(name)
        vals = self.headers.get(key, [])
        if key in _LIST_HEADERS:
            return [v for line in vals for v in _split_list(line)]
        return list(vals)

    def __repr__(self) -> str:
        return f"<SipMessage {self.direction} {self.transport} {self.start_line!r}>"


def _norm_name(name: str) -> str:
    n = name.strip().rstrip(":").lower()
    return _COMPACT.get(n, n)


_HEAD_END = re.compile(r"\r?\n\r?\n")


def _split_message(text: str) -> tuple[str, str]:
    """(head, body) of one message as logged: the body is cut to Content-Length when given."""
    text = text.lstrip("\r\n")
    m = _HEAD_END.search(text)
    if not m:
        return text.rstrip("\r\n"), ""
    head, body = text[: m.start()], text[m.end():]
    clen = re.search(r"(?im)^(?:content-length|l)[ \t]*:[ \t]*(\d+)", head)
    if clen:
        body = body.encode()[: int(clen.group(1))].decode(errors="replace")
    else:
        body = body.rstrip("\r\n")
    return head, body


def parse_sip_message(text: str) -> tuple[str, dict[str, list[str]], str]:
    """Parse one SIP message: (start line, {lower-case header name: [values]}, body).

    Header names are case-insensitive (Teams sends them upper-case) and compact forms are
    expanded; folded lines are joined; the body is exactly Content-Length bytes when given.
    """
    head, body = _split_message(text)
    lines = re.split(r"\r?\n", head)
    start = lines[0].strip()
    headers: dict[str, list[str]] = {}
    last: str | None = None
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t" and last is not None:  # folded continuation
            headers[last][-1] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        if not colon:
            continue
        key = _norm_name(name)
        headers.setdefault(key, []).append(value.strip())
        last = key
    return start, headers, body


_BLOCK_RE = re.compile(
    r"^-{20,} (?P<ts>\S+ \S+)\r?\n"
    r"(?P<transport>\w+) message (?P<dir>sent|received) (?:\[\d+\] bytes ?|\(\d+ bytes\)):\r?\n\r?\n",
    re.M,
)


def parse_message_log(text: str) -> list[SipMessage]:
    """Parse a sipp ``-trace_msg`` file into messages, in the order sipp logged them."""
    out = []
    matches = list(_BLOCK_RE.finditer(text))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        chunk = text[m.end() : end]
        start, headers, body = parse_sip_message(chunk)
        if not start:
            continue
        head, _ = _split_message(chunk)
        out.append(
            SipMessage(
                start_line=start, headers=headers, body=body, raw=head + "\r\n\r\n" + body,
                direction=m["dir"], transport=m["transport"], timestamp=m["ts"],
            )
        )
    return out


# --------------------------------------------------------------------------- results


def _read(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        # newline="": keep CRLF as sipp wrote it (bodies are cut by Content-Length in bytes)
        with open(path, encoding="utf-8", errors="replace", newline="") as fh:
            return fh.read()
    except FileNotFoundError:
        return ""


@dataclass
class SippResult:
    name: str
    argv: list[str]
    returncode: int | None
    timed_out: bool  # the harness had to stop sipp (outer timeout reached, or stop() called)
    expected_calls: int
    successful: int | None
    failed: int | None
    workdir: Path
    message_file: Path
    error_file: Path
    stat_file: Path
    screen_file: Path
    log_file: Path
    stdout_file: Path
    stderr_file: Path
    _messages: list[SipMessage] | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """sipp exited 0 on its own, and every expected call succeeded."""
        return (
            not self.timed_out
            and self.returncode == 0
            and (self.failed or 0) == 0
            and (self.successful or 0) >= self.expected_calls
        )

    # -- messages
    def messages(self) -> list[SipMessage]:
        if self._messages is None:
            self._messages = parse_message_log(_read(self.message_file))
        return self._messages

    def messages_received(self) -> list[SipMessage]:
        """Every SIP message sipp received (retransmissions included), in order."""
        return [m for m in self.messages() if m.direction == "received"]

    def messages_sent(self) -> list[SipMessage]:
        return [m for m in self.messages() if m.direction == "sent"]

    def received(self, what: str | int) -> list[SipMessage]:
        """Received requests of a method (``"INVITE"``) or responses of a status (``180``)."""
        if isinstance(what, int):
            return [m for m in self.messages_received() if m.status == what]
        return [m for m in self.messages_received() if m.is_request and m.method == what.upper()]

    # -- text
    def errors_text(self) -> str:
        return _read(self.error_file)

    def log_text(self) -> str:
        return _read(self.log_file)

    def screen_text(self) -> str:
        return _read(self.screen_file)

    def describe(self, tail: int = 3000) -> str:
        parts = [
            f"=== sipp {self.name}: rc={self.returncode} timed_out={self.timed_out} "
            f"successful={self.successful} failed={self.failed} expected={self.expected_calls}",
            "argv: " + " ".join(repr(a) if (" " in a or not a) else a for a in self.argv),
            f"files in {self.workdir}",
        ]
        for label, text in (
            ("errors", self.errors_text()),
            ("log", self.log_text()),
            ("stderr", _read(self.stderr_file)),
            ("screen", self.screen_text()),
            ("messages", _read(self.message_file)),
        ):
            if text.strip():
                parts.append(f"--- {label} (last {tail} chars) ---\n{text[-tail:]}")
        return "\n".join(parts) + "\n"


def _parse_stat_file(path: Path) -> tuple[int | None, int | None]:
    text = _read(path).strip()
    if not text:
        return None, None
    lines = [l for l in text.splitlines() if l.strip()]
    header = lines[0].split(";")
    try:
        si, fi = header.index("SuccessfulCall(C)"), header.index("FailedCall(C)")
    except ValueError:
        return None, None
    for line in reversed(lines[1:]):
        cols = line.split(";")
        if len(cols) > max(si, fi):
            try:
                return int(cols[si]), int(cols[fi])
            except ValueError:
                continue
    return None, None


_SCREEN_RE = {
    "successful": re.compile(r"^\s*Successful call\s*\|\s*\d+\s*\|\s*(\d+)", re.M),
    "failed": re.compile(r"^\s*Failed call\s*\|\s*\d+\s*\|\s*(\d+)", re.M),
}


def _parse_screen(text: str) -> tuple[int | None, int | None]:
    vals = []
    for key in ("successful", "failed"):
        found = _SCREEN_RE[key].findall(text)
        vals.append(int(found[-1]) if found else None)
    return vals[0], vals[1]


# --------------------------------------------------------------------------- runner


class Sipp:
    """One sipp process running a scenario from tests/sipp (or any path)."""

    def __init__(
        self,
        scenario: str | Path,
        *,
        workdir: Path,
        local_port: int,
        remote: str | tuple[str, int] | None = None,
        transport: str = "u1",
        calls: int = 1,
        rate: float = 10.0,
        rate_period_ms: int = 1000,
        limit: int | None = None,
        duration_ms: int = 100,
        timeout_s: float = 30.0,
        recv_timeout_ms: int = 10_000,
        outer_timeout_s: float | None = None,
        keys: Mapping[str, object] | None = None,
        sets: Mapping[str, object] | None = None,
        extra_headers: Iterable[str] = (),
        sdp_lines: Iterable[str] = (),
        default_behaviors: str | None = "all,-abortunexp",
        extra_args: Sequence[str] = (),
        local_ip: str = LOOPBACK,
        procs: ProcessManager | None = None,
        name: str | None = None,
    ) -> None:
        """
        scenario        file name in tests/sipp/ (``"uac.xml"``) or a path.
        remote          ``"host:port"`` or ``(host, port)`` of the peer; None for a server (UAS).
        transport       sipp -t: ``u1`` (UDP, one socket) or ``t1`` (TCP, one connection).
        calls/rate      -m / -r (per rate_period_ms, -rp); limit: -l (concurrent calls).
        duration_ms     -d: length of the scenarios' <pause/> (call hold time).
        timeout_s       sipp -timeout (with -timeout_error); recv_timeout_ms: -recv_timeout.
        outer_timeout_s hard bound on the process; default timeout_s + 15.
        keys            -key NAME VALUE, over the defaults (see ``default_keys``).
        sets            -set NAME VALUE (scenario <Global> variables).
        extra_headers   header lines added to the INVITE (UAC) or 18x/200 (UAS); each is
                        passed CRLF-prefixed in the ``extra_hdr`` key.
        sdp_lines       extra SDP lines (``sdp_extra`` key).
        """
        self.scenario = Path(scenario) if Path(scenario).is_absolute() else SCENARIO_DIR / scenario
        if not self.scenario.is_file():
            raise FileNotFoundError(self.scenario)
        if transport not in ("u1", "un", "t1", "tn"):
            raise ValueError(f"unsupported sipp transport {transport!r} (no TLS in Debian's sipp)")
        self.n = next(_counter)
        self.name = name or f"sipp{self.n}-{self.scenario.stem}"
        self.dir = Path(workdir) / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.local_ip = local_ip
        self.local_port = int(local_port)
        if isinstance(remote, tuple):
            remote = f"{remote[0]}:{remote[1]}"
        self.remote = remote
        self.transport = transport
        self.proto = "tcp" if transport.startswith("t") else "udp"
        self.calls = int(calls)
        self.timeout_s = timeout_s
        self.outer_timeout_s = outer_timeout_s if outer_timeout_s is not None else timeout_s + 15
        self.procs = procs
        self.process: ManagedProcess | None = None
        self._result: SippResult | None = None
        self._timed_out = False

        # per-run ports: sipp binds media (-mp, +2) and a UDP control socket (-cp)
        self.media_port = free_port_range(4)
        self.control_port = free_port("udp")

        self.message_file = self.dir / "messages.log"
        self.error_file = self.dir / "errors.log"
        self.stat_file = self.dir / "stat.csv"
        self.screen_file = self.dir / "screen.log"
        self.log_file = self.dir / "log.log"

        merged = self.default_keys()
        for k, v in (keys or {}).items():
            merged[k] = "" if v is None else str(v)
        if "code" in (keys or {}) and "reason" not in (keys or {}):
            merged["reason"] = REASONS.get(int(merged["code"]), "Rejected")
        extra = "".join("\r\n" + h for h in extra_headers)
        merged["extra_hdr"] = merged.get("extra_hdr", "") + extra
        merged["sdp_extra"] = merged.get("sdp_extra", "") + "".join("\r\n" + l for l in sdp_lines)
        self.keys = merged

        argv = [sipp_binary()]
        if remote:
            argv.append(remote)
        argv += [
            "-sf", str(self.scenario),
            "-t", transport,
            "-i", local_ip,
            "-p", str(self.local_port),
            "-mi", local_ip,
            "-mp", str(self.media_port),
            "-cp", str(self.control_port),
            "-m", str(self.calls),
            "-r", f"{rate:g}",
            "-rp", f"{rate_period_ms}",
            "-d", str(duration_ms),
            "-timeout", f"{timeout_s:g}s",
            "-timeout_error",
            "-recv_timeout", str(recv_timeout_ms),
            "-nostdin",
            "-trace_msg", "-message_file", str(self.message_file),
            "-trace_err", "-error_file", str(self.error_file),
            "-trace_stat", "-stf", str(self.stat_file), "-fd", "1",
            "-trace_screen", "-screen_file", str(self.screen_file),
            "-trace_logs", "-log_file", str(self.log_file),
        ]
        if limit is not None:
            argv += ["-l", str(limit)]
        if default_behaviors:
            argv += ["-default_behaviors", default_behaviors]
        for k, v in self.keys.items():
            argv += ["-key", k, v]
        for k, v in (sets or {}).items():
            argv += ["-set", k, str(v)]
        argv += [str(a) for a in extra_args]
        self.argv = argv

    # -- keys
    def default_keys(self) -> dict[str, str]:
        """Defaults for every key the scenarios use (a scenario ignores keys it does not use)."""
        tp = "tcp" if self.proto == "tcp" else "udp"
        remote = self.remote or f"{self.local_ip}:{self.local_port}"
        callee, caller = "+14255550100", "+14255550199"
        user = caller if self.remote else callee
        return {
            "ruri_user": callee,
            "ruri_host": remote,
            "ruri_params": "",
            "from_user": caller,
            "from_host": self.local_ip,
            "from_name": "",
            "to_user": callee,
            "to_host": remote,
            "contact_uri": f"sip:{user}@{self.local_ip}:{self.local_port};transport={tp}",
            "via_transport": tp.upper(),
            "extra_hdr": "",
            "media_ip": self.local_ip,
            "media_port": str(self.media_port),
            "sdp_extra": "",
            "code": "486",
            "reason": REASONS[486],
        }

    # -- lifecycle
    def start(self, timeout: float = 10.0) -> "Sipp":
        """Start in the background and wait until sipp has bound its local port."""
        if self.process is not None:
            raise RuntimeError("already started")
        (self.dir / "argv.txt").write_text("\n".join(self.argv) + "\n")
        if self.procs is not None:
            self.process = self.procs.start(self.name, self.argv, cwd=self.dir, logdir=self.dir)
        else:
            self.process = ManagedProcess(self.name, self.argv, self.dir, cwd=self.dir)
        try:
            wait_port(self.local_ip, self.local_port, self.proto, timeout=timeout, process=self.process)
        except Exception:
            # sipp may also have run to completion already (tiny client runs): fine
            if self.process.poll() is None:
                self.process.stop()
                raise
        return self

    def wait(self, timeout: float | None = None) -> SippResult:
        """Wait for sipp to finish (at most the outer timeout) and collect the result."""
        if self._result is not None:
            return self._result
        if self.process is None:
            raise RuntimeError("not started")
        try:
            self.process.wait(timeout=self.outer_timeout_s if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            self._timed_out = True
            self.process.stop()
        return self._collect()

    def run(self) -> SippResult:
        """Start and wait: a client (UAC) run to the end."""
        return self.start().wait()

    def stop(self) -> SippResult:
        """Stop now (SIGTERM, then SIGKILL after 5 s) and collect what there is."""
        if self.process is None:
            raise RuntimeError("not started")
        if self.process.poll() is None:
            self._timed_out = True
            self.process.stop()
        return self._collect()

    @property
    def result(self) -> SippResult | None:
        return self._result

    def _collect(self) -> SippResult:
        assert self.process is not None
        succ, fail = _parse_stat_file(self.stat_file)
        if succ is None:
            succ, fail = _parse_screen(_read(self.screen_file) or self.process.stdout_text())
        self._result = SippResult(
            name=self.name,
            argv=self.argv,
            returncode=self.process.returncode,
            timed_out=self._timed_out,
            expected_calls=self.calls,
            successful=succ,
            failed=fail,
            workdir=self.dir,
            message_file=self.message_file,
            error_file=self.error_file,
            stat_file=self.stat_file,
            screen_file=self.screen_file,
            log_file=self.log_file,
            stdout_file=self.process.stdout_path,
            stderr_file=self.process.stderr_path,
        )
        return self._result


def run_sipp(scenario: str | Path, **kwargs) -> SippResult:
    """``Sipp(scenario, **kwargs).run()``."""
    return Sipp(scenario, **kwargs).run()
