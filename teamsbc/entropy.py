"""Random bytes for the core, drawn from the kernel in blocks.

Every relayed INVITE takes a branch (RFC 3261 8.1.1.7), and every message toward Teams a
ChaCha20-Poly1305 nonce for its sealed Contact (sealing.py): a dozen `os.urandom` calls per
call, each a getrandom(2) system call that cost 30 us here under load (bench/results). The
pool asks the kernel for 4 KiB at a time and hands out slices: the same bytes, in the same
order they would have come, with one system call per ~300 draws.

A forked worker must never hand out the bytes its parent (or a sibling) also holds, or two
processes would seal with the same nonce under one key: the pool is emptied in every child
after fork (`os.register_at_fork`).
"""
from __future__ import annotations

import os

BLOCK = 4096


class EntropyPool:
    """`pool(n)` -> n random bytes, like os.urandom(n)."""

    __slots__ = ("_buf", "_at")

    def __init__(self) -> None:
        self._buf = b""
        self._at = 0

    def __call__(self, n: int) -> bytes:
        at = self._at
        end = at + n
        if end > len(self._buf):
            self._buf = os.urandom(max(BLOCK, n))
            at, end = 0, n
        self._at = end
        return self._buf[at:end]

    def forget(self) -> None:
        """Drop what is buffered (after fork: the parent holds the same bytes)."""
        self._buf = b""
        self._at = 0


POOL = EntropyPool()
os.register_at_fork(after_in_child=POOL.forget)
