"""SIP URIs (RFC 3261 19.1), name-addr / addr-spec values (20.10, 25.1) and Via (20.42).

Parsing is strict where a proxy depends on the result (host, port, params) and tolerant of
what it only carries along (user parts are kept as escaped on the wire).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from .errors import ParseError
from .grammar import SCHEME_RE

# hostport = host [ ":" port ]; host = hostname / IPv4address / IPv6reference (25.1).
# [0-9], not \d: \d matches non-ASCII digits and int() would accept them.
_HOST_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-.]+)(?::([0-9]{1,5}))?\Z")
_DISALLOWED_IN_URI = re.compile(r"[\s<>\"]")


def _check_ipv6_reference(host: str) -> None:
    """`[...]` must hold an IPv6 address (25.1 IPv6reference): the proxy connects to it."""
    try:
        ipaddress.IPv6Address(host[1:-1])
    except ValueError:
        raise ParseError(f"Bad IPv6 reference {host[:60]!r}") from None


@dataclass(slots=True)
class SipUri:
    """A sip: or sips: URI. `params` keep wire order; keys are lower case, flag params map to None."""

    scheme: str
    user: str | None
    host: str
    port: int | None = None
    password: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: str | None = None  # everything after '?', kept escaped

    @property
    def transport(self) -> str | None:
        t = self.params.get("transport")
        return t.lower() if t else None

    @property
    def host_bare(self) -> str:
        """Host without IPv6 brackets, lower case: what a resolver or socket wants."""
        h = self.host
        if h.startswith("["):
            h = h[1:-1]
        return h.lower()

    def copy(self) -> "SipUri":
        return SipUri(self.scheme, self.user, self.host, self.port, self.password,
                      dict(self.params), self.headers)

    def __str__(self) -> str:
        parts = [self.scheme, ":"]
        if self.user is not None:
            parts.append(self.user)
            if self.password is not None:
                parts += [":", self.password]
            parts.append("@")
        parts.append(self.host)
        if self.port is not None:
            parts += [":", str(self.port)]
        for k, v in self.params.items():
            parts += [";", k] if v is None else [";", k, "=", v]
        if self.headers is not None:
            parts += ["?", self.headers]
        return "".join(parts)


def parse_uri(text: str) -> SipUri:
    """Parse a sip:/sips: URI. Raises ParseError (400) on anything else; a well-formed URI of
    another scheme (tel:, urn:, ...) raises status 416, which is the answer for a Request-URI
    (RFC 4475 3.1.4.2, 3.1.4.3). Callers that accept other schemes check the scheme first."""
    colon = text.find(":")
    if colon <= 0:
        raise ParseError(f"Bad URI {text[:60]!r}")
    scheme = text[:colon].lower()
    if scheme != "sip" and scheme != "sips":
        if not SCHEME_RE.match(scheme):
            raise ParseError(f"Bad URI scheme {scheme[:20]!r}")
        raise ParseError(f"Unsupported URI scheme {scheme[:20]!r}", 416)
    if _DISALLOWED_IN_URI.search(text):
        raise ParseError("Whitespace or delimiter inside URI")  # RFC 4475 3.1.2.8, 3.1.2.14
    rest = text[colon + 1:]
    user = password = None
    # "@" is legal only as the end of userinfo: user, password, params and headers must escape
    # it (25.1). The user part may hold "?" and ";" (RFC 4475 3.1.1.2, 3.1.1.9), so userinfo is
    # cut at the first "@" before "?" or ";" are looked at.
    at = rest.find("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1:]
        user, colon_pw, pw = userinfo.partition(":")
        if not user:
            raise ParseError("Empty user part in URI")
        if colon_pw:
            password = pw
    headers = None
    q = rest.find("?")
    if q >= 0:
        rest, headers = rest[:q], rest[q + 1:]
    hostport, _, paramstr = rest.partition(";")
    m = _HOST_RE.match(hostport)
    if not m:
        raise ParseError(f"Bad host in URI {hostport[:60]!r}")
    host, port_s = m.group(1), m.group(2)
    if host[0] == "[":
        _check_ipv6_reference(host)
    port = None
    if port_s is not None:
        port = int(port_s)
        if not 0 < port < 65536:
            raise ParseError(f"Bad port {port_s} in URI")
    params = parse_params(paramstr) if paramstr else {}
    return SipUri(scheme, user, host, port, password, params, headers)


def parse_params(text: str) -> dict[str, str | None]:
    """`a=b;c;d=e` -> {'a': 'b', 'c': None, 'd': 'e'} (keys lower-cased, values as on the wire)."""
    params: dict[str, str | None] = {}
    # a quoted value may hold ";" (+sip.instance="<urn:...>", RFC 5626); the ";" added makes
    # split_quoted judge the quotes of a single parameter too (a lone quote in a Via branch
    # parsed, then failed once the proxy added received=: issue 12 fuzzing)
    for item in split_quoted(text + ";", ";") if '"' in text else text.split(";"):
        item = item.strip()
        if not item:
            continue
        k, eq, v = item.partition("=")
        k = k.strip().lower()
        if not k:
            raise ParseError("Empty parameter name")
        params[k] = v.strip() if eq else None
    return params


def format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


_SPECIALS: dict[str, re.Pattern] = {}


def split_quoted(text: str, sep: str) -> list[str]:
    """Split on `sep` outside double quotes and <...> (header lists, parameter lists)."""
    if sep not in text:
        return [text]
    if '"' not in text and "<" not in text:
        return text.split(sep)
    # visit only the characters that matter (hot path: Via/Route/Record-Route lists)
    rx = _SPECIALS.get(sep)
    if rx is None:
        rx = _SPECIALS[sep] = re.compile(r'[<>"\\' + re.escape(sep) + "]")
    out, start, in_q, in_a, skip = [], 0, False, False, -1
    for m in rx.finditer(text):
        i = m.start()
        if i == skip:
            continue
        c = text[i]
        if in_q:
            if c == "\\":
                skip = i + 1
            elif c == '"':
                in_q = False
        elif c == '"':
            in_q = True
        elif c == "<":
            in_a = True
        elif c == ">":
            in_a = False
        elif c == sep and not in_a:
            out.append(text[start:i])
            start = i + 1
    if in_q:
        raise ParseError("Unterminated quoted string")  # RFC 4475 3.1.2.6
    out.append(text[start:])
    return out


@dataclass(slots=True)
class NameAddr:
    """`"Display" <uri>;params` or `uri;params` (the params then belong to the header, 20.10).

    `uri` stays a string: To/From may carry tel: or other schemes we never need to parse.
    """

    uri: str
    display: str | None = None  # as on the wire, quotes included
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def sip_uri(self) -> SipUri:
        return parse_uri(self.uri)

    def __str__(self) -> str:
        d = f"{self.display} " if self.display else ""
        return f"{d}<{self.uri}>{format_params(self.params)}"


_DISPLAY_TOKENS_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~ \t]*\Z")
# quoted-string = SWS DQUOTE *(qdtext / quoted-pair ) DQUOTE (25.1); quoted-pair may escape
# any octet but CR and LF (none are left inside a header value), even NUL (RFC 4475 3.1.1.2).
_QUOTED_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)


def parse_name_addr(value: str) -> NameAddr:
    """Parse a name-addr or addr-spec header value (From, To, Contact, Route, ...): 20.10."""
    v = value.strip()
    if not v:
        raise ParseError("Empty address")
    display = None
    if v[0] == '"':
        m = _QUOTED_STRING_RE.match(v)
        if m is None:
            raise ParseError("Unterminated quoted display name")  # RFC 4475 3.1.2.6
        end = m.end()
        display = v[:end]
        lt = v.find("<", end)
        if lt < 0 or v[end:lt].strip():
            raise ParseError("Display name without <URI>")
    else:
        lt = v.find("<")
        if lt > 0:
            d = v[:lt].strip()
            if ":" in d:
                # a scheme before "<": an addr-spec whose parameter holds "<" inside quotes
                # (sip:a@b;+sip.instance="<urn:...>"); a display name has no ":"
                lt = -1
            elif d:
                if not _DISPLAY_TOKENS_RE.match(d):
                    raise ParseError("Non-token characters in display name")  # 4475 3.1.2.15
                display = d
    if lt >= 0:
        gt = v.find(">", lt)
        if gt < 0:
            raise ParseError("Unterminated <URI>")
        uri = v[lt + 1:gt]
        if uri != uri.strip():
            raise ParseError("Whitespace inside <URI>")  # LAQUOT/RAQUOT, RFC 4475 3.1.2.14
        rest = v[gt + 1:].lstrip()
        if rest and rest[0] != ";":
            raise ParseError("Garbage after <URI>")
        params = parse_params(rest[1:]) if rest else {}
    else:
        # addr-spec: no ';' params inside the URI, no '?' headers, no commas (20.10)
        uri, _, rest = v.partition(";")
        uri = uri.strip()
        if "?" in uri or "," in uri:
            raise ParseError("URI with headers or commas must be enclosed in <>")  # 3.1.2.13
        params = parse_params(rest) if rest else {}
    if not uri or ":" not in uri or _DISALLOWED_IN_URI.search(uri):
        raise ParseError(f"Bad URI in address {uri[:60]!r}")
    return NameAddr(uri, display, params)


@dataclass(slots=True)
class Via:
    transport: str  # upper case: UDP, TCP, TLS, ...
    host: str
    port: int | None
    params: dict[str, str | None] = field(default_factory=dict)
    protocol: str = "SIP/2.0"

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def sent_by(self) -> tuple[str, int | None]:
        return self.host.lower(), self.port

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.protocol}/{self.transport} {self.host}{port}{format_params(self.params)}"


_VIA_RE = re.compile(
    r"\s*([A-Za-z0-9\-.!%*_+`'~]+)\s*/\s*([A-Za-z0-9\-.!%*_+`'~]+)\s*/\s*([A-Za-z0-9\-.!%*_+`'~]+)"
    r"\s+(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-.]+)\s*(?::\s*([0-9]{1,5}))?\s*(;.*)?\Z", re.S)


def parse_via(value: str) -> Via:
    m = _VIA_RE.match(value)
    if not m:
        raise ParseError("Malformed Via")
    name, version, transport, host, port_s, paramstr = m.groups()
    if name.upper() != "SIP" or version != "2.0":
        raise ParseError("Unsupported Via protocol", 505 if name.upper() == "SIP" else 400)
    if host[0] == "[":
        _check_ipv6_reference(host)
    port = int(port_s) if port_s else None
    if port is not None and not 0 < port < 65536:
        raise ParseError("Bad Via port")
    params = parse_params(paramstr[1:]) if paramstr else {}
    return Via(transport.upper(), host, port, params)


def user_part(value: str | None) -> str:
    """The user part of a From/To name-addr (`+4420...` for records), the whole URI if it has
    none, "" when it does not parse."""
    try:
        uri = parse_name_addr(value or "").uri
    except ParseError:
        return ""
    body = uri.split(":", 1)[-1]
    return body.split("@", 1)[0] if "@" in body else uri
