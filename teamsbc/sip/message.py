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
    """Ordered header fields. Entries are [lower-case name, name as written, value].

    List-valued headers in grammar.SPLIT_HEADERS hold one value per entry so the proxy can
    push/pop a single Via or Route without touching the others.
    """

    __slots__ = ("_h",)

    def __init__(self, entries: list[list[str]] | None = None):
        self._h: list[list[str]] = entries if entries is not None else []

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for _, name, value in self._h:
            yield name, value

    def __len__(self) -> int:
        return len(self._h)

    def copy(self) -> "Headers":
        return Headers([e[:] for e in self._h])

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
        for i, e in enumerate(self._h):
            if e[0] == lname:
                e[2] = value
                self._h[i + 1:] = [x for x in self._h[i + 1:] if x[0] != lname]
                return
        self._h.append([lname, g.canonical(lname), value])

    def add(self, lname: str, value: str) -> None:
        self._h.append([lname, g.canonical(lname), value])

    def add_first(self, lname: str, value: str) -> None:
        """Insert above the existing fields of that name (Via, Record-Route), or at the top."""
        for i, e in enumerate(self._h):
            if e[0] == lname:
                self._h.insert(i, [lname, e[1], value])
                return
        self._h.insert(0, [lname, g.canonical(lname), value])

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
        rest[pos:pos] = [[lname, name, v] for v in values]
        self._h = rest


class CSeq(tuple):
    __slots__ = ()

    @property
    def number(self) -> int:
        return self[0]

    @property
    def method(self) -> str:
        return self[1]


_CSEQ_RE = re.compile(r"\s*(\d{1,10})\s+(" + g.TOKEN + r")\s*\Z")


class Message:
    __slots__ = ("headers", "body")

    headers: Headers
    body: bytes

    # -- structured views of mandatory headers (validated at parse time) --
    @property
    def call_id(self) -> str:
        return self.headers.get("call-id") or ""

    @property
    def cseq(self) -> CSeq:
        return parse_cseq(self.headers.get("cseq") or "")

    @property
    def top_via(self) -> Via:
        v = self.headers.get("via")
        if v is None:
            raise ParseError("Missing Via")
        return parse_via(v)

    @property
    def from_addr(self) -> NameAddr:
        return parse_name_addr(self.headers.get("from") or "")

    @property
    def to_addr(self) -> NameAddr:
        return parse_name_addr(self.headers.get("to") or "")

    def _head_lines(self) -> list[str]:
        raise NotImplementedError

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


class Request(Message):
    __slots__ = ("method", "uri")

    def __init__(self, method: str, uri: str, headers: Headers | None = None, body: bytes = b""):
        self.method = method
        self.uri = uri
        self.headers = headers if headers is not None else Headers()
        self.body = body

    @property
    def ruri(self) -> SipUri:
        return parse_uri(self.uri)

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

    def _head_lines(self) -> list[str]:
        return [f"SIP/2.0 {self.status} {self.reason}"]

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


def parse_cseq(value: str) -> CSeq:
    m = _CSEQ_RE.match(value)
    if not m:
        raise ParseError("Bad CSeq")
    n = int(m.group(1))
    if n >= 2 ** 31:
        raise ParseError("CSeq number too large")  # RFC 3261 8.1.1.5, RFC 4475 3.1.2.4
    return CSeq((n, m.group(2)))


_CONTENT_LENGTH_RE = re.compile(r"\s*\d{1,10}\s*\Z")
_HEADER_NAME_RE = re.compile(g.TOKEN + r"\Z")


def parse_message(data: bytes, *, stream: bool = False) -> Request | Response:
    """Parse one complete message. `stream=True` means framing already cut it by
    Content-Length (so a missing Content-Length was already refused by the framer)."""
    if len(data) > g.MAX_MESSAGE_SIZE:
        raise ParseError("Message too large", 513)
    end = data.find(b"\r\n\r\n")
    sep = 4
    if end < 0:
        end = data.find(b"\n\n")  # bare-LF senders exist; tolerate them
        sep = 2
        if end < 0:
            raise ParseError("Incomplete message: no end of headers")
    try:
        head = data[:end].decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError("Invalid UTF-8 in message head") from None
    raw_lines = head.replace("\r\n", "\n").split("\n")
    while raw_lines and not raw_lines[0]:
        raw_lines.pop(0)  # RFC 3261 7.5: ignore CRLFs before the start line
    if not raw_lines:
        raise ParseError("Empty message")
    start = raw_lines[0]
    entries: list[list[str]] = []
    for line in raw_lines[1:]:
        if line[:1] in (" ", "\t"):
            if not entries:
                raise ParseError("Continuation line before any header")
            e = entries[-1]
            e[2] = e[2] + " " + line.strip()  # 7.3.1: folding is equivalent to one SP
            if len(e[2]) > g.MAX_LINE_LENGTH:
                raise ParseError("Header line too long")
            continue
        if len(line) > g.MAX_LINE_LENGTH:
            raise ParseError("Header line too long")
        colon = line.find(":")
        if colon <= 0:
            raise ParseError("Header line without colon")
        name = line[:colon].rstrip(" \t")
        if not _HEADER_NAME_RE.match(name):
            raise ParseError("Bad header name")
        lname = name.lower()
        if len(lname) == 1:
            lname = g.COMPACT_FORMS.get(lname, lname)
            if lname in g.COMPACT_FORMS.values():
                name = g.canonical(lname)
        entries.append([lname, name, line[colon + 1:].strip(" \t")])
        if len(entries) > g.MAX_HEADERS:
            raise ParseError("Too many headers")
    # split list headers into one entry per value
    split: list[list[str]] = []
    for e in entries:
        if e[0] in g.SPLIT_HEADERS and "," in e[2]:
            for part in split_quoted(e[2], ","):
                part = part.strip()
                if not part:
                    raise ParseError(f"Empty value in {e[1]} list")
                split.append([e[0], e[1], part])
        else:
            split.append(e)
    if len(split) > g.MAX_HEADERS:
        raise ParseError("Too many headers")
    headers = Headers(split)
    body = data[end + sep:]

    msg: Request | Response
    if start.startswith("SIP/"):
        m = g.STATUS_LINE_RE.match(start)
        if not m:
            raise ParseError("Bad status line")
        if (m.group(1), m.group(2)) != ("2", "0"):
            raise ParseError("Unsupported SIP version", 505)
        status = int(m.group(3))
        if not 100 <= status <= 699:
            raise ParseError("Bad status code")  # RFC 4475 3.1.2.19
        msg = Response(status, m.group(4), headers)
    else:
        m = g.REQUEST_LINE_RE.match(start)
        if not m:
            raise ParseError("Bad request line")  # 4475 3.1.2.7-10
        if (m.group(3), m.group(4)) != ("2", "0"):
            raise ParseError("Unsupported SIP version", 505)  # 4475 3.1.2.16
        msg = Request(m.group(1), m.group(2), headers)

    _check_mandatory(msg)
    cl_values = headers.get_all("content-length")
    if cl_values:
        cl = cl_values[0]
        if not _CONTENT_LENGTH_RE.match(cl):
            raise ParseError("Bad Content-Length")  # 4475 3.1.2.3
        n = int(cl)
        if n > len(body):
            raise ParseError("Content-Length larger than message")  # 4475 3.1.2.2
        body = body[:n]  # 4475 3.1.1.8: extra octets after the body are discarded
    elif stream:
        raise ParseError("Missing Content-Length on stream transport")
    msg.body = bytes(body)
    return msg


def _check_mandatory(msg: Request | Response) -> None:
    h = msg.headers
    for lname in ("via", "from", "to", "call-id", "cseq"):
        if lname not in h:
            raise ParseError(f"Missing {g.canonical(lname)} header")  # 4475 3.1.4.1
    for lname in g.SINGLE_HEADERS:
        if h.count(lname) > 1:
            raise ParseError(f"Multiple {g.canonical(lname)} headers")  # 4475 3.1.4.8/9
    cseq = parse_cseq(h.get("cseq") or "")
    if isinstance(msg, Request) and cseq.method != msg.method:
        raise ParseError("CSeq method does not match request method")  # 4475 3.1.2.17
    parse_via(h.get("via") or "")
    parse_name_addr(h.get("from") or "")
    parse_name_addr(h.get("to") or "")
    if isinstance(msg, Request):
        mf = h.get("max-forwards")
        if mf is not None and (not mf.strip().isdigit() or int(mf) > 255):
            raise ParseError("Bad Max-Forwards")  # 4475 3.1.2.4
    if not (h.get("call-id") or "").strip():
        raise ParseError("Empty Call-ID")


def make_response(req: Request, status: int, reason: str, to_tag: str | None = None) -> Response:
    """A response to `req` built per RFC 3261 8.2.6.2: Via(s), From, To (+tag), Call-ID, CSeq."""
    h = Headers()
    for v in req.headers.get_all("via"):
        h.add("via", v)
    h.add("from", req.headers.get("from") or "")
    to = req.headers.get("to") or ""
    if to_tag and status > 100 and ";tag=" not in to.lower().replace(" ", ""):
        to = f"{to};tag={to_tag}"
    h.add("to", to)
    h.add("call-id", req.headers.get("call-id") or "")
    h.add("cseq", req.headers.get("cseq") or "")
    return Response(status, reason, h)


# --- stream framing (RFC 3261 18.3, RFC 5626 3.5.1 keep-alives) -------------------------
KEEPALIVE_PING = object()  # marker yielded for a double-CRLF ping; answer with a single CRLF

_STREAM_CL_RE = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*(\d{1,10})[ \t]*\r?$", re.I | re.M)


class StreamFramer:
    """Cuts a byte stream into messages by Content-Length. Handles partial reads, pipelining
    and CRLF keep-alives. A framing error means the connection cannot be trusted any more:
    the caller answers if it can and closes (no stuck connections)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[object]:
        buf = self._buf
        buf += data
        out: list[object] = []
        while buf:
            if buf[0] == 0x0D or buf[0] == 0x0A:
                if buf[:4] == b"\r\n\r\n":
                    out.append(KEEPALIVE_PING)
                    del buf[:4]
                    continue
                if buf[:2] == b"\r\n" and (len(buf) < 4 and b"\r\n\r\n".startswith(bytes(buf))):
                    break  # maybe the first half of a ping: wait
                # a single CRLF (pong, or stray line end between messages)
                del buf[: 2 if buf[:2] == b"\r\n" else 1]
                continue
            end = buf.find(b"\r\n\r\n", 0, g.MAX_MESSAGE_SIZE + 4)
            if end < 0:
                if len(buf) > g.MAX_MESSAGE_SIZE:
                    raise ParseError("Message head too large", 513)
                break
            head = bytes(buf[:end + 2])
            m = _STREAM_CL_RE.search(head)
            if m is None:
                raise ParseError("Missing Content-Length on stream transport")
            total = end + 4 + int(m.group(1))
            if total > g.MAX_MESSAGE_SIZE:
                raise ParseError("Message too large", 513)
            if len(buf) < total:
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
        if len(buf) > g.MAX_STREAM_BUFFER:
            raise ParseError("Stream buffer limit exceeded", 513)
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf)
