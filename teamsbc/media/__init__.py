"""Media anchoring with rtpengine: SRTP (SDES) toward Teams, RTP toward the PBX.

- :mod:`.bencode` -- the NG wire encoding.
- :mod:`.ng` -- one rtpengine instance over UDP, HTTP or WebSocket (``NgClient``).
- :mod:`.pool` -- several instances: weights, health, call ownership, failover (``MediaPool``).
- :mod:`.sdp_policy` -- which NG command, with which options and tags, at which moment of a
  call (pure functions).

Configuration (``media`` section). The first six keys are the ones teamsbc.config already
reads; the last four are proposed (defaults in brackets)::

    media:
      rtpengine:                         # [] = signalling only, no media anchoring
        - udp:127.0.0.1:22222            # co-located rtpengine: UDP NG
        - http://10.0.0.7:8080;weight=2  # remote: HTTP keep-alive POST /ng
        - ws://10.0.0.8:8080;weight=0    # remote: WebSocket; weight 0 = backup only
      pbx_codecs: [PCMA, PCMU, G722, telephone-event]   # kept toward the PBX, others stripped
      interfaces: {teams: pub, pbx: priv}  # rtpengine --interface names, or absent
      timeout: 2.0                       # s per NG command, UDP retransmissions included
      teams_ice: lite                    # lite | remove
      ping_interval: 5.0                 # s between health pings of each instance
      down_after: 2                      # proposed: failed pings in a row -> instance down
      max_sdp_to_pbx: 1300               # proposed: bytes; larger SDP toward a UDP PBX refused
      hold_inactive: true                # proposed: a=sendonly hold toward Teams as a=inactive
      sdes_lifetime: false               # proposed: send |2^31 in our keys toward Teams

Each ``rtpengine`` entry parses with :func:`parse_instance` (precise ValueError messages for
``teamsbc check``); the pool is ``MediaPool(media.rtpengine, timeout=media.timeout,
ping_interval=media.ping_interval)``.
"""

from .bencode import BencodeError, decode, encode
from .ng import (
    NgClient,
    NgConnectionError,
    NgError,
    NgException,
    NgProtocolError,
    NgTimeout,
    NgUnavailable,
    RttStats,
    parse_address,
)
from .pool import InstanceSpec, MediaPool, NoMediaAvailable, UnknownCall, parse_instance

__all__ = [
    "BencodeError",
    "decode",
    "encode",
    "NgClient",
    "NgConnectionError",
    "NgError",
    "NgException",
    "NgProtocolError",
    "NgTimeout",
    "NgUnavailable",
    "RttStats",
    "parse_address",
    "InstanceSpec",
    "MediaPool",
    "NoMediaAvailable",
    "UnknownCall",
    "parse_instance",
]
