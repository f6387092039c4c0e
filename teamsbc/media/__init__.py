"""Media anchoring with rtpengine: SRTP (SDES) toward Teams, RTP toward the PBX.

- :mod:`.bencode` -- the NG wire encoding.
- :mod:`.ng` -- one rtpengine instance over UDP, HTTP or WebSocket (``NgClient``).
- :mod:`.pool` -- several instances: weights, health, call ownership, failover (``MediaPool``).
- :mod:`.sdp_policy` -- which NG command, with which options and tags, at which moment of a
  call (pure functions).

Configuration (``media`` section): :mod:`.settings` (``MediaSection``, ``parse_instance``).
- :mod:`.stats` -- rtpengine's statistics of a call, parsed once (``MediaStats``).
- :mod:`.anchor` -- the MediaPlanner: which command at which moment of a call.

Nothing is imported here: `media.settings` (read by the config) must not pull in the NG
client's dependencies.
"""
