"""StreamFramer: cutting a TCP/TLS byte stream into SIP messages (RFC 3261 18.3) and
CRLF keep-alives (RFC 5626 3.5.1)."""
from __future__ import annotations

from pathlib import Path

import pytest

from teamsbc.sip import grammar as g
from teamsbc.sip.message import KEEPALIVE_PING, ParseError, StreamFramer, parse_message

FIXTURES = Path(__file__).parent / "fixtures" / "rfc4475"


def msg(call_id: str, body: bytes = b"", cl_name: str = "Content-Length") -> bytes:
    return (
        "OPTIONS sip:sbc.example.com:5061;transport=tls SIP/2.0\r\n"
        "Via: SIP/2.0/TLS 52.114.148.0:5061;branch=z9hG4bK" + call_id + "\r\n"
        "From: <sip:sip.pstnhub.microsoft.com>;tag=1\r\n"
        "To: <sip:sbc.example.com>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        f"{cl_name}: {len(body)}\r\n"
        "\r\n"
    ).encode() + body


A = msg("a", b"v=0\r\n")
B = msg("b")
C = msg("c", b"\r\n\r\nbody starting with CRLFs\r\n\r\n")


def feed_all(chunks) -> list[object]:
    f = StreamFramer()
    out: list[object] = []
    for chunk in chunks:
        out += f.feed(chunk)
    return out


def test_one_message_in_one_read():
    f = StreamFramer()
    assert f.feed(A) == [A]
    assert f.buffered == 0


def test_partial_reads_byte_by_byte():
    f = StreamFramer()
    out: list[object] = []
    for i in range(len(A) - 1):
        out += f.feed(A[i:i + 1])
    assert out == []
    assert f.buffered == len(A) - 1
    assert f.feed(A[-1:]) == [A]
    assert f.buffered == 0


def test_pipelined_messages_in_one_read():
    assert feed_all([A + B + C + A]) == [A, B, C, A]


def test_split_inside_the_head_end_and_inside_the_body():
    cut = A.index(b"\r\n\r\n") + 2
    assert feed_all([A[:cut], A[cut:cut + 3], A[cut + 3:] + B[:10], B[10:]]) == [A, B]


def test_body_that_starts_with_crlf_is_not_a_keepalive():
    data = C + B
    assert feed_all([data[i:i + 1] for i in range(len(data))]) == [C, B]


def test_compact_and_case_insensitive_content_length():
    m1 = msg("l1", b"xyz", cl_name="l")
    m2 = msg("l2", b"xy", cl_name="CONTENT-LENGTH")
    m3 = msg("l3", b"x", cl_name="content-length ")
    assert feed_all([m1 + m2 + m3]) == [m1, m2, m3]


def test_folded_content_length():
    m = A.replace(b"Content-Length: 5", b"Content-Length:\r\n 5")
    assert feed_all([m]) == [m]
    assert parse_message(m, stream=True).body == b"v=0\r\n"


def test_header_named_like_l_is_not_content_length():
    m = A.replace(b"Content-Length: 5", b"X-l: 99\r\nContent-Length: 5")
    assert feed_all([m + B]) == [m, B]


# --- keep-alives ---------------------------------------------------------------------------
def test_double_crlf_ping():
    assert feed_all([b"\r\n\r\n"]) == [KEEPALIVE_PING]


def test_ping_byte_by_byte():
    f = StreamFramer()
    assert [f.feed(b) for b in (b"\r", b"\n", b"\r")] == [[], [], []]
    assert f.buffered == 3
    assert f.feed(b"\n") == [KEEPALIVE_PING]
    assert f.buffered == 0


def test_pings_between_and_around_messages():
    data = b"\r\n\r\n" + A + b"\r\n\r\n\r\n\r\n" + B
    assert feed_all([data]) == [KEEPALIVE_PING, A, KEEPALIVE_PING, KEEPALIVE_PING, B]
    assert feed_all([data[i:i + 1] for i in range(len(data))]) == [
        KEEPALIVE_PING, A, KEEPALIVE_PING, KEEPALIVE_PING, B]


def test_single_crlf_pong_yields_nothing_and_does_not_disturb_framing():
    f = StreamFramer()
    assert f.feed(b"\r\n") == []  # a pong (or the first half of a ping): wait
    assert f.feed(A) == [A]
    assert f.feed(b"\r\n" + B) == [B]
    assert f.buffered == 0


def test_stray_line_ends_between_messages_are_dropped():
    assert feed_all([A + b"\n" + b"\r\n" + B + b"\r"]) == [A, B]


# --- errors and limits ----------------------------------------------------------------------
def framing_error(*chunks: bytes) -> ParseError:
    f = StreamFramer()
    with pytest.raises(ParseError) as ei:
        for chunk in chunks:
            f.feed(chunk)
    return ei.value


def test_missing_content_length_on_a_stream():
    err = framing_error((FIXTURES / "inv2543.sip").read_bytes())
    assert (err.status, err.reason) == (400, "Missing Content-Length on stream transport")


@pytest.mark.parametrize("value", [b"-999", b"five", b"", b"1 2", b"12345678901"])
def test_bad_content_length_on_a_stream(value):
    err = framing_error(A.replace(b"Content-Length: 5", b"Content-Length: " + value))
    assert (err.status, err.reason) == (400, "Bad Content-Length")


def test_error_repeats_on_the_next_feed():
    # the connection cannot resynchronise: the caller must close it
    f = StreamFramer()
    bad = A.replace(b"Content-Length: 5", b"Content-Length: x")
    for _ in range(2):
        with pytest.raises(ParseError) as ei:
            f.feed(bad if f.buffered == 0 else B)
        assert ei.value.reason == "Bad Content-Length"


def sized(total: int, declared: int | None = None) -> tuple[bytes, bytes]:
    """(head, body) of a message of `total` octets; Content-Length says `declared`."""
    template = msg("max").replace(b"Content-Length: 0", b"Content-Length: %05d")
    body = b"x" * (total - len(template % 0))
    return template % (len(body) if declared is None else declared), body


def test_message_of_exactly_max_size_then_one_more():
    head, body = sized(g.MAX_MESSAGE_SIZE)
    assert len(head + body) == g.MAX_MESSAGE_SIZE
    assert feed_all([head + body]) == [head + body]
    head, body = sized(g.MAX_MESSAGE_SIZE, declared=len(body) + 1)
    err = framing_error(head)  # refused as soon as the head is complete
    assert (err.status, err.reason) == (513, "Message too large")


def test_oversize_body_refused_before_it_arrives():
    err = framing_error(msg("big").replace(b"Content-Length: 0", b"Content-Length: 9999999"))
    assert (err.status, err.reason) == (513, "Message too large")


def test_oversize_head_refused_at_limit_plus_one():
    f = StreamFramer()
    start = b"OPTIONS sip:a@b SIP/2.0\r\nX: "
    f.feed(start + b"a" * (g.MAX_MESSAGE_SIZE - len(start)))  # exactly the limit: waits
    assert f.buffered == g.MAX_MESSAGE_SIZE
    with pytest.raises(ParseError) as ei:
        f.feed(b"a")
    assert (ei.value.status, ei.value.reason) == (513, "Message head too large")


def test_buffer_stays_bounded_and_large_reads_of_complete_messages_pass():
    # After any feed at most one incomplete message is held (<= MAX_MESSAGE_SIZE, so within
    # MAX_STREAM_BUFFER); a single read may be larger when it holds complete messages.
    many = B * (g.MAX_STREAM_BUFFER // len(B) + 10)
    assert len(many) > g.MAX_STREAM_BUFFER
    f = StreamFramer()
    out = f.feed(many + A[:-1])
    assert (len(out), f.buffered) == (len(many) // len(B), len(A) - 1)
    assert g.MAX_MESSAGE_SIZE <= g.MAX_STREAM_BUFFER
    err = framing_error(b"x" * (2 * g.MAX_STREAM_BUFFER))
    assert (err.status, err.reason) == (513, "Message head too large")


def test_framed_messages_parse_with_stream_true():
    for m in feed_all([A + B + C]):
        assert parse_message(m, stream=True).headers.get("content-length") is not None


def test_a_pong_waiting_in_the_buffer_is_line_ends_only_not_a_message_begun():
    """The stranger's find: the CRLF pong Teams sends back to our keep-alive stayed buffered (it
    may start a ping) and security.header_timeout closed our own connection every ~40 s."""
    f = StreamFramer()
    assert f.feed(b"\r\n") == [] and f.buffered == 2 and f.only_line_ends
    assert f.feed(b"\r\n") == [KEEPALIVE_PING] and not f.only_line_ends
    assert f.feed(b"OPTIONS sip:x SIP/2.0\r\n") == [] and not f.only_line_ends
