"""asyncio client for rtpengine's NG control protocol, one instance per client.

    client = NgClient("udp:127.0.0.1:22222")          # or http://HOST:PORT, ws://HOST:PORT
    reply = await client.request({"command": "offer", "call-id": ..., "sdp": ...})
    rtt = await client.ping()
    client.rtt.median(), client.rtt.p99()
    await client.close()

A message is ``COOKIE SP BENCODED-DICT``; the reply carries the same cookie. rtpengine caches
replies by cookie (across all its transports and clients), so cookies are random and a resent
cookie gets the cached reply without the command running twice. That makes UDP retransmission
safe: each request is resent with the SAME cookie after 0.2, 0.4, 0.8, 0.8... s until the
total timeout (2 s by default).

Transports (reference rtpengine.md, "NG control protocol"):

- ``udp:HOST:PORT`` -- a co-located rtpengine; fastest. Over a real network large NG messages
  (a Teams offer is ~1.5 KB, delete replies ~2 KB) fragment: use HTTP or WebSocket there.
- ``http://HOST:PORT[/PATH]`` -- ``POST /ng``, ``Content-Type: application/x-rtpengine-ng``,
  keep-alive connections (aiohttp ClientSession).
- ``ws://HOST:PORT[/PATH]`` -- subprotocol ``ng.rtpengine.com``. rtpengine 10.5 mixes up
  replies when several requests are in flight on one WebSocket, so each connection carries one
  request at a time; a small pool of connections gives concurrency.

Errors: :class:`NgTimeout` (no reply in time), :class:`NgConnectionError` (refused /
unreachable / connection lost), both :class:`NgUnavailable` ("this instance did not answer");
:class:`NgError` (rtpengine answered ``result: error``); :class:`NgProtocolError` (a reply
that is not NG).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import math
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

import aiohttp

from ..addresses import grow_receive_buffer
from .bencode import BencodeError, decode, encode, to_str_keys
from .sdp_policy import reply_bound
from .settings import NgAddress, parse_address

__all__ = [
    "NgAddress",
    "parse_address",
    "NgClient",
    "RttStats",
    "NgException",
    "NgUnavailable",
    "NgTimeout",
    "NgConnectionError",
    "NgError",
    "NgProtocolError",
    "NgTooLarge",
    "DEFAULT_TIMEOUT",
    "RETRANSMIT_INTERVALS",
    "CONTENT_TYPE",
    "WS_SUBPROTOCOL",
]

log = logging.getLogger("teamsbc.media.ng")

DEFAULT_TIMEOUT = 2.0
RETRANSMIT_INTERVALS = (0.2, 0.4, 0.8)  # UDP: wait this long before each resend; last repeats
CONTENT_TYPE = "application/x-rtpengine-ng"
WS_SUBPROTOCOL = "ng.rtpengine.com"
WS_CONNECTIONS = 4          # WebSocket: connections (= requests in flight) per instance
HTTP_CONNECTIONS = 16       # HTTP: keep-alive connections per instance
MAX_UDP_DATAGRAM = 65535
RTT_SAMPLES = 1000


# --------------------------------------------------------------------------- errors

class NgException(Exception):
    """Base of every NG client error. ``address`` names the instance."""

    def __init__(self, message: str, *, address: str | None = None) -> None:
        super().__init__(f"{address}: {message}" if address else message)
        self.address = address


class NgUnavailable(NgException):
    """The instance did not answer (timeout, refused, connection lost): try another one."""


class NgTimeout(NgUnavailable):
    """No reply within the timeout (UDP: after every retransmission)."""


class NgConnectionError(NgUnavailable):
    """The transport failed: port unreachable (ICMP), connection refused or lost."""


class NgError(NgException):
    """rtpengine answered ``result: error``; ``reason`` is its ``error-reason``."""

    def __init__(self, reason: str, *, command: str | None = None, address: str | None = None,
                 reply: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{command or 'command'} failed: {reason}", address=address)
        self.reason = reason
        self.command = command
        self.reply = dict(reply or {})


class NgTooLarge(NgException):
    """Refused before sending: the reply could not come back in one UDP datagram (rtpengine
    would drop it and the command would time out). Not the instance's fault: its health is
    untouched."""


class NgProtocolError(NgException):
    """A reply that is not a valid NG message (bad bencode, not a dict, no result, HTTP
    status other than 200, ...)."""


# --------------------------------------------------------------------------- addresses

# --------------------------------------------------------------------------- RTT statistics

class RttStats:
    """The last ``maxlen`` round-trip times (seconds) of successful requests."""

    def __init__(self, maxlen: int = RTT_SAMPLES) -> None:
        self.samples: collections.deque[float] = collections.deque(maxlen=maxlen)
        self.total = 0  # every sample ever recorded

    def record(self, seconds: float) -> None:
        self.samples.append(seconds)
        self.total += 1

    def __len__(self) -> int:
        return len(self.samples)

    def quantile(self, q: float) -> float | None:
        """Nearest-rank quantile of the kept samples (None when there are none)."""
        if not self.samples:
            return None
        ordered = sorted(self.samples)
        rank = min(len(ordered), max(1, math.ceil(q * len(ordered) - 1e-9)))
        return ordered[rank - 1]

    def median(self) -> float | None:
        return self.quantile(0.5)

    def p99(self) -> float | None:
        return self.quantile(0.99)

    def summary(self) -> dict[str, float | int | None]:
        return {"count": len(self.samples), "median": self.median(), "p99": self.p99(),
                "max": max(self.samples) if self.samples else None}


# --------------------------------------------------------------------------- client

def new_cookie() -> bytes:
    """A cookie unique across clients and restarts: rtpengine's reply cache is global."""
    return secrets.token_hex(8).encode("ascii")


def split_message(data: bytes) -> tuple[bytes, bytes]:
    """``COOKIE SP BODY`` -> (cookie, body); NgProtocolError if there is no cookie."""
    cookie, sep, body = bytes(data).partition(b" ")
    if not sep or not cookie:
        raise NgProtocolError(f"reply without a cookie: {bytes(data[:40])!r}")
    return cookie, body


class NgClient:
    """One rtpengine instance. Safe for many concurrent ``request()`` calls."""

    def __init__(
        self,
        address: str | NgAddress,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retransmit_intervals: Sequence[float] = RETRANSMIT_INTERVALS,
        ws_connections: int = WS_CONNECTIONS,
        http_connections: int = HTTP_CONNECTIONS,
        rtt_samples: int = RTT_SAMPLES,
    ) -> None:
        self.address = parse_address(address) if isinstance(address, str) else address
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        if not retransmit_intervals or min(retransmit_intervals) <= 0:
            raise ValueError("retransmit_intervals must be positive")
        self.timeout = timeout
        self.rtt = RttStats(rtt_samples)
        self.rtt_by_command: dict[str, RttStats] = collections.defaultdict(lambda: RttStats(rtt_samples))
        self.sent = 0            # requests started
        self.retransmissions = 0  # UDP resends
        if self.address.scheme == "udp":
            self._transport: _Transport = _UdpTransport(self, tuple(retransmit_intervals))
        elif self.address.scheme == "http":
            self._transport = _HttpTransport(self, http_connections)
        else:
            self._transport = _WsTransport(self, ws_connections)

    def __repr__(self) -> str:
        return f"<NgClient {self.address}>"

    async def request(self, command: Mapping[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
        """Send one NG command (a dict with ``command``); return the decoded reply (str keys,
        UTF-8 values as str). Raises NgError when rtpengine says ``result: error``."""
        name = command.get("command")
        if not name:
            raise ValueError("an NG command needs a 'command' key")
        try:
            payload = encode(dict(command))
        except BencodeError as exc:
            raise ValueError(f"cannot encode the {name} command: {exc}") from None
        if self.address.scheme == "udp" and "sdp" in command:
            bound = reply_bound(str(command["sdp"]))
            if bound > MAX_UDP_DATAGRAM - 28:
                raise NgTooLarge(f"the reply to this {name} could reach {bound} bytes, more than one UDP "
                                 "datagram: lower media.max_sdp_size / max_media_lines, or reach this "
                                 "rtpengine over http:// or ws://", address=str(self.address))
        cookie = new_cookie()
        limit = self.timeout if timeout is None else timeout
        self.sent += 1
        started = time.monotonic()
        body = await self._transport.exchange(cookie, payload, limit, str(name))
        elapsed = time.monotonic() - started
        reply = self._decode(body, str(name))
        self.rtt.record(elapsed)
        self.rtt_by_command[str(name)].record(elapsed)
        if reply.get("result") == "error":
            reason = reply.get("error-reason", "no error-reason given")
            raise NgError(str(reason), command=str(name), address=str(self.address), reply=reply)
        return reply

    async def ping(self, *, timeout: float | None = None) -> float:
        """Round-trip time of a ``ping`` in seconds; NgProtocolError if the answer is not pong."""
        started = time.monotonic()
        reply = await self.request({"command": "ping"}, timeout=timeout)
        if reply.get("result") != "pong":
            raise NgProtocolError(f"ping answered {reply.get('result')!r}", address=str(self.address))
        return time.monotonic() - started

    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> "NgClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def _decode(self, body: bytes, name: str) -> dict[str, Any]:
        try:
            value = decode(body)
        except BencodeError as exc:
            raise NgProtocolError(f"bad bencode in the {name} reply: {exc}",
                                  address=str(self.address)) from None
        if not isinstance(value, dict):
            raise NgProtocolError(f"the {name} reply is not a dictionary", address=str(self.address))
        reply = to_str_keys(value)
        if "result" not in reply:
            raise NgProtocolError(f"the {name} reply has no result", address=str(self.address))
        return reply


class _Transport:
    def __init__(self, client: NgClient) -> None:
        self.client = client
        self.name = str(client.address)

    async def exchange(self, cookie: bytes, payload: bytes, timeout: float, command: str) -> bytes:
        raise NotImplementedError

    async def close(self) -> None:
        pass

    def timeout_error(self, command: str, timeout: float, detail: str = "") -> NgTimeout:
        return NgTimeout(f"no reply to {command} within {timeout:g} s{detail}", address=self.name)


# --------------------------------------------------------------------------- UDP

class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, owner: "_UdpTransport") -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr) -> None:
        self.owner.received(data)

    def error_received(self, exc: Exception) -> None:
        self.owner.failed(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.lost()


class _UdpTransport(_Transport):
    """One connected UDP socket per instance; replies matched to requests by cookie."""

    def __init__(self, client: NgClient, intervals: tuple[float, ...]) -> None:
        super().__init__(client)
        self.intervals = intervals
        self.pending: dict[bytes, asyncio.Future[bytes]] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self._opening: asyncio.Lock | None = None

    async def _socket(self) -> asyncio.DatagramTransport:
        if self.transport is not None and not self.transport.is_closing():
            return self.transport
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self.transport is None or self.transport.is_closing():
                loop = asyncio.get_running_loop()
                addr = self.client.address
                try:
                    self.transport, _ = await loop.create_datagram_endpoint(
                        lambda: _UdpProtocol(self), remote_addr=(addr.host, addr.port))
                except OSError as exc:
                    raise NgConnectionError(f"cannot open UDP socket: {exc}", address=self.name) from None
                # replies (~2 KB each) pile up while the event loop is busy: room for bursts,
                # or lost replies make a healthy rtpengine look down (seen at 400 calls/s)
                grow_receive_buffer(self.transport.get_extra_info("socket"), "rtpengine NG")
            return self.transport

    async def exchange(self, cookie: bytes, payload: bytes, timeout: float, command: str) -> bytes:
        sock = await self._socket()
        message = cookie + b" " + payload
        if len(message) > MAX_UDP_DATAGRAM - 28:
            raise ValueError(f"{command} is {len(message)} bytes: too large for UDP NG")
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.pending[cookie] = fut
        deadline = time.monotonic() + timeout
        waits = itertools.chain(self.intervals, itertools.repeat(self.intervals[-1]))
        try:
            first = True
            while True:
                if not first:
                    self.client.retransmissions += 1
                sock.sendto(message)
                first = False
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self.timeout_error(command, timeout)
                wait = min(next(waits), remaining)
                try:
                    # shield: a timeout must not cancel the future (a late reply may still come)
                    return await asyncio.wait_for(asyncio.shield(fut), wait)
                except asyncio.TimeoutError:
                    if time.monotonic() >= deadline:
                        raise self.timeout_error(command, timeout) from None
        finally:
            self.pending.pop(cookie, None)
            if not fut.done():
                fut.cancel()

    def received(self, data: bytes) -> None:
        try:
            cookie, body = split_message(data)
        except NgProtocolError:
            log.warning("%s: datagram without a cookie ignored", self.name)
            return
        fut = self.pending.get(cookie)
        if fut is None:
            # A second reply to a retransmitted request, or a reply after the timeout.
            log.debug("%s: reply for unknown cookie %r ignored", self.name, cookie)
            return
        if not fut.done():
            fut.set_result(body)

    def failed(self, exc: Exception) -> None:
        # ICMP port unreachable on a connected socket: nothing listens there now. Fail every
        # request in flight at once rather than waiting for the timeout (fast failover).
        error = NgConnectionError(f"UDP error: {exc}", address=self.name)
        for fut in list(self.pending.values()):
            if not fut.done():
                fut.set_exception(error)

    def lost(self) -> None:
        self.transport = None

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


# --------------------------------------------------------------------------- HTTP

_HTTP_HEADERS = {"Content-Type": CONTENT_TYPE}


class _HttpTransport(_Transport):
    """``POST /ng`` over keep-alive connections (one aiohttp ClientSession per instance)."""

    def __init__(self, client: NgClient, connections: int) -> None:
        super().__init__(client)
        self.connections = connections
        self.session = None

    def _session(self):
        if self.session is None or self.session.closed:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.connections, keepalive_timeout=30))
        return self.session

    async def exchange(self, cookie: bytes, payload: bytes, timeout: float, command: str) -> bytes:
        session = self._session()
        url = self.client.address.url
        data = cookie + b" " + payload
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self.timeout_error(command, timeout)
            try:
                async with asyncio.timeout(remaining):
                    async with session.post(url, data=data, headers=_HTTP_HEADERS) as resp:
                        body = await resp.read()
                        if resp.status != 200:
                            raise NgProtocolError(
                                f"HTTP {resp.status} {resp.reason} for {command}", address=self.name)
                break
            except TimeoutError:
                raise self.timeout_error(command, timeout) from None
            except aiohttp.ClientConnectorError as exc:
                raise NgConnectionError(f"cannot connect: {exc}", address=self.name) from None
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                # A keep-alive connection the server closed between requests: resend once, with
                # the same cookie (a command that did run is not run twice).
                if attempt >= 2:
                    raise NgConnectionError(f"connection lost: {exc!r}", address=self.name) from None
            except aiohttp.ClientError as exc:
                raise NgProtocolError(f"HTTP error: {exc!r}", address=self.name) from None
        got, reply = split_message(body)
        if got != cookie:
            raise NgProtocolError(f"reply cookie {got!r} does not match {cookie!r}", address=self.name)
        return reply

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None


# --------------------------------------------------------------------------- WebSocket

class _WsTransport(_Transport):
    """A pool of WebSocket connections, one request in flight on each (rtpengine 10.5 mixes up
    replies of concurrent requests on one connection; fixed upstream in 12.5/13.4)."""

    def __init__(self, client: NgClient, connections: int) -> None:
        super().__init__(client)
        if connections < 1:
            raise ValueError("ws_connections must be >= 1")
        self.idle: list = []        # open connections with nothing in flight
        self.slots = asyncio.Semaphore(connections)  # requests in flight = connections in use
        self.session = None

    def _session(self):
        if self.session is None or self.session.closed:
            self.session = aiohttp.ClientSession()
        return self.session

    async def exchange(self, cookie: bytes, payload: bytes, timeout: float, command: str) -> bytes:
        deadline = time.monotonic() + timeout
        try:
            async with asyncio.timeout(timeout):
                await self.slots.acquire()
        except TimeoutError:
            raise self.timeout_error(command, timeout, " (all WebSocket connections busy)") from None
        ws = None
        try:
            ws = self.idle.pop() if self.idle else None
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                if ws is None or ws.closed:
                    try:
                        ws = await self._session().ws_connect(
                            self.client.address.url, protocols=[WS_SUBPROTOCOL], autoping=True)
                    except (aiohttp.ClientConnectorError, aiohttp.WSServerHandshakeError,
                            OSError) as exc:
                        ws = None
                        raise NgConnectionError(f"cannot open WebSocket: {exc}", address=self.name) from None
                await ws.send_bytes(cookie + b" " + payload)
                while True:
                    msg = await ws.receive()
                    if msg.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                        data = msg.data if isinstance(msg.data, bytes) else msg.data.encode("utf-8")
                        got, body = split_message(data)
                        if got == cookie:
                            break
                        # a stale reply of an earlier, timed-out request on this connection
                        log.debug("%s: WebSocket reply for another cookie %r ignored", self.name, got)
                        continue
                    if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                                    aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        raise NgConnectionError(f"WebSocket closed ({msg.type.name})", address=self.name)
            self.idle.append(ws)
            ws = None
            return body
        except TimeoutError:
            raise self.timeout_error(command, timeout) from None
        except aiohttp.ClientError as exc:
            raise NgConnectionError(f"WebSocket error: {exc!r}", address=self.name) from None
        finally:
            if ws is not None:  # failed or timed out mid-request: the connection is not reusable
                await ws.close()
            self.slots.release()

    async def close(self) -> None:
        while self.idle:
            await self.idle.pop().close()
        if self.session is not None:
            await self.session.close()
            self.session = None
