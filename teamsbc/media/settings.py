"""The `media:` section -> MediaSection, and the address syntax of rtpengine instances.

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
      down_after: 2                      # failed pings in a row -> instance down
      max_sdp_to_pbx: 1300               # bytes; larger SDP toward a UDP PBX refused
      max_media_lines: 8                 # an SDP (either leg) beyond any of these four: 488,
      max_sdp_size: 16384                #   with a Warning naming the limit, and nothing
      max_sdp_attributes: 256            #   goes to rtpengine
      max_sdp_line_length: 1024
      hold_inactive: true                # a=sendonly hold toward Teams as a=inactive
      sdes_lifetime: false               # send |2^31 in our keys toward Teams
      info_dtmf: false                   # SIP INFO DTMF from the PBX -> RFC 4733 toward Teams

Each `rtpengine` entry parses with `parse_instance` (precise ValueError messages for
`teamsbc check`); ng.py and pool.py use the parsed values.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping
from urllib.parse import urlsplit

from ..addresses import AddressError, parse_hostport
from ..settings import SettingsReader

DEFAULT_PBX_CODECS = ("PCMA", "PCMU", "G722", "telephone-event")


@dataclass(frozen=True, slots=True)
class MediaSection:
    rtpengine: tuple[str, ...] = ()   # NG addresses: udp:IP:PORT | http://IP:PORT | ws://IP:PORT [;weight=N]
    pbx_codecs: tuple[str, ...] = ("PCMA", "PCMU", "G722", "telephone-event")  # = DEFAULT_PBX_CODECS
    interfaces: tuple[str, str] | None = None   # rtpengine interface names (teams side, pbx side)
    timeout: float = 2.0              # one NG command, retransmissions included
    teams_ice: str = "lite"           # lite | remove: ICE toward Teams
    ping_interval: float = 5.0        # health pings to each rtpengine
    down_after: int = 2               # failed pings in a row -> instance down
    max_sdp_to_pbx: int = 1300        # bytes; a larger SDP toward a UDP PBX is refused with a reason
    hold_inactive: bool = True        # hold toward Teams as a=inactive (reference 8)
    sdes_lifetime: bool = False       # send |2^31 with our SDES keys toward Teams
    info_dtmf: bool = False           # INFO DTMF from the PBX played as RFC 4733 (rtpengine `play DTMF`)
    max_media_lines: int = 8          # SDP limits before anything reaches rtpengine (issue 12)
    max_sdp_size: int = 16384
    max_sdp_attributes: int = 256
    max_sdp_line_length: int = 1024


@dataclass(frozen=True, slots=True)
class NgAddress:
    scheme: Literal["udp", "http", "ws"]
    host: str
    port: int
    path: str = ""

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.scheme == "udp":
            return f"udp:{host}:{self.port}"
        return f"{self.scheme}://{host}:{self.port}{self.path}"

    @property
    def url(self) -> str:
        """HTTP: the POST target (``/ng`` unless a path was given); WS: the URL to open."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = "/ng" if self.scheme == "http" else "/"
        return f"{self.scheme}://{host}:{self.port}{self.path or default}"


def parse_address(text: str) -> NgAddress:
    """``udp:HOST:PORT``, ``http://HOST:PORT[/PATH]`` or ``ws://HOST:PORT[/PATH]``.

    IPv6 hosts in brackets (``udp:[::1]:22222``). Raises ValueError with the reason.
    """
    text = text.strip()
    if text.startswith("udp:") and not text.startswith("udp://"):
        try:
            hp = parse_hostport(text[4:])
        except AddressError as e:
            raise ValueError(f"{text!r}: expected udp:HOST:PORT ({e})") from None
        return NgAddress("udp", hp.host, hp.port)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "ws"):
        raise ValueError(f"{text!r}: expected udp:HOST:PORT, http://HOST:PORT or ws://HOST:PORT")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{text!r}: no query, fragment or user info allowed")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{text!r}: bad port") from None
    if not parts.hostname or port is None:
        raise ValueError(f"{text!r}: expected {parts.scheme}://HOST:PORT (port required)")
    return NgAddress(parts.scheme, parts.hostname, port, parts.path if parts.path != "/" else "")


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    address: NgAddress
    weight: int = 1

    def __str__(self) -> str:
        return f"{self.address}" if self.weight == 1 else f"{self.address};weight={self.weight}"


def parse_instance(spec: str | Mapping[str, Any] | InstanceSpec) -> InstanceSpec:
    """``udp:127.0.0.1:22222;weight=2`` or ``{"address": "...", "weight": 2}`` -> InstanceSpec.

    Raises ValueError with a message fit for ``teamsbc check``.
    """
    if isinstance(spec, InstanceSpec):
        return spec
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"address", "weight"}
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                             "expected address and weight")
        if "address" not in spec:
            raise ValueError("missing address (like udp:127.0.0.1:22222)")
        address, params = str(spec["address"]), {}
        if "weight" in spec:
            params["weight"] = spec["weight"]
    elif isinstance(spec, str):
        address, *rest = [p.strip() for p in spec.split(";")]
        params = {}
        for item in rest:
            key, sep, value = item.partition("=")
            if not sep or key.strip() != "weight":
                raise ValueError(f"{spec!r}: unknown parameter {item!r} (only weight=N)")
            params["weight"] = value.strip()
    else:
        raise ValueError(f"expected a string like udp:127.0.0.1:22222;weight=2, not {type(spec).__name__}")
    weight = params.get("weight", 1)
    if isinstance(weight, bool) or not (isinstance(weight, int) or str(weight).isdigit()):
        raise ValueError(f"{address}: weight must be a whole number >= 0, not {weight!r}")
    weight = int(weight)
    if weight > 1000:
        raise ValueError(f"{address}: weight {weight} is more than 1000")
    return InstanceSpec(parse_address(address), weight)


def parse_media(r: SettingsReader, data: dict) -> MediaSection:
    m = r.section(data, "media", {"rtpengine", "pbx_codecs", "interfaces", "timeout", "teams_ice",
                                  "ping_interval", "down_after", "max_sdp_to_pbx", "hold_inactive",
                                  "sdes_lifetime", "info_dtmf", "max_media_lines", "max_sdp_size",
                                  "max_sdp_attributes", "max_sdp_line_length"}, required=False)
    rtp = m.get("rtpengine", []) or []
    if not isinstance(rtp, list) or not all(isinstance(x, str) for x in rtp):
        r.err("media.rtpengine", "must be a list of rtpengine addresses like udp:127.0.0.1:22222")
        rtp = []
    for i, spec in enumerate(rtp):
        try:
            parse_instance(spec)
        except ValueError as e:
            r.err(f"media.rtpengine[{i}]", f"{spec!r}: {e} (e.g. udp:127.0.0.1:22222, http://10.0.0.7:8080;weight=2)")
    down_after = int(r.number(m, "media", "down_after", 2, 1, 100))
    max_sdp = int(r.number(m, "media", "max_sdp_to_pbx", 1300, 200, 65000))
    hold_inactive = r.bool_(m, "media", "hold_inactive", True)
    sdes_lifetime = r.bool_(m, "media", "sdes_lifetime", False)
    info_dtmf = r.bool_(m, "media", "info_dtmf", False)
    if info_dtmf and not rtp:
        r.err("media.info_dtmf", "needs media.rtpengine: rtpengine plays the digits as RFC 4733 "
                                 "events (without it INFO is refused with 405: set info_dtmf: false)")
    codecs = m.get("pbx_codecs", list(DEFAULT_PBX_CODECS))
    if not isinstance(codecs, list) or not codecs or not all(isinstance(x, str) and x for x in codecs):
        r.err("media.pbx_codecs", "must be a list of codec names the PBX decodes, e.g. [PCMA, PCMU, G722]")
        codecs = list(DEFAULT_PBX_CODECS)
    if "telephone-event" not in codecs:
        codecs.append("telephone-event")  # DTMF to Teams is RFC 4733 only (reference 8)
    ifaces_v = m.get("interfaces")
    ifaces = None
    if ifaces_v is not None:
        if isinstance(ifaces_v, dict) and set(ifaces_v) == {"teams", "pbx"} and all(isinstance(v, str) for v in ifaces_v.values()):
            ifaces = (ifaces_v["teams"], ifaces_v["pbx"])
        else:
            r.err("media.interfaces", "must be {teams: IFACE, pbx: IFACE} with rtpengine interface names")
    media_timeout = float(r.number(m, "media", "timeout", 2.0, 0.2, 30))
    teams_ice = r.str_(m, "media", "teams_ice", "lite", ("lite", "remove")) or "lite"
    ping_iv = float(r.number(m, "media", "ping_interval", 5.0, 0.5, 300))
    max_media = r.whole(m, "media", "max_media_lines", 8, 1, 64)
    max_size = r.whole(m, "media", "max_sdp_size", 16384, 1024, 65535)
    max_attrs = r.whole(m, "media", "max_sdp_attributes", 256, 16, 4096)
    max_line = r.whole(m, "media", "max_sdp_line_length", 1024, 128, 8192)
    worst = max_size + 2048 + 1024 * max_media   # sdp_policy.reply_bound of the largest SDP allowed
    if worst > UDP_NG_REPLY_MAX and any(_scheme(x) == "udp" for x in rtp):
        r.err("media.max_sdp_size", f"with media.max_media_lines {max_media}, rtpengine's reply could reach "
              f"{worst} bytes, more than one UDP datagram: lower them, or use http:// or ws:// for rtpengine")
    return MediaSection(tuple(rtp), tuple(codecs), ifaces, media_timeout, teams_ice, ping_iv,
                        down_after, max_sdp, hold_inactive, sdes_lifetime, info_dtmf, max_media, max_size,
                        max_attrs, max_line)


UDP_NG_REPLY_MAX = 65_535 - 28   # one UDP datagram over IPv4, without IP and UDP headers


def _scheme(spec: str) -> str:
    try:
        return parse_instance(spec).address.scheme
    except ValueError:
        return ""
