"""Issue 12, item 4 end to end: the real SBC process (signalling only, UDP PBX leg), the Teams
peer over mutual TLS, a UDP socket where the PBX is.

- `"\\0\\0"` as Teams' display name and `X-Nul: a\\0b` from either leg: 400 with the reason,
  nothing reaches the other leg.
- A Teams INVITE with a header just under the 8,192-character line limit: 513 with a Warning
  naming pbx.max_udp_size, no datagram to the PBX; an ordinary one still goes out, in one
  datagram under the limit.
"""
from __future__ import annotations

import asyncio
import secrets
import socket
import uuid

import pytest

from tests.support.pki import TEAMS_NAMES
from tests.support.ports import free_port
from tests.support.sbc import SbcProcess
from tests.support.teams_peer import TeamsPeer

pytestmark = pytest.mark.e2e


class Pbx:
    """A UDP socket at the PBX address: records datagrams, sends raw ones."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.got: list[bytes] = []

    async def recv_until(self, pred, timeout: float = 5.0) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for d in self.got:
                if pred(d):
                    return d
            try:
                self.got.append(await asyncio.wait_for(loop.sock_recv(self.sock, 70000),
                                                       max(0.01, deadline - loop.time())))
            except asyncio.TimeoutError:
                raise AssertionError(f"PBX: nothing matching within {timeout}s; got {self.got!r}") from None


def teams_invite(peer: TeamsPeer, extra: list[str] = (), from_display: str = "") -> tuple[str, str]:
    call_id = str(uuid.uuid4())
    text = peer._build_request(
        "INVITE", f"sip:+14255550100@{peer.sbc_fqdn}:{peer.sbc_port};user=phone;transport=tls",
        call_id=call_id, cseq=1,
        from_=f'{from_display}<sip:+12065550123@sip.pstnhub.microsoft.com:5061;user=phone>;tag={secrets.token_hex(4)}',
        to=f"<sip:+14255550100@{peer.sbc_fqdn};user=phone>", extra=list(extra))
    return text, call_id


async def final_to(peer: TeamsPeer, text: str, call_id: str):
    return (await peer._transact(text, call_id, 1, "INVITE", 10.0)).msg


async def test_control_characters_and_the_udp_size_rule_through_the_real_sbc(procs, tmp_path, test_pki):
    pbx = Pbx()
    peer_port = free_port("tcp")
    sbc = SbcProcess(tmp_path, procs, test_pki, pbx_port=pbx.port, pbx_transport="udp",
                     teams_resolve={n: peer_port for n in TEAMS_NAMES})
    peer = TeamsPeer(test_pki, sbc_port=sbc.teams_port)
    try:
        await peer.listen(peer_port)
        await asyncio.to_thread(sbc.start)
        d = lambda: peer.describe() + sbc.log()[-4000:]  # noqa: E731
        # NUL display name, NUL in a header value: 400 with the reason, nothing to the PBX
        for text, call_id in (teams_invite(peer, from_display='"\0\0" '),
                              teams_invite(peer, extra=["X-Nul: a\0b"])):
            resp = await final_to(peer, text, call_id)
            assert (resp.status, resp.start_line) == (400, "SIP/2.0 400 Control character in header value"), d()
            assert "\0" not in resp.raw, d()
        # the same from the PBX
        pbx_call = f"{secrets.token_hex(6)}@pbx"
        inv = (f"INVITE sip:02071234567@127.0.0.1:{sbc.pbx_listen_port} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP 127.0.0.1:{pbx.port};branch=z9hG4bK{secrets.token_hex(6)};rport\r\n"
               "Max-Forwards: 70\r\nFrom: <sip:01632960123@127.0.0.1>;tag=p1\r\nTo: <sip:02071234567@127.0.0.1>\r\n"
               f"Call-ID: {pbx_call}\r\nCSeq: 1 INVITE\r\nX-Nul: a\0b\r\nContent-Length: 0\r\n\r\n")
        pbx.sock.sendto(inv.encode(), ("127.0.0.1", sbc.pbx_listen_port))
        got = await pbx.recv_until(lambda x: pbx_call.encode() in x)
        assert got.startswith(b"SIP/2.0 400 Control character in header value\r\n") and b"\0" not in got, got
        # a header just under the line limit: 513 + Warning, no datagram to the PBX
        text, call_id = teams_invite(peer, extra=["X-MS-Huge: " + "h" * (8192 - len("X-MS-Huge: ") - 1)])
        resp = await final_to(peer, text, call_id)
        assert resp.status == 513, d()
        assert "exceeds pbx.max_udp_size (1472) for a UDP PBX trunk" in (resp.header("warning") or ""), d()
        # an ordinary call still reaches the PBX, in one datagram under the limit
        text, call_id = teams_invite(peer)
        pending = asyncio.get_running_loop().create_task(final_to(peer, text, call_id))
        first = await pbx.recv_until(lambda x: call_id.encode() in x)
        pending.cancel()
        assert first.startswith(b"INVITE ") and len(first) <= 1472, first
        assert not [x for x in pbx.got if len(x) > 1472 or b"\0" in x], [len(x) for x in pbx.got]
        assert not [x for x in pbx.got if x.startswith(b"INVITE ") and call_id.encode() not in x], pbx.got
    finally:
        await peer.close()
        pbx.sock.close()
