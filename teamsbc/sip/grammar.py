"""SIP grammar pieces (RFC 3261 section 25) and the limits we enforce on input.

Written once here so the parser, the URI code and the header helpers share them.
"""
from __future__ import annotations

import re

# --- limits (input from the network is bounded before it is parsed) -----------------
MAX_MESSAGE_SIZE = 65_535          # one UDP datagram; also the cap per message on streams
MAX_HEADERS = 128                  # header field lines per message
MAX_LINE_LENGTH = 8_192            # one header line after unfolding
MAX_STREAM_BUFFER = 2 * MAX_MESSAGE_SIZE  # unparsed bytes held per connection

# RFC 3261 25.1: token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
TOKEN_RE = re.compile(TOKEN + r"\Z")

# Request-Line = Method SP Request-URI SP SIP-Version CRLF  (exactly one SP each, 25.1)
REQUEST_LINE_RE = re.compile(r"(" + TOKEN + r") (\S+) SIP/(\d+)\.(\d+)\Z")
# Status-Line = SIP-Version SP Status-Code SP Reason-Phrase CRLF (reason may be empty)
STATUS_LINE_RE = re.compile(r"SIP/(\d+)\.(\d+) (\d{3}) ?(.*)\Z")

# RFC 3261 7.3.3: compact header forms (plus the RFC 3515/3892/4028/3265 ones seen in the wild)
COMPACT_FORMS = {
    "a": "accept-contact", "b": "referred-by", "c": "content-type", "d": "request-disposition",
    "e": "content-encoding", "f": "from", "i": "call-id", "j": "reject-contact",
    "k": "supported", "l": "content-length", "m": "contact", "o": "event", "r": "refer-to",
    "s": "subject", "t": "to", "u": "allow-events", "v": "via", "x": "session-expires",
    "y": "identity",
}

# How we spell header names we write (the wire is case-insensitive, people are not).
CANONICAL_NAMES = {
    "call-id": "Call-ID", "cseq": "CSeq", "www-authenticate": "WWW-Authenticate",
    "mime-version": "MIME-Version", "rack": "RAck", "rseq": "RSeq", "sip-etag": "SIP-ETag",
    "sip-if-match": "SIP-If-Match", "x-ms-sbc": "X-MS-SBC", "p-asserted-identity":
    "P-Asserted-Identity", "p-preferred-identity": "P-Preferred-Identity",
}

# Headers whose comma-separated values are split into one entry each at parse time, so the
# proxy can push and pop single values (Via, Route, Record-Route, Contact) without re-parsing.
SPLIT_HEADERS = frozenset({"via", "route", "record-route", "contact"})

# Headers that must appear at most once (RFC 3261 20; RFC 4475 3.1.4.8 / 3.1.4.9).
SINGLE_HEADERS = frozenset({"from", "to", "call-id", "cseq", "max-forwards", "content-length"})

MAGIC_COOKIE = "z9hG4bK"  # RFC 3261 8.1.1.7


def canonical(name_lower: str) -> str:
    return CANONICAL_NAMES.get(name_lower) or "-".join(p.capitalize() for p in name_lower.split("-"))
