"""Error types of the SIP core. Each knows the status code a UAS answers with (h11 style)."""
from __future__ import annotations


class ParseError(Exception):
    """Malformed input from the network. `status`/`reason` make the answer: `400 Bad CSeq`.

    The reason is our own short text (never echoes raw input beyond a bounded excerpt), so it
    is safe to put in a Reason-Phrase and a log line.
    """

    def __init__(self, reason: str, status: int = 400):
        super().__init__(reason)
        self.reason = reason.replace("\r", " ").replace("\n", " ")[:120]
        self.status = status
