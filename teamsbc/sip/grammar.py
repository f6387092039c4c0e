"""SIP grammar pieces (RFC 3261 section 25) and the limits we enforce on input.

Written once here so the parser, the URI code and the header helpers share them.
"""
from __future__ import annotations

import re

# --- limits (input from the network is bounded before it is parsed) -----------------
# Each limit is inclusive: a value equal to the limit is accepted, one more is refused.
MAX_MESSAGE_SIZE = 65_535          # one UDP datagram; also the cap per message on streams (513)
MAX_HEADERS = 128                  # header field values per message, after list splitting
MAX_LINE_LENGTH = 8_192            # the start line, and each header field as it is written
                                   # back ("Name: value" after unfolding), without CRLF
MAX_STREAM_BUFFER = 2 * MAX_MESSAGE_SIZE  # unparsed bytes held per connection (513)

# RFC 3261 25.1: header values are TEXT-UTF8 and LWS: no control character but HTAB (CR and LF
# only as line ends). NUL, ESC, DEL... relayed to the other leg are a parser differential at best.
CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

# RFC 3261 25.1: token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
TOKEN_RE = re.compile(TOKEN + r"\Z")

# RFC 3986 3.1 (used by RFC 3261 absoluteURI): scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
SCHEME = r"[A-Za-z][A-Za-z0-9+\-.]*"
SCHEME_RE = re.compile(SCHEME + r"\Z")
# Request-URI = SIP-URI / SIPS-URI / absoluteURI: a scheme, then visible ASCII without
# '"', "<", ">" (RFC 4475 3.1.2.7 ltgtruri). Other characters outside uric (a bare "#" in a
# dial string, say) are carried, not judged: the URI code is strict where it matters.
REQUEST_URI = SCHEME + r":[\x21\x23-\x3b\x3d\x3f-\x7e]+"
# SIP-Version = "SIP" "/" 1*DIGIT "." 1*DIGIT; case-insensitive on receipt (RFC 3261 7.1).
# Digits are [0-9], never \d: \d also matches non-ASCII digits, which int() accepts.
SIP_VERSION = r"(?i:SIP)/([0-9]+)\.([0-9]+)"
SIP_VERSION_RE = re.compile(SIP_VERSION + r"\Z")
# Request-Line = Method SP Request-URI SP SIP-Version CRLF  (exactly one SP each, 25.1)
REQUEST_LINE_RE = re.compile(r"(" + TOKEN + r") (" + REQUEST_URI + r") " + SIP_VERSION + r"\Z")
# Status-Line = SIP-Version SP Status-Code SP Reason-Phrase CRLF. Status-Code is exactly
# 3DIGIT (RFC 4475 3.1.2.19 bigcode); the reason may be empty, and a missing SP before an
# empty reason is tolerated.
STATUS_LINE_RE = re.compile(SIP_VERSION + r" ([0-9]{3})(?: (.*))?\Z")

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

# Headers every request and response must carry (RFC 3261 8.1.1; RFC 4475 3.1.4.1), in the
# order their absence is reported.
MANDATORY_HEADERS = ("via", "from", "to", "call-id", "cseq")

MAGIC_COOKIE = "z9hG4bK"  # RFC 3261 8.1.1.7

# Methods of RFC 3261 and its extensions (3262, 3265, 3311, 3428, 3515, 3903, 6086). Counters
# keyed by method use "other" for anything else: attacker-chosen tokens must not grow a table.
KNOWN_METHODS = frozenset({"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK",
                           "SUBSCRIBE", "NOTIFY", "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE"})


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


def canonical(name_lower: str) -> str:
    return CANONICAL_NAMES.get(name_lower) or "-".join(p.capitalize() for p in name_lower.split("-"))
