"""Check `media`: rtpengine configured and answering an NG ping. Teams accepts only SRTP
(SDES) with rtcp-mux; without rtpengine the SBC passes the PBX's plain RTP through and Teams
answers 488 (reference section 9). With several rtpengines, one answering is enough (a FAIL of
the others becomes a WARN: the pool carries the calls).
"""
from __future__ import annotations

from ..config import Config
from ..media.ng import NgClient, NgException
from .report import FAIL, PASS, WARN, Result


async def check(config: Config, timeout: float) -> list[Result]:
    check = "media"
    addrs = config.media.rtpengine
    if not addrs:
        return [Result(WARN, check, "no media.rtpengine: SDP passes unchanged, so Teams gets the PBX's "
                                    "plain RTP and answers 488 unless the PBX itself offers SRTP (SDES) "
                                    "with rtcp-mux",
                       "install rtpengine (install.sh --with-rtpengine) and set media.rtpengine: "
                       "[udp:127.0.0.1:22222]")]
    out = []
    for spec in addrs:
        addr = spec.split(";", 1)[0]
        client = NgClient(addr, timeout=min(timeout, 2.0))
        try:
            rtt = await client.ping()
            out.append(Result(PASS, f"{check} {addr}", f"rtpengine answers NG ping in {rtt * 1000:.1f} ms"))
        except (NgException, OSError, ValueError) as e:
            out.append(Result(FAIL, f"{check} {addr}", f"rtpengine does not answer: {e}",
                              "systemctl status rtpengine-daemon (listen-ng must match media.rtpengine)"))
        finally:
            await client.close()
    if len(out) > 1 and any(r.status == PASS for r in out):
        for r in out:
            if r.status == FAIL:
                r.status = WARN  # others carry the calls
    return out
