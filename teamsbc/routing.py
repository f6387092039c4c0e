"""The routing story: what happens to a request from Teams and to one from the PBX.

Read it like a kamailio.cfg request_route: policy only. The mechanics (transactions, Via,
Record-Route insertion, failover timers) live in proxy.py; Teams' header rules in teams.py;
peer health in health.py.

    request on the PBX leg from anywhere but a configured PBX  -> 403 (never relayed)
    OPTIONS outside a dialog                    -> answered here (keep-alive), never forwarded
    in-dialog request (To tag)                  -> follows the route set we built; crosses to the other side
    new call from Teams                         -> its PBX trunk (by tenant FQDN); 503 at once if that PBX is down
    new call from the PBX                       -> Teams: sip, sip2, sip3 (those not down), next one on
                                                   silence, transport failure, 408 or 503
    new call from the PBX to a Teams host       -> a transfer target (a Refer-To: +E.164 or no user): the
                                                   same proxies, the Request-URI unchanged (transfer.py)
    UPDATE, INFO in a dialog from the PBX       -> answered here, never relayed (pbx_requests.py)
"""
from __future__ import annotations

import os
from typing import Callable

from .addresses import HostPort
from .config import Config
from .trunk_settings import TenantSection
from .decisions import (PBX, TEAMS, Destination, DialogHop, Drop, Forward, Leg, Reply, Source,
                        Target)
from .digest import AUTH_EXEMPT, DigestAuth
from .health import HealthBook
from .pbx_requests import allow_toward_pbx, info_answer, update_answer
from .sealing import Keyring
from .sip.build import branch, new_request
from .sip.errors import MessageTooLarge, ParseError
from .sip.message import Message, Request, Response
from .sip.uri import SipUri, format_params, parse_name_addr, parse_uri
from .teams import (USER_AGENT, X_MS_SBC, Forged, TeamsIdentity, e164_address,
                    rewrite_toward_teams, to_e164)
from .transfer import TransferBook, refer_to_uri, refused_target

# failure_route: a Teams proxy answering these (or silent, or unreachable) is skipped for the
# next one (reference section 5); never after 603 or once a provisional went to the caller.
FAILOVER_CODES = frozenset({408, 503})


def pbx_peer(hp: HostPort) -> str:
    """The name of a PBX trunk in the health book."""
    return f"pbx {hp}"


class Router:
    """The RoutingPolicy of decisions.py."""

    def __init__(self, config: Config, health: HealthBook | None = None, *,
                 entropy: Callable[[int], bytes] = os.urandom, keys: Keyring | None = None,
                 owns: Callable[[str], bool] | None = None):
        """`keys`: what seals x-tsbc-c and x-tsbc-rr (teamsbc.keyfile); without them a
        throwaway key (a Router that only looks, like doctor's samples)."""
        self.config = config
        self.entropy = entropy
        # with sbc.workers, the Call-IDs of our own requests must be this worker's (workers.py)
        self.owns_call_id = owns or (lambda call_id: True)
        self.health = health or HealthBook()
        self.teams = TeamsIdentity(config, keys, entropy=entropy)
        pbx = config.pbx
        self.pbx_dest = Destination(PBX, pbx.transport, pbx.address.host, pbx.address.port)
        self.tenants = config.teams.tenants
        self.hiding = config.security.topology_hiding
        self.udp_limit = pbx.max_udp_size if pbx.transport == "udp" else 0
        self.auth = DigestAuth(config.pbx.auth) if config.pbx.auth else None
        self.pbx_hosts = {pbx.address.host} | {t.pbx.host for t in self.tenants.values() if t.pbx}
        self.pbx_rr = f"<sip:{pbx.listen}{';transport=tcp' if pbx.transport == 'tcp' else ''};lr;r2=on>"
        self.legs = {
            TEAMS: Leg(TEAMS, "tls", self.teams.fqdn, self.teams.port, self.teams.record_route()),
            PBX: Leg(PBX, pbx.transport, pbx.listen.host, pbx.listen.port, self.pbx_rr),
        }
        self.transfers = TransferBook()
        self.media_anchored = bool(config.media.rtpengine)
        self.info_dtmf = config.media.info_dtmf
        self.prack_here = pbx.prack == "strip"
        self.allow_pbx = allow_toward_pbx(self.prack_here, self.info_dtmf)

    # ------------------------------------------------------------------ the story
    def request(self, req: Request, src: Source, now: float) -> Reply | Forward | Drop:
        if src.leg == PBX and src.addr[0] not in self.pbx_hosts:
            return Reply(403, "Forbidden", log=f"{src.addr[0]} is not a configured PBX")
        if src.leg == PBX and self.auth is not None and req.to_addr.tag is None \
                and req.method not in AUTH_EXEMPT:
            refusal = self.authenticate(req, now)
            if refusal is not None:
                return refusal
        if req.method == "REGISTER" and src.leg == PBX:
            return self.register_answer(req)
        if req.method == "OPTIONS" and not req.to_addr.tag:
            return self.keepalive_answer(src.leg, now)
        if req.to_addr.tag is not None:
            try:
                return self.in_dialog(req, src, now)
            except Forged as e:
                # never routed: a forged target would make us an open relay (docs/ha.md)
                return Reply(403, "Forbidden", log=f"{req.method} from {src.addr[0]}: {e}")
        if src.leg == TEAMS:
            return self.call_from_teams(req, now)
        return self.call_from_pbx(req, src, now)

    def call_from_teams(self, req: Request, now: float) -> Reply | Forward:
        """Teams -> PBX: the R-URI names our FQDN (or a tenant's); the number goes to that PBX."""
        if req.method != "INVITE":
            return Reply(405, "Method Not Allowed", [("Allow", self.teams.allow)])
        ruri = req.ruri
        identity = ruri.host.lower().rstrip(".")
        if identity not in self.teams.names:
            return Reply(404, "Not Found", log=f"R-URI host {ruri.host} is not this SBC or one of its tenants")
        trunk = self.trunk_for(self.tenants.get(identity))
        if not self.health.usable(pbx_peer(trunk), now):
            # answer at once so Teams fails over to another SBC inside its 10 s (reference 6)
            return Reply(503, "Service Unavailable", [("Retry-After", "30")],
                         log=f"PBX {trunk} is down")
        dest = Destination(PBX, self.config.pbx.transport, trunk.host, trunk.port)
        return Forward(req, [Target(dest, self.pbx_uri(ruri, trunk))],
                       record_route=[self.pbx_rr, self.teams.record_route(identity)], identity=identity)

    def call_from_pbx(self, req: Request, src: Source, now: float) -> Reply | Forward:
        """PBX -> Teams: +E.164 everywhere, sip/sip2/sip3 in order (reference section 5)."""
        if req.method != "INVITE":
            return Reply(405, "Method Not Allowed", [("Allow", self.allow_pbx)])
        if not req.body and not self.media_anchored:
            # Teams needs the offer in the INVITE (reference section 5); with rtpengine the
            # SBC makes it (late_offer.py)
            return Reply(488, "Delayed Offer Not Supported", [(
                "Warning", f'399 {self.teams.fqdn} "INVITE without SDP (delayed offer) is not supported '
                           'by Teams without media.rtpengine: enable early offer on the PBX trunk"')],
                log="INVITE without SDP from the PBX (delayed offer) and no rtpengine")
        if "route" in req.headers:  # preloaded by the PBX (its outbound proxy): popped; where calls go
            self.pop_own_routes(req)  # is decided here, so nothing else of it is relayed
            req.headers.remove("route")
        ruri = req.ruri
        if self.teams.is_teams_host(ruri.host) and (ruri.user is None or ruri.user.startswith("+")):
            return self.transfer_target(req, src, now)
        number = to_e164(ruri.user or "", self.config.numbers)
        if number is None:
            return Reply(484, "Address Incomplete", log=f"{req.ruri.user!r} cannot be made +E.164 "
                         "(not a number, or a national number without numbers.country_code)")
        port = self.config.teams.port
        return self.toward_teams(req, src, now, lambda p: f"sip:{number}@{p}:{port};user=phone;transport=tls")

    def transfer_target(self, req: Request, src: Source, now: float) -> Reply | Forward:
        """The transferee's INVITE to a Refer-To URI (transfer.py): the same Teams proxies, the
        Request-URI and Referred-By exactly as Teams wrote them (reference 7)."""
        why = refused_target(req.ruri)
        if why is not None:
            return Reply(484, "Address Incomplete", log=f"INVITE to a Teams host: {why}")
        ruri = req.uri
        if "referred-by" not in req.headers:
            referred_by = self.transfers.referred_by(ruri, now)
            if referred_by is not None:
                req.headers.add("referred-by", referred_by)
        return self.toward_teams(req, src, now, lambda p: ruri, first=req.ruri.host_bare)

    def toward_teams(self, req: Request, src: Source, now: float, ruri_for: Callable[[str], str],
                     first: str | None = None) -> Forward:
        """A new call to Teams: numbers as +E.164 where there is one, the tenant's identity,
        the Teams proxies that are not down, in order (`first` ahead when it is one of them)."""
        identity = self.tenant_of_call(req, src)
        self.normalise_numbers(req, identity or self.teams.fqdn)
        req.headers.remove("proxy-authorization")  # the PBX's credentials stay here
        proxies = [p for p in self.config.teams.proxies if self.health.usable(p, now)]
        if not proxies:
            proxies = list(self.config.teams.proxies)  # all marked down: try them anyway, in order
        if first in proxies:
            proxies.remove(first)
            proxies.insert(0, first)
        targets = [Target(self.teams_dest(p), ruri_for(p)) for p in proxies]
        return Forward(req, targets, record_route=[self.teams.record_route(identity), self.pbx_rr],
                       failover=True, identity=identity)

    def in_dialog(self, req: Request, src: Source, now: float) -> Reply | Forward:
        """Follow the route set: our own Route entries are popped; the request crosses sides."""
        popped = self.pop_own_routes(req)
        if src.leg == TEAMS:
            original = self.teams.original_target(req.ruri)
            if not popped and original is None:
                return Reply(403, "Forbidden", log="in-dialog request outside any route set of ours")
            identity = self.teams.name_of(req.ruri) or next(
                (n for n in map(self.teams.name_of, popped) if n), None)
            target = parse_uri(original) if original else req.ruri.copy()
            target.headers = None  # never relay escaped headers (RFC 4475 3.1.2.11)
            if req.method == "REFER":
                self.remember_refer(req, now)
            return Forward(req, [Target(self.pbx_dest_for(target), str(target))], identity=identity)
        if not popped:
            return Reply(403, "Forbidden", log="in-dialog request from the PBX without our Route")
        local = self.answer_for_pbx(req)
        if local is not None:
            return local
        identity = next((n for n in map(self.teams.name_of, popped) if n), None)
        routes = req.headers.get_all("route")
        hop = parse_name_addr(routes[0]).sip_uri() if routes else req.ruri
        if not self.teams.is_teams_host(hop.host):
            return Reply(403, "Forbidden", log=f"next hop {hop.host} is not a Teams host")
        ruri = req.ruri.copy()
        ruri.headers = None
        return Forward(req, [Target(self.teams_dest(hop.host_bare, hop.port), str(ruri))], identity=identity)

    def answer_for_pbx(self, req: Request) -> Reply | None:
        """What Teams' Allow lacks is answered here (pbx_requests.py); None = relay it."""
        if req.method == "UPDATE":
            return update_answer(req)
        if req.method == "INFO":
            return info_answer(req, self.media_anchored and self.info_dtmf, self.allow_pbx)
        if req.method == "PRACK" and self.prack_here:
            # the proxy has already answered the PRACKs of our reliable provisionals
            return Reply(481, "Call/Transaction Does Not Exist", log="PRACK for no reliable provisional of ours")
        return None

    def remember_refer(self, req: Request, now: float) -> None:
        """A REFER from Teams on its way to the PBX: its Referred-By, for the transferee's INVITE."""
        target = refer_to_uri(req.headers.get("refer-to"))
        referred_by = req.headers.get("referred-by")
        if target and referred_by:
            self.transfers.remember(target, referred_by, now)

    # ------------------------------------------------------------------ PBX authentication
    def authenticate(self, req: Request, now: float) -> Reply | None:
        """pbx.auth: new requests from the PBX carry Digest credentials (RFC 3261 22)."""
        register = req.method == "REGISTER"
        header = req.headers.get("authorization" if register else "proxy-authorization")
        ok, stale, why = self.auth.check(req.method, header, now)  # type: ignore[union-attr]
        if ok:
            return None
        code, reason, name = ((401, "Unauthorized", "WWW-Authenticate") if register else
                              (407, "Proxy Authentication Required", "Proxy-Authenticate"))
        return Reply(code, reason, [(name, self.auth.challenge(now, stale))],  # type: ignore[union-attr]
                     log=None if why == "no credentials" else f"PBX authentication failed: {why}")

    def register_answer(self, req: Request) -> Reply:
        """A PBX that registers to its trunk: accepted (calls to it still go to pbx.address)."""
        contacts = req.headers.get_all("contact")
        expires = req.headers.get("expires") or "3600"
        return Reply(200, "OK", [("Contact", c) for c in contacts] + [("Expires", expires)])

    # ------------------------------------------------------------------ keep-alive
    def keepalive_answer(self, leg: str, now: float) -> Reply:
        """OPTIONS to us: 200 with what we are (reference section 4)."""
        if leg == TEAMS:
            self.health.teams_pinged(now)
            trunk = self.config.pbx.address
            if self.config.teams.options_503_when_pbx_down and not self.health.usable(pbx_peer(trunk), now):
                return Reply(503, "Service Unavailable", [("Retry-After", "30")],
                             log="PBX is down and teams.options_503_when_pbx_down is set")
            allow = self.teams.allow
        else:
            allow = self.allow_pbx
        return Reply(200, "OK", [("Contact", self.own_contact(leg)), ("Allow", allow),
                                 ("Accept", "application/sdp"), ("Supported", "timer"),
                                 ("Server", USER_AGENT)])

    def options_request(self, peer: str) -> tuple[Request, Destination]:
        """The OPTIONS we send: to a Teams proxy (over our own TLS connection) or to a PBX."""
        tag, token = self.entropy(6).hex(), self.entropy(8).hex()
        callid = self.entropy(10).hex()
        while not self.owns_call_id(f"{callid}@{self.teams.fqdn}"):
            callid = self.entropy(10).hex()  # the answer must come back to this worker
        if peer.startswith("pbx "):
            trunk = next(hp for hp in self.trunks() if pbx_peer(hp) == peer)
            dest = Destination(PBX, self.config.pbx.transport, trunk.host, trunk.port)
            me = str(self.config.pbx.listen)
            via = self.legs[PBX].via(dest.transport, branch(token))
            uri, from_uri, contact = f"sip:{trunk}", f"sip:teamsbc@{me}", f"<sip:{me};transport={dest.transport}>"
            to_uri = uri
            allow = self.allow_pbx
        else:
            dest = self.teams_dest(peer)
            me = f"{self.teams.fqdn}:{self.teams.port}"
            via = self.legs[TEAMS].via("tls", branch(token))
            uri, from_uri, to_uri = f"sip:{peer}:{dest.port};transport=tls", f"sip:{me}", f"sip:{peer}"
            contact = f"<sip:{me};transport=tls>"
            allow = self.teams.allow
        req = new_request("OPTIONS", uri, via=via, from_=f"<{from_uri}>;tag={tag}", to=f"<{to_uri}>",
                          call_id=f"{callid}@{self.teams.fqdn}", cseq=1,
                          extra=[("contact", contact), ("allow", allow), ("accept", "application/sdp"),
                                 ("user-agent", USER_AGENT)])
        if dest.leg == TEAMS:
            req.headers.add("x-ms-sbc", X_MS_SBC)
        return req, dest

    def ping_targets(self) -> list[tuple[str, float, float]]:
        """(peer, interval, timeout) for every peer we keep alive. OPTIONS go only for the
        base FQDN, never per tenant (reference section 3)."""
        t = self.config.teams
        out = [(p, t.options_interval, t.options_timeout) for p in t.proxies] if t.options_interval > 0 else []
        if self.config.pbx.options_interval > 0:
            out += [(pbx_peer(hp), self.config.pbx.options_interval, self.config.pbx.options_timeout)
                    for hp in self.trunks()]
        return out

    # ------------------------------------------------------------------ failure_route
    def retry_next(self, forward: Forward, status: int | None) -> bool:
        """A Teams proxy failed the call: the next one gets it (reference 5), never after 603."""
        return forward.failover and (status is None or status in FAILOVER_CODES)

    def peer_answered(self, dest: Destination, status: int, retry_after: float | None, now: float) -> None:
        if dest.leg == TEAMS and dest.host in self.config.teams.proxies:
            self.health.response(dest.host, now, status, retry_after)

    def peer_failed(self, dest: Destination, reason: str, now: float) -> None:
        if dest.leg == TEAMS:
            if dest.host in self.config.teams.proxies:
                self.health.failed(dest.host, now, reason)
        else:
            name = pbx_peer(HostPort(dest.host, dest.port))
            if name in self.health.peers or self.config.pbx.options_interval > 0:
                self.health.failed(name, now, reason)

    # ------------------------------------------------------------------ what leaves on each leg
    def egress(self, msg: Message, leg: str, identity: str | None,
               answering: Request | None = None) -> None:
        """Every message the proxy sends on `leg` passes here once (decisions.RoutingPolicy).
        Toward Teams: topology hiding, then Teams' rules (FQDN Contact on every request and on
        every response but 100, X-MS-SBC, Allow, no Replaces: reference 3-7). Toward the PBX:
        a relayed response gets back the PBX side's Vias and route set we hid from Teams."""
        if leg == TEAMS:
            if self.hiding:
                if isinstance(msg, Request):
                    self.hide_request_toward_teams(msg)
                else:
                    self.hide_response_toward_teams(msg)
            if isinstance(msg, Response) and msg.status > 100 and "contact" not in msg.headers:
                msg.headers.add("contact", self.own_contact(TEAMS))
            rewrite_toward_teams(msg, self.teams, identity)
        elif self.hiding and answering is not None and isinstance(msg, Response):
            self.unhide_response_toward_pbx(msg, answering.headers.get_all("via"))
        if leg == PBX and self.udp_limit:
            self.check_udp_size(msg)

    def check_udp_size(self, msg: Message) -> None:
        """RFC 3261 18.1.1: a message that would leave as a datagram larger than the path takes
        unfragmented is never sent (a UDP PBX leg has no TCP to fall back to): MessageTooLarge,
        which the proxy answers 513 with a Warning (a request) or 502 (a response)."""
        size = msg.wire_size()
        if size > self.udp_limit:
            what = msg.method if isinstance(msg, Request) else f"{msg.status} response"
            raise MessageTooLarge(f"{what} of {size} bytes exceeds pbx.max_udp_size ({self.udp_limit}) "
                                  "for a UDP PBX trunk: use pbx.transport tcp")

    def stray_destination(self, resp: Response, src: Source) -> Destination | None:
        """Where a 2xx without transaction goes: the other side, by its Via."""
        if src.leg == TEAMS:
            return self.pbx_dest
        via = resp.top_via
        if not self.teams.is_teams_host(via.host):
            return None
        return self.teams_dest(via.host.lower(), via.port)

    def dialog_hop(self, resp: Response, leg: str) -> DialogHop | None:
        """Where our ACK/BYE for the dialog of `resp` goes on `leg`: the callee's part of the
        route set (the Record-Route entries above ours, reversed), then its Contact."""
        rr = resp.headers.get_all("record-route")
        mine = next((i for i, v in enumerate(rr) if self.is_own_route(v)), len(rr))
        routes = list(reversed(rr[:mine]))
        contact = resp.headers.get("contact")
        if not contact:
            return None
        try:
            target = parse_name_addr(contact).uri
            first = parse_name_addr(routes[0]).uri if routes else target
        except ParseError:
            return None
        dest = self.hop_toward(first, leg)
        return DialogHop(routes, target, dest) if dest is not None else None

    def caller_hop(self, invite: Request, leg: str) -> DialogHop | None:
        """Where a request of ours toward the caller of `invite` goes on `leg` (the SBC ending
        a call in the callee's place, RFC 3261 12.1.1): the caller's Record-Route in order,
        then its Contact."""
        routes = invite.headers.get_all("record-route")
        contact = invite.headers.get("contact")
        if not contact:
            return None
        try:
            target = parse_name_addr(contact).uri
            first = parse_name_addr(routes[0]).uri if routes else target
        except ParseError:
            return None
        dest = self.hop_toward(first, leg)
        return DialogHop(routes, target, dest) if dest is not None else None

    # ------------------------------------------------------------------ topology hiding
    def hide_request_toward_teams(self, req: Request) -> None:
        """Only our Via, and only Record-Route entries naming us (the rest folded)."""
        h = req.headers
        h.replace_all("via", h.get_all("via")[:1])
        rr = h.get_all("record-route")
        if len(rr) > 1 and self.is_own_route(rr[0]):
            top = parse_name_addr(rr[0]).sip_uri()
            h.replace_all("record-route", [rr[0], self.teams.fold_route(rr[1:], top.host)])

    def hide_response_toward_teams(self, resp: Response) -> None:
        """The PBX side's entries above ours are folded, in the order Teams will use them."""
        h = resp.headers
        rr = h.get_all("record-route")
        for i, v in enumerate(rr):
            try:
                name = self.teams.name_of(parse_name_addr(v).sip_uri())
            except ParseError:
                name = None
            if name is not None:
                if i:
                    h.replace_all("record-route", [self.teams.fold_route(list(reversed(rr[:i])), name)] + rr[i:])
                return

    def unhide_response_toward_pbx(self, resp: Response, vias: list[str]) -> None:
        """The PBX's own Vias and route set come back."""
        h = resp.headers
        h.replace_all("via", vias)
        rr = h.get_all("record-route")
        out: list[str] = []
        for v in rr:
            try:
                hidden = self.teams.unfold_route(parse_name_addr(v).sip_uri())
            except (ParseError, Forged):
                hidden = None  # not ours to unfold: the PBX gets it as it came
            out.extend(hidden if hidden else [v])
        if out != rr:
            h.replace_all("record-route", out)

    # ------------------------------------------------------------------ helpers
    def own_contact(self, leg: str) -> str:
        if leg == TEAMS:
            return f"<sip:{self.teams.fqdn}:{self.teams.port};transport=tls>"
        return f"<sip:{self.config.pbx.listen};transport={self.config.pbx.transport}>"

    def trunks(self) -> list[HostPort]:
        seen: list[HostPort] = [self.config.pbx.address]
        for t in self.tenants.values():
            if t.pbx and t.pbx not in seen:
                seen.append(t.pbx)
        return seen

    def trunk_for(self, tenant: TenantSection | None) -> HostPort:
        return tenant.pbx if tenant and tenant.pbx else self.config.pbx.address

    def tenant_of_call(self, req: Request, src: Source) -> str | None:
        """Carrier mode: which tenant FQDN a PBX call belongs to: by its trunk, else by the
        caller's number prefix; None = the base FQDN."""
        for t in self.tenants.values():
            if t.pbx and t.pbx.host == src.addr[0] and (t.pbx.port == src.addr[1] or src.transport != "udp"):
                return t.fqdn
        if not any(t.numbers for t in self.tenants.values()):
            return None
        try:
            user = parse_uri(parse_name_addr(req.headers.get("from") or "").uri).user or ""
        except ParseError:
            return None
        number = to_e164(user, self.config.numbers) or ""
        for t in self.tenants.values():
            if any(number.startswith(p) for p in t.numbers):
                return t.fqdn
        return None

    def teams_dest(self, host: str, port: int | None = None) -> Destination:
        return Destination(TEAMS, "tls", host.lower(), port or self.config.teams.port)

    def pbx_dest_for(self, uri: SipUri) -> Destination:
        """In-dialog toward a PBX: its Contact when that is on a PBX's own host (any port,
        transport from the URI), else the trunk address. Never anywhere else (no relay)."""
        if uri.host_bare not in self.pbx_hosts:
            return self.pbx_dest
        transport = uri.transport if uri.transport in ("udp", "tcp") else self.config.pbx.transport
        if self.config.pbx.transport == "udp" and transport == "tcp":
            transport = "udp"  # a UDP-only PBX leg has no TCP socket to send from
        return Destination(PBX, transport, uri.host_bare, uri.port or 5060)

    def pbx_uri(self, uri: SipUri, trunk: HostPort) -> str:
        """The R-URI on the PBX leg: the PBX trunk address, transport of the PBX leg."""
        params = {k: v for k, v in uri.params.items() if k not in ("transport", "x-tsbc-c")}
        if self.config.pbx.transport != "udp":
            params["transport"] = self.config.pbx.transport
        user = f"{uri.user}@" if uri.user else ""
        return f"sip:{user}{trunk}{format_params(params)}"

    def pop_own_routes(self, req: Request) -> list[SipUri]:
        """RFC 3261 16.4 loose routing: drop the Route entries that name us (two with r2=on).
        Returns the popped URIs."""
        h = req.headers
        popped: list[SipUri] = []
        ruri = req.ruri
        if self.is_own_uri(ruri) and "lr" in ruri.params:
            # a strict router upstream put our Record-Route in the R-URI (16.4)
            routes = h.get_all("route")
            if routes:
                popped.append(ruri)
                req.uri = parse_name_addr(routes[-1]).uri
                h.replace_all("route", routes[:-1])
        while True:
            top = h.get("route")
            if top is None:
                break
            try:
                uri = parse_name_addr(top).sip_uri()
            except ParseError:
                raise ParseError("Bad Route header") from None
            if not self.is_own_uri(uri):
                break
            h.pop_first("route")
            popped.append(uri)
            hidden = self.teams.unfold_route(uri)
            if hidden:  # the PBX side's own route set, folded toward Teams (topology hiding)
                h.replace_all("route", hidden + h.get_all("route"))
        return popped

    def is_own_route(self, value: str) -> bool:
        try:
            return self.is_own_uri(parse_name_addr(value).sip_uri())
        except ParseError:
            return False

    def hop_toward(self, uri: str, leg: str) -> Destination | None:
        """Where a request we originate in a dialog goes on `leg` (teardown of a call)."""
        try:
            u = parse_uri(uri)
        except ParseError:
            return None
        if leg == TEAMS:
            return self.teams_dest(u.host_bare, u.port) if self.teams.is_teams_host(u.host) else None
        return self.pbx_dest_for(u)

    def is_own_uri(self, uri: SipUri) -> bool:
        if self.teams.is_me(uri):
            return True
        pl = self.config.pbx.listen
        return uri.host_bare == pl.host and (uri.port or 5060) == pl.port

    def normalise_numbers(self, req: Request, fqdn: str) -> None:
        h = req.headers
        rules = self.config.numbers
        h.set("from", e164_address(h.get("from") or "", fqdn, rules))
        h.set("to", e164_address(h.get("to") or "", self.config.teams.proxies[0], rules))
        for name in ("p-asserted-identity", "p-preferred-identity"):
            values = h.get_all(name)
            if values:
                h.replace_all(name, [e164_address(v, fqdn, rules) for v in values])
