"""Bencode, the encoding of rtpengine's NG control protocol (BitTorrent BEP 3 grammar).

    encode({"command": "ping"})  -> b"d7:command4:pinge"
    decode(b"d6:result4:ponge")  -> {b"result": b"pong"}

Values are ``bytes`` (``str`` is encoded as UTF-8), ``int`` (``bool`` refused), ``list``/``tuple``
and ``dict`` (keys ``bytes`` or ``str``). :func:`encode` writes dict keys sorted, as BEP 3 asks;
:func:`decode` accepts them in any order (rtpengine does not sort its replies) but refuses
duplicates. Decoding is strict: any malformed input raises :class:`BencodeError`, never another
exception, and nesting is bounded by :data:`MAX_DEPTH` (no recursion blow-up on hostile input).
"""

from __future__ import annotations

from typing import Any, Union

__all__ = ["BencodeError", "encode", "decode", "decode_prefix", "MAX_DEPTH", "to_str_keys"]

MAX_DEPTH = 64
"""Deepest list/dict nesting accepted by :func:`decode` (NG replies nest 5 or 6 levels)."""

Bencodable = Union[bytes, str, int, list, tuple, dict]

_DIGITS = b"0123456789"


class BencodeError(ValueError):
    """Malformed bencode, or a value that cannot be bencoded. ``offset`` is where decoding
    stopped (None for encoding errors)."""

    def __init__(self, reason: str, offset: int | None = None) -> None:
        super().__init__(reason if offset is None else f"{reason} at offset {offset}")
        self.reason = reason
        self.offset = offset


# --------------------------------------------------------------------------- encode

def encode(value: Bencodable) -> bytes:
    """Bencode ``value``; raises BencodeError for anything else (floats, None, bool, ...)."""
    out: list[bytes] = []
    _encode(value, out, 0)
    return b"".join(out)


def _key_bytes(key: Any) -> bytes:
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode("utf-8")
    raise BencodeError(f"dict key must be bytes or str, not {type(key).__name__}")


def _encode(value: Any, out: list[bytes], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise BencodeError(f"nesting deeper than {MAX_DEPTH}")
    if isinstance(value, bool):  # a subclass of int: True would silently become i1e
        raise BencodeError("cannot bencode bool (use an int or a string)")
    if isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        out.append(b"%d:" % len(raw))
        out.append(raw)
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        out.append(b"%d:" % len(raw))
        out.append(raw)
    elif isinstance(value, (list, tuple)):
        out.append(b"l")
        for item in value:
            _encode(item, out, depth + 1)
        out.append(b"e")
    elif isinstance(value, dict):
        items = sorted(((_key_bytes(k), v) for k, v in value.items()), key=lambda kv: kv[0])
        for (a, _), (b, _) in zip(items, items[1:]):
            if a == b:
                raise BencodeError(f"duplicate dict key {a!r} (bytes and str spelling)")
        out.append(b"d")
        for key, item in items:
            out.append(b"%d:" % len(key))
            out.append(key)
            _encode(item, out, depth + 1)
        out.append(b"e")
    else:
        raise BencodeError(f"cannot bencode {type(value).__name__}")


# --------------------------------------------------------------------------- decode

def decode(data: bytes) -> Any:
    """Decode exactly one value filling all of ``data``; trailing bytes are an error."""
    value, end = decode_prefix(data)
    if end != len(data):
        raise BencodeError("trailing data after the value", end)
    return value


def decode_prefix(data: bytes, start: int = 0) -> tuple[Any, int]:
    """Decode one value starting at ``start``; return it and the offset just after it."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BencodeError(f"can only decode bytes, not {type(data).__name__}")
    return _Decoder(bytes(data)).value(start, 0)


class _Decoder:
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def value(self, pos: int, depth: int) -> tuple[Any, int]:
        data = self.data
        if pos >= len(data):
            raise BencodeError("unexpected end of data", pos)
        c = data[pos]
        if c == 0x69:  # i
            return self.integer(pos)
        if c in _DIGITS:
            return self.string(pos)
        if depth >= MAX_DEPTH:
            raise BencodeError(f"nesting deeper than {MAX_DEPTH}", pos)
        if c == 0x6C:  # l
            items = []
            pos += 1
            while True:
                if pos >= len(data):
                    raise BencodeError("unterminated list", pos)
                if data[pos] == 0x65:  # e
                    return items, pos + 1
                item, pos = self.value(pos, depth + 1)
                items.append(item)
        if c == 0x64:  # d
            result: dict[bytes, Any] = {}
            pos += 1
            while True:
                if pos >= len(data):
                    raise BencodeError("unterminated dict", pos)
                if data[pos] == 0x65:
                    return result, pos + 1
                if data[pos] not in _DIGITS:
                    raise BencodeError("dict key is not a string", pos)
                key, next_pos = self.string(pos)
                if key in result:
                    raise BencodeError(f"duplicate dict key {key!r}", pos)
                result[key], pos = self.value(next_pos, depth + 1)
        raise BencodeError(f"unexpected byte {bytes([c])!r}", pos)

    def integer(self, pos: int) -> tuple[int, int]:
        data = self.data
        end = data.find(b"e", pos + 1)
        if end < 0:
            raise BencodeError("unterminated integer", pos)
        text = data[pos + 1 : end]
        digits = text[1:] if text[:1] == b"-" else text
        if not digits or not digits.isdigit() or not digits.isascii():
            raise BencodeError(f"bad integer {text!r}", pos)
        # BEP 3: no leading zeros, no negative zero.
        if (digits[:1] == b"0" and len(digits) > 1) or text == b"-0":
            raise BencodeError(f"non-canonical integer {text!r}", pos)
        if len(digits) > 64:
            raise BencodeError("integer too long", pos)
        return int(text), end + 1

    def string(self, pos: int) -> tuple[bytes, int]:
        data = self.data
        colon = data.find(b":", pos)
        if colon < 0:
            raise BencodeError("string length without ':'", pos)
        length_text = data[pos:colon]
        if not length_text.isdigit() or not length_text.isascii() or len(length_text) > 20:
            raise BencodeError(f"bad string length {length_text!r}", pos)
        if length_text[:1] == b"0" and len(length_text) > 1:
            raise BencodeError(f"non-canonical string length {length_text!r}", pos)
        length = int(length_text)
        start = colon + 1
        end = start + length
        if end > len(data):
            raise BencodeError(f"string of {length} bytes runs past the end", pos)
        return data[start:end], end


# --------------------------------------------------------------------------- helpers

def to_str_keys(value: Any) -> Any:
    """Decoded NG reply -> dicts with ``str`` keys and ``str`` values where the bytes are UTF-8.

    NG replies are text (SDP, tags, addresses); a byte string that is not valid UTF-8 stays
    ``bytes`` rather than being mangled.
    """
    if isinstance(value, dict):
        return {_text(k): to_str_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_str_keys(v) for v in value]
    if isinstance(value, bytes):
        return _text(value)
    return value


def _text(raw: bytes) -> Any:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw
