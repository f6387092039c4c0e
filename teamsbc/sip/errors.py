"""Error types of the SIP core. Each knows the status code a UAS answers with (h11 style).

    ProtocolError            reason + status: what to answer (`400 Bad CSeq`) and log
      ParseError             the PEER sent something malformed (RemoteProtocolError in h11):
                             answered with `status reason` when a response can be built
        MessageTooLarge      the peer's message, relayed, would not fit the next hop's
                             transport (513, RFC 3261 21.5.11; `detail` for a Warning)
      LocalProtocolError     WE were about to do something the protocol forbids (a relay
                             state transition that does not exist): a bug of ours, logged with
                             its traceback and answered 500, never a crash of the SBC

The reason is our own short text (never echoes raw input beyond a bounded excerpt), so it is
safe to put in a Reason-Phrase and a log line.
"""
from __future__ import annotations


class ProtocolError(Exception):
    def __init__(self, reason: str, status: int = 400):
        super().__init__(reason)
        self.reason = reason.replace("\r", " ").replace("\n", " ")[:120]
        self.status = status


class ParseError(ProtocolError):
    """Malformed input from the network. `status`/`reason` make the answer: `400 Bad CSeq`."""


class LocalProtocolError(ProtocolError):
    """Our own mistake (default answer 500 Server Internal Error)."""

    def __init__(self, reason: str, status: int = 500):
        super().__init__(reason, status)


class MessageTooLarge(ParseError):
    """The message would leave as a UDP datagram larger than the path takes unfragmented
    (RFC 3261 18.1.1): 513, with `detail` saying which limit, for a Warning and the log."""

    def __init__(self, detail: str):
        super().__init__("Message Too Large", 513)
        self.detail = detail
