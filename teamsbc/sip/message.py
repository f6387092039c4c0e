"""SIP messages (RFC 3261 section 7): parse bytes into Request/Response, serialise them back.

Header values stay strings; structured views (Via, CSeq, addresses, URIs) are parsed on
demand by the helpers below, so a message that only passes through is parsed once and never
re-tokenised. Mandatory headers are checked at parse time so later layers can rely on them.
"""
from __future__ import annotations

import re
from typing import Iterator

from . import grammar as g
from .errors import ParseError
from .uri import NameAddr, SipUri, Via, parse_name_addr, parse_uri, parse_via, split_quoted

__all__ = [
    "Headers", "Request", "Response", "Message", "ParseError", "parse_message",
    "make_response", "StreamFramer", "KEEPALIVE_PING", "CSeq",
]


class Headers:
    """Ordered header fields. Entries are (lower-case name, name as written, value) tuples:
    immutable, so a copy for relaying is one list of the same tuples (no per-field copies),
    and a message held by a transaction costs one small tuple per field.

    List-valued headers in grammar.SPLIT_HEADERS hold one value per entry so the proxy can
    push/pop a single Via or Route without touching the others.

    Entries are tuples of strings, never lists: the cyclic garbage collector stops tracking
    such tuples after their first collection, so the thousands of header fields held by
    transactions in progress cost nothing in later collections (issue 12: a message carried
    ~35 tracked lists, and collections over ~400,000 of them stalled the event loop).
    """

    __slots__ = ("_h",)

    def __init__(self, entries: list[tuple[str, str, str]] | None = None):
        self._h: list[tuple[str, str, str]] = entries if entries is not None else []

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for _, name, value in self._h:
            yield name, value

    def __len__(self) -> int:
        return len(self._h)

    def copy(self) -> "Headers":
        return Headers(self._h[:])

    def get(self, lname: str) -> str | None:
        for e in self._h:
            if e[0] == lname:
                return e[2]
        return None

    def get_all(self, lname: str) -> list[str]:
        return [e[2] for e in self._h if e[0] == lname]

    def count(self, lname: str) -> int:
        return sum(1 for e in self._h if e[0] == lname)

    def __contains__(self, lname: str) -> bool:
        return any(e[0] == lname for e in self._h)

    def set(self, lname: str, value: str) -> None:
        """Replace the first field of that name (dropping the others) or append one."""
        h = self._h
        for i, e in enumerate(h):
            if e[0] == lname:
                h[i] = (lname, e[1], value)
                h[i + 1:] = [x for x in h[i + 1:] if x[0] != lname]
                return
        h.append((lname, g.canonical(lname), value))

    def set_first(self, lname: str, value: str) -> None:
        """Replace the value of the first field of that name, keeping the others (top Via)."""
        h = self._h
        for i, e in enumerate(h):
            if e[0] == lname:
                h[i] = (lname, e[1], value)
                return
        h.append((lname, g.canonical(lname), value))

    def add(self, lname: str, value: str) -> None:
        self._h.append((lname, g.canonical(lname), value))

    def add_first(self, lname: str, value: str) -> None:
        """Insert above the existing fields of that name (Via, Record-Route), or at the top."""
        for i, e in enumerate(self._h):
            if e[0] == lname:
                self._h.insert(i, (lname, e[1], value))
                return
        self._h.insert(0, (lname, g.canonical(lname), value))

    def pop_first(self, lname: str) -> str | None:
        for i, e in enumerate(self._h):
            if e[0] == lname:
                del self._h[i]
                return e[2]
        return None

    def remove(self, lname: str) -> int:
        before = len(self._h)
        self._h = [e for e in self._h if e[0] != lname]
        return before - len(self._h)

    def replace_all(self, lname: str, values: list[str]) -> None:
        """Set the list of values of a header, keeping its position."""
        pos = next((i for i, e in enumerate(self._h) if e[0] == lname), len(self._h))
        name = self._h[pos][1] if pos < len(self._h) else g.canonical(lname)
        rest = [e for e in self._h if e[0] != lname]
        pos = min(pos, len(rest))
        rest[pos:pos] = [(lname, name, v) for v in values]
        self._h = rest


class CSeq(tuple):
    __slots__ = ()

    @property
    def number(self) -> int:
        return self[0]

    @property
    def method(self) -> str:
        return self[1]


# CSeq = 1*DIGIT LWS Method (20.16); the number is range-checked in parse_cseq
_CSEQ_RE = re.compile(r"[ \t]*([0-9]+)[ \t]+(" + g.TOKEN + r")[ \t]*\Z")


class Message:
    """Headers and body. The structured views below parse a header once: each is kept with
    the very string it was parsed from and used again while the header still holds that
    string (an identity test, so a rewritten header is parsed afresh). The views are shared,
    not copied: treat them as read-only (copy before changing one)."""

    __slots__ = ("headers", "body", "_views")

    headers: Headers
    body: bytes
    _views: dict

    def _view(self, lname: str, parse, missing: str | None = None):
        v = self.headers.get(lname)
        if v is None:
            if missing is not None:
                raise ParseError(missing)
            v = ""
        seen = self._views.get(lname)
        if seen is not None and seen[0] is v:
            return seen[1]
        parsed = parse(v)
        self._views[lname] = (v, parsed)
        return parsed

    def set_first_viewed(self, lname: str, value: str, parsed: object) -> None:
        """Replace the first `lname` field with `value`, whose parsed form is `parsed`."""
        self.headers.set_first(lname, value)
        self._views[lname] = (value, parsed)

    def forget_views(self) -> None:
        """Drop what was parsed (a message kept only for the rest of its transaction)."""
        self._views = {}

    def share_views(self, other: "Message") -> None:
        """`other` has the same header strings (a copy being relayed): reuse what it parsed."""
        self._views = dict(other._views)

    # -- structured views of mandatory headers (validated at parse time) --
    @property
    def call_id(self) -> str:
        return self.headers.get("call-id") or ""

    @property
    def cseq(self) -> CSeq:
        return self._view("cseq", parse_cseq)

    @property
    def top_via(self) -> Via:
        return self._view("via", parse_via, "Missing Via")

    @property
    def from_addr(self) -> NameAddr:
        return self._view("from", parse_name_addr)

    @property
    def to_addr(self) -> NameAddr:
        return self._view("to", parse_name_addr)

    def _head_lines(self) -> list[str]:
        raise NotImplementedError

    def wire_size(self) -> int:
        """len(self.to_bytes()), without building the bytes."""
        n = len(_utf8(self._head_lines()[0])) + 2
        for lname, name, value in self.headers._h:
            if lname != "content-length":
                n += len(name) + len(_utf8(value)) + 4
        return n + len(f"Content-Length: {len(self.body)}") + 4 + len(self.body)

    def to_bytes(self) -> bytes:
        """Serialise. Content-Length is always written last and always true to the body."""
        lines = self._head_lines()
        for lname, name, value in self.headers._h:
            if lname != "content-length":
                lines.append(f"{name}: {value}")
        lines.append(f"Content-Length: {len(self.body)}")
        lines.append("")
        lines.append("")
        return "\r\n".join(lines).encode() + self.body


def _utf8(text: str) -> str | bytes:
    return text if text.isascii() else text.encode()


class Request(Message):
    __slots__ = ("method", "uri")

    def __init__(self, method: str, uri: str, headers: Headers | None = None, body: bytes = b""):
        self.method = method
        self.uri = uri
        self.headers = headers if headers is not None else Headers()
        self.body = body
        self._views = {}

    @property
    def ruri(self) -> SipUri:
        """The Request-URI parsed (shared, read-only: copy before changing it)."""
        seen = self._views.get(" uri")
        if seen is not None and seen[0] is self.uri:
            return seen[1]
        parsed = parse_uri(self.uri)
        self._views[" uri"] = (self.uri, parsed)
        return parsed

    def _head_lines(self) -> list[str]:
        return [f"{self.method} {self.uri} SIP/2.0"]

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


class Response(Message):
    __slots__ = ("status", "reason")

    def __init__(self, status: int, reason: str, headers: Headers | None = None, body: bytes = b""):
        self.status = status
        self.reason = reason
        self.headers = headers if headers is not None else Headers()
        self.body = body
        self._views = {}

    def _head_lines(self) -> list[str]:
        return [f"SIP/2.0 {self.status} {self.reason}"]

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


def parse_cseq(value: str) -> CSeq:
    m = _CSEQ_RE.match(value)
    if not m:
        raise ParseError("Bad CSeq")
    digits = m.group(1)
    # RFC 3261 8.1.1.5: < 2**31. Length first: int() of thousands of digits is slow, and
    # refused outright past 4300 digits (ValueError, not ParseError).
    if len(digits) > 10 or int(digits) >= 2 ** 31:
        raise ParseError("CSeq number too large")  # RFC 4475 3.1.2.4, 3.1.2.5
    return CSeq((int(digits), m.group(2)))


_CONTENT_LENGTH_RE = re.compile(r"[0-9]{1,10}\Z")      # values arrive stripped of SP/HTAB
_MAX_FORWARDS_RE = re.compile(r"0*([0-9]{1,3})\Z")     # 1*DIGIT, at most 255 (20.22)
# message-header = field-name HCOLON field-value; HCOLON = *( SP / HTAB ) ":" SWS (25.1).
# The value's trailing SP/HTAB is stripped after the match (a regex tail would backtrack).
_HEADER_LINE_RE = re.compile(r"(" + g.TOKEN + r")[ \t]*:[ \t]*(.*)", re.S)
_NAMES: dict[str, tuple[str, str]] = {}   # header name as written -> (it, lower case)
_MAX_NAMES = 512                          # a peer inventing names cannot grow it further
# The same, for every line of an unfolded head at once (MULTILINE: one match per line).
_FIELD_RE = re.compile(r"^(" + g.TOKEN + r")[ \t]*:[ \t]*(.*)", re.M)
# Headers parse_message looks at itself (first occurrence kept, duplicates refused for
# SINGLE_HEADERS), so one pass over the lines finds them all.
_TRACKED = g.SINGLE_HEADERS | frozenset(g.MANDATORY_HEADERS)
# grammar.CONTROL_RE less LF, which separates the lines of a head at that point
_HEAD_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def parse_message(data: bytes, *, stream: bool = False) -> Request | Response:
    """Parse one complete message. `stream=True` means framing already cut it by
    Content-Length (so a missing Content-Length was already refused by the framer).

    Raises ParseError for anything malformed; no other exception escapes for any bytes.
    Checked here, so later layers can rely on them: start line, header syntax and limits,
    Via/From/To/Call-ID/CSeq present and well formed, From/To/Call-ID/CSeq/Max-Forwards/
    Content-Length at most once, CSeq method = request method, Max-Forwards <= 255, every
    Contact (but "*") a valid address, Content-Length against the octets received.
    """
    if len(data) > g.MAX_MESSAGE_SIZE:
        raise ParseError("Message too large", 513)
    if data[:1] == b"\r" or data[:1] == b"\n":
        data = data.lstrip(b"\r\n")  # RFC 3261 7.5: ignore CRLFs before the start line
        if not data:
            raise ParseError("Empty message")
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        body_at = end + 4
        lf = data.find(b"\n\n", 0, end)
        if lf >= 0:  # a bare-LF blank line ends the head before the CRLF CRLF does
            end, body_at = lf, lf + 2
    else:
        end = data.find(b"\n\n")  # bare-LF senders exist; tolerate them
        if end < 0:
            raise ParseError("Incomplete message: no end of headers")
        body_at = end + 2
    try:
        head = data[:end].decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError("Invalid UTF-8 in message head") from None
    if "\r" in head:
        head = head.replace("\r\n", "\n")
        if head[-1:] == "\r":  # "...\r\n\n": a CRLF line, then a bare-LF blank line
            head = head[:-1]
        if "\r" in head:
            # never a line end here: forwarded as part of a value it could end a header
            # line for the next hop's parser (header injection)
            raise ParseError("Bare CR in message head")
    if "\n\n" in head or head[-1] == "\n":
        # "\n\r\n": a bare-LF line end, then a CRLF blank line. Which one ends the head
        # is a guess; guessing is how two parsers come to disagree about a message.
        raise ParseError("Mixed line endings around an empty line")
    ctl = _HEAD_CONTROL_RE.search(head)
    if ctl is not None:
        first = head.find("\n")
        raise ParseError("Control character in start line" if first < 0 or ctl.start() < first
                         else "Control character in header value")  # RFC 3261 25.1
    lines = head.split("\n")

    start = lines[0]
    if len(start) > g.MAX_LINE_LENGTH:
        raise ParseError("Start line too long")
    is_response = start[:4].upper() == "SIP/"
    if is_response:
        m = g.STATUS_LINE_RE.match(start)
        if m is None:
            raise _status_line_error(start)
        if m.group(1) != "2" or m.group(2) != "0":
            raise ParseError("Unsupported SIP version", 505)
        status = int(m.group(3))
        if not 100 <= status <= 699:
            raise ParseError("Status code out of range")  # RFC 4475 3.1.2.19
    else:
        m = g.REQUEST_LINE_RE.match(start)
        if m is None:
            raise _request_line_error(start)
        if m.group(3) != "2" or m.group(4) != "0":
            raise ParseError("Unsupported SIP version", 505)  # RFC 4475 3.1.2.16
    # MAX_LINE_LENGTH bounds each field as to_bytes() writes it ("Name: value", unfolded),
    # so whatever parses here can be forwarded and parsed again.
    max_line = g.MAX_LINE_LENGTH
    pairs: list[tuple[str, str]] | None = None
    if len(lines) - 1 <= g.MAX_HEADERS and "\n " not in head and "\n\t" not in head:
        # no folded line: one regex pass over the whole head; if any line fails to match,
        # the line-by-line reader below says which and why
        pairs = _FIELD_RE.findall(head, len(start) + 1)
        if len(pairs) != len(lines) - 1:
            pairs = None
    if pairs is None:
        pairs = _read_fields(lines)
    entries: list[tuple[str, str, str]] = []
    tracked: dict[str, tuple[str, str, str]] = {}
    contacts: list[str] = []
    compact, split_headers = g.COMPACT_FORMS, g.SPLIT_HEADERS
    for name, value in pairs:
        if value and (value[-1] == " " or value[-1] == "\t"):
            value = value.rstrip(" \t")
        # one string per header name for every message (a held call keeps its messages for
        # 64*T1): names as written and their lower case come from a bounded table
        known = _NAMES.get(name)
        if known is None:
            known = (name, name.lower())
            if len(_NAMES) < _MAX_NAMES:
                _NAMES[name] = known
        name, lname = known
        if len(lname) == 1:
            full = compact.get(lname)
            if full is not None:
                lname = full
                name = g.canonical(full)
        if len(name) + len(value) + 2 > max_line:
            raise ParseError("Header line too long")
        if lname in split_headers and "," in value:
            # list headers hold one entry per value (Via, Route, Record-Route, Contact)
            e = None
            for part in split_quoted(value, ","):
                part = part.strip()
                if not part:
                    raise ParseError(f"Empty value in {name} list")  # RFC 4475 3.1.2.1
                pe = (lname, name, part)
                entries.append(pe)
                if e is None:
                    e = pe
                if lname == "contact":
                    contacts.append(part)
        else:
            e = (lname, name, value)
            entries.append(e)
            if lname == "contact":
                contacts.append(value)
        if lname in _TRACKED:
            if lname not in tracked:
                tracked[lname] = e  # type: ignore[assignment]
            elif lname in g.SINGLE_HEADERS:
                raise ParseError(f"Multiple {g.canonical(lname)} headers")  # 4475 3.1.4.8/9
    if len(entries) > g.MAX_HEADERS:
        raise ParseError("Too many headers")
    fields = entries
    headers = Headers(fields)

    msg: Request | Response
    if is_response:
        msg = Response(status, m.group(4) or "", headers)
    else:
        msg = Request(m.group(1), m.group(2), headers)

    for lname in g.MANDATORY_HEADERS:
        if lname not in tracked:
            raise ParseError(f"Missing {g.canonical(lname)} header")  # 4475 3.1.4.1
    views = msg._views
    cs = tracked["cseq"][2]
    cseq = parse_cseq(cs)
    views["cseq"] = (cs, cseq)
    if not is_response:
        if cseq[1] != msg.method:
            raise ParseError("CSeq method does not match request method")  # 4475 3.1.2.17
        mf = tracked.get("max-forwards")
        if mf is not None:
            mm = _MAX_FORWARDS_RE.match(mf[2])
            if mm is None:
                raise ParseError("Bad Max-Forwards")
            if int(mm.group(1)) > 255:
                raise ParseError("Max-Forwards out of range")  # 20.22, RFC 4475 3.1.2.4
    for lname, parse in (("via", parse_via), ("from", parse_name_addr), ("to", parse_name_addr)):
        v = tracked[lname][2]
        views[lname] = (v, parse(v))
    if not tracked["call-id"][2]:
        raise ParseError("Empty Call-ID")
    for c in contacts:
        if c != "*":  # the REGISTER wildcard (10.2.2)
            parse_name_addr(c)  # RFC 4475 3.1.2.13

    cl = tracked.get("content-length")
    if cl is not None:
        if not _CONTENT_LENGTH_RE.match(cl[2]):
            raise ParseError("Bad Content-Length")  # 4475 3.1.2.3
        n = int(cl[2])
        if n > len(data) - body_at:
            raise ParseError("Content-Length larger than message")  # 4475 3.1.2.2
        msg.body = data[body_at:body_at + n]  # 4475 3.1.1.8: extra octets are discarded
    elif stream:
        raise ParseError("Missing Content-Length on stream transport")
    else:
        msg.body = data[body_at:]  # RFC 3261 18.3: UDP without Content-Length (3.2.1)
    if type(msg.body) is not bytes:
        msg.body = bytes(msg.body)
    return msg


def _read_fields(lines: list[str]) -> list[tuple[str, str]]:
    """(name, value) of each header line, folds joined (RFC 3261 7.3.1: a fold is one SP),
    with the precise error for a line that is not a header."""
    pairs: list[tuple[str, str]] = []
    max_line, max_headers = g.MAX_LINE_LENGTH, g.MAX_HEADERS
    for i in range(1, len(lines)):
        line = lines[i]
        if line[0] == " " or line[0] == "\t":  # lines are never empty inside the head
            if not pairs:
                raise ParseError("Continuation line before any header")
            part = line.strip(" \t")
            if part:
                name, value = pairs[-1]
                value = f"{value} {part}" if value else part
                if len(name) + len(value) + 2 > max_line:
                    raise ParseError("Header line too long")
                pairs[-1] = (name, value)
            continue
        hm = _HEADER_LINE_RE.match(line)
        if hm is None:
            colon = line.find(":")
            raise ParseError("Header line without colon" if colon < 0 else
                             "Empty header name" if colon == 0 else "Bad header name")
        pairs.append((hm.group(1), hm.group(2).rstrip(" \t")))
        if len(pairs) > max_headers:  # stop early: 16000 tiny lines cost ~40 ms otherwise
            raise ParseError("Too many headers")
    return pairs


def _request_line_error(line: str) -> ParseError:
    """Why a start line failed REQUEST_LINE_RE, as precisely as the answer needs."""
    if line[-1:] in (" ", "\t"):
        return ParseError("Trailing whitespace in request line")  # RFC 4475 3.1.2.10
    if "  " in line or "\t" in line:
        return ParseError("Extra whitespace in request line")  # RFC 4475 3.1.2.9
    parts = line.split(" ")
    if len(parts) < 3:
        return ParseError("Malformed request line")
    if not g.TOKEN_RE.match(parts[0]):
        return ParseError("Bad method in request line")
    if not g.SIP_VERSION_RE.match(parts[-1]):
        return ParseError("Bad SIP version in request line")
    if len(parts) > 3:
        return ParseError("Whitespace inside Request-URI")  # RFC 4475 3.1.2.8
    if parts[1][:1] == "<":
        return ParseError("Request-URI enclosed in <>")  # RFC 4475 3.1.2.7
    return ParseError("Bad Request-URI")


_STATUS_CODE_DIGITS_RE = re.compile(r"[0-9]+\Z")


def _status_line_error(line: str) -> ParseError:
    parts = line.split(" ", 2)
    if not g.SIP_VERSION_RE.match(parts[0]):
        return ParseError("Bad SIP version in status line")
    if len(parts) > 1 and _STATUS_CODE_DIGITS_RE.match(parts[1]):
        return ParseError("Status code out of range")  # RFC 4475 3.1.2.19: not 3DIGIT
    return ParseError("Bad status line")


def make_response(req: Request, status: int, reason: str, to_tag: str | None = None) -> Response:
    """A response to `req` built per RFC 3261 8.2.6.2: Via(s), From, To (+tag), Call-ID, CSeq."""
    h = Headers()
    for v in req.headers.get_all("via"):
        h.add("via", v)
    h.add("from", req.headers.get("from") or "")
    to = req.headers.get("to") or ""
    if to_tag and status > 100 and not _has_tag(to):
        to = f"{to};tag={to_tag}"
    h.add("to", to)
    h.add("call-id", req.headers.get("call-id") or "")
    h.add("cseq", req.headers.get("cseq") or "")
    return Response(status, reason, h)


def retry_after(msg: Message) -> float | None:
    """Seconds of a Retry-After header (RFC 3261 20.33: delta-seconds [comment] *params)."""
    v = msg.headers.get("retry-after")
    if not v:
        return None
    digits = v.strip().split(None, 1)[0].split(";", 1)[0].split("(", 1)[0]
    return float(digits) if digits.isdigit() and len(digits) <= 7 else None


def _has_tag(to: str) -> bool:
    try:
        return "tag" in parse_name_addr(to).params
    except ParseError:
        # not an address we can read (a request built by hand): fall back to the text
        return ";tag=" in to.lower().replace(" ", "").replace("\t", "")


# --- stream framing (RFC 3261 18.3, RFC 5626 3.5.1 keep-alives) -------------------------
KEEPALIVE_PING = object()  # marker yielded for a double-CRLF ping; answer with a single CRLF

# The Content-Length field of a head (long or compact name, any case, possibly folded).
_STREAM_CL_RE = re.compile(
    rb"^(?:content-length|l)[ \t]*:([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)", re.I | re.M)
_STREAM_CL_VALUE_RE = re.compile(rb"[ \t\r\n]*([0-9]{1,10})[ \t\r\n]*\Z")
_PING = b"\r\n\r\n"


class StreamFramer:
    """Cuts a byte stream into messages by Content-Length. Handles partial reads, pipelining
    and CRLF keep-alives. A framing error means the connection cannot be trusted any more:
    the caller answers if it can and closes (no stuck connections). The error repeats on
    every later feed, so a caller that keeps feeding cannot resynchronise on garbage.

    After each feed at most MAX_MESSAGE_SIZE bytes stay buffered (one incomplete message);
    a chunk may be larger than that when it holds several complete messages.
    """

    __slots__ = ("_buf", "_need", "_scan")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._need = 0  # length of the message being received, once its head is complete
        self._scan = 0  # where to resume looking for the end of an incomplete head

    def feed(self, data: bytes) -> list[object]:
        buf = self._buf
        buf += data
        out: list[object] = []
        while buf:
            need = self._need
            if not need:
                if buf[0] == 0x0D or buf[0] == 0x0A:
                    if buf.startswith(_PING):
                        out.append(KEEPALIVE_PING)
                        del buf[:4]
                        continue
                    if len(buf) < 4 and _PING.startswith(buf):
                        break  # maybe the first part of a ping: wait
                    # a single CRLF (pong, or stray line end between messages)
                    del buf[: 2 if buf.startswith(b"\r\n") else 1]
                    continue
                end = buf.find(b"\r\n\r\n", self._scan)
                if end < 0:
                    if len(buf) > g.MAX_MESSAGE_SIZE:
                        raise ParseError("Message head too large", 513)
                    self._scan = max(len(buf) - 3, 0)  # never rescan what was searched
                    break
                m = _STREAM_CL_RE.search(buf, 0, end)
                if m is None:
                    raise ParseError("Missing Content-Length on stream transport")
                v = _STREAM_CL_VALUE_RE.match(m.group(1))
                if v is None:
                    raise ParseError("Bad Content-Length")  # RFC 4475 3.1.2.3: close
                need = end + 4 + int(v.group(1))
                if need > g.MAX_MESSAGE_SIZE:
                    raise ParseError("Message too large", 513)
                self._need = need
            if len(buf) < need:
                break
            out.append(bytes(buf[:need]))
            del buf[:need]
            self._need = self._scan = 0
        if len(buf) > g.MAX_STREAM_BUFFER:  # unreachable by construction; a last guard
            raise ParseError("Stream buffer limit exceeded", 513)
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def only_line_ends(self) -> bool:
        """What waits is at most the start of a CRLFCRLF ping: a peer's CRLF pong to our own
        keep-alive (RFC 5626 4.4.1) stays here until more comes, and is not a slow message."""
        buf = self._buf
        return 0 < len(buf) < 4 and not self._need and _PING.startswith(buf)
