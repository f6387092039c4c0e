"""The routing story: what happens to a request from Teams and to one from the PBX.

Read it like a kamailio.cfg request_route: policy only. The mechanics (transactions, Via,
Record-Route, failover timers) live in proxy.py; Teams' header rules in teams.py.

    request from anywhere but the PBX or Teams  -> 403 (never relayed)
    OPTIONS outside a dialog                    -> answered here (keep-alive), never forwarded
    in-dialog request (To tag)                  -> follows the route set we built; crosses to the other side
    new call from Teams                         -> the PBX trunk
    new call from the PBX                       -> Teams: sip, then sip2, then sip3 on silence/transport failure/503
"""
from __future__ import annotations

from .config import Config
from .proxy import PBX, TEAMS, Destination, Drop, Forward, Leg, Reply, Target
from .sip.errors import ParseError
from .sip.message import Request, Response
from .sip.uri import SipUri, format_params, parse_name_addr, parse_uri
from .teams import ALLOW_TOWARD_TEAMS, TeamsIdentity, e164_address, rewrite_toward_teams, to_e164

DIALOG_CREATING = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY"})
ALLOW_PBX = "INVITE, ACK, CANCEL, BYE, OPTIONS, NOTIFY, INFO, UPDATE, REFER"


class Router:
    def __init__(self, config: Config):
        self.config = config
        self.teams = TeamsIdentity(config)
        pbx = config.pbx
        self.pbx_dest = Destination(PBX, pbx.transport, pbx.address.host, pbx.address.port)
        self.legs = {
            TEAMS: Leg(TEAMS, "tls", self.teams.fqdn, self.teams.port, self.teams.record_route),
            PBX: Leg(PBX, pbx.transport, pbx.listen.host, pbx.listen.port,
                     f"<sip:{pbx.listen}{';transport=tcp' if pbx.transport == 'tcp' else ''};lr;r2=on>"),
        }

    # ------------------------------------------------------------------ the story
    def request(self, req: Request, src) -> Reply | Forward | Drop:
        if src.leg == PBX and src.addr[0] != self.config.pbx.address.host:
            return Reply(403, "Forbidden", log=f"{src.addr[0]} is not the configured PBX")
        if req.method == "OPTIONS" and not req.to_addr.tag:
            return self.keepalive_answer(src.leg)
        if req.to_addr.tag is not None:
            return self.in_dialog(req, src)
        if src.leg == TEAMS:
            return self.call_from_teams(req)
        return self.call_from_pbx(req)

    def call_from_teams(self, req: Request) -> Reply | Forward:
        """Teams -> PBX: the R-URI names our FQDN; the number goes to the PBX trunk as is."""
        if req.method != "INVITE":
            return Reply(405, "Method Not Allowed", [("Allow", ALLOW_TOWARD_TEAMS)])
        ruri = req.ruri
        if not self.teams.is_me(ruri) and ruri.host.lower() != self.teams.fqdn:
            return Reply(404, "Not Found", log=f"R-URI host {ruri.host} is not this SBC")
        return Forward(req, [Target(self.pbx_dest, self.pbx_uri(ruri))], record_route=True)

    def call_from_pbx(self, req: Request) -> Reply | Forward:
        """PBX -> Teams: +E.164 everywhere, sip/sip2/sip3 in order (reference section 5)."""
        if req.method != "INVITE":
            return Reply(405, "Method Not Allowed", [("Allow", ALLOW_PBX)])
        number = to_e164(req.ruri.user or "", self.config.numbers)
        if number is None:
            return Reply(484, "Address Incomplete", log=f"{req.ruri.user!r} cannot be made +E.164 "
                         "(not a number, or a national number without numbers.country_code)")
        self.normalise_numbers(req)
        targets = [Target(self.teams_dest(proxy), f"sip:{number}@{proxy}:{self.config.teams.port};user=phone;transport=tls")
                   for proxy in self.config.teams.proxies]
        return Forward(req, targets, record_route=True, failover=True)

    def in_dialog(self, req: Request, src) -> Reply | Forward:
        """Follow the route set: our own Route entries are popped; the request crosses sides."""
        ours = self.pop_own_routes(req)
        if src.leg == TEAMS:
            original = self.teams.original_target(req.ruri)
            if not ours and original is None:
                return Reply(403, "Forbidden", log="in-dialog request outside any route set of ours")
            target = parse_uri(original) if original else req.ruri
            return Forward(req, [Target(self.pbx_dest_for(target), str(target))])
        if not ours:
            return Reply(403, "Forbidden", log="in-dialog request from the PBX without our Route")
        routes = req.headers.get_all("route")
        hop = parse_name_addr(routes[0]).sip_uri() if routes else req.ruri
        if not self.teams.is_teams_host(hop.host):
            return Reply(403, "Forbidden", log=f"next hop {hop.host} is not a Teams host")
        return Forward(req, [Target(self.teams_dest(hop.host_bare, hop.port), req.uri)])

    # ------------------------------------------------------------------ per-leg rewriting
    def outgoing(self, msg: Request | Response, leg: str) -> None:
        """Called by the proxy on every message it sends out on `leg`."""
        if leg == TEAMS:
            rewrite_toward_teams(msg, self.teams)

    def response_destination(self, resp: Response, src) -> Destination | None:
        """Where a 2xx without transaction goes: the other side, by its Via."""
        if src.leg == TEAMS:
            return self.pbx_dest
        via = resp.top_via
        if not self.teams.is_teams_host(via.host):
            return None
        return self.teams_dest(via.host.lower(), via.port)

    # ------------------------------------------------------------------ helpers
    def keepalive_answer(self, leg: str) -> Reply:
        if leg == TEAMS:
            contact = f"<sip:{self.teams.fqdn}:{self.teams.port};transport=tls>"
            allow = ALLOW_TOWARD_TEAMS
        else:
            contact = f"<sip:{self.config.pbx.listen};transport={self.config.pbx.transport}>"
            allow = ALLOW_PBX
        return Reply(200, "OK", [("Contact", contact), ("Allow", allow),
                                 ("Accept", "application/sdp"), ("Supported", "timer")])

    def teams_dest(self, host: str, port: int | None = None) -> Destination:
        return Destination(TEAMS, "tls", host.lower(), port or self.config.teams.port)

    def pbx_dest_for(self, uri: SipUri) -> Destination:
        """In-dialog toward the PBX: its Contact when that is on the PBX's own host (any port,
        transport from the URI), else the trunk address. Never anywhere else (no relay)."""
        if uri.host_bare != self.config.pbx.address.host:
            return self.pbx_dest
        transport = uri.transport if uri.transport in ("udp", "tcp") else self.config.pbx.transport
        if self.config.pbx.transport == "udp" and transport == "tcp":
            transport = "udp"  # a UDP-only PBX leg has no TCP socket to send from
        return Destination(PBX, transport, uri.host_bare, uri.port or 5060)

    def pbx_uri(self, uri: SipUri) -> str:
        """The R-URI on the PBX leg: the PBX trunk address, transport of the PBX leg."""
        params = {k: v for k, v in uri.params.items() if k not in ("transport", "x-tsbc-c")}
        if self.config.pbx.transport != "udp":
            params["transport"] = self.config.pbx.transport
        user = f"{uri.user}@" if uri.user else ""
        return f"sip:{user}{self.config.pbx.address}{format_params(params)}"

    def pop_own_routes(self, req: Request) -> bool:
        """RFC 3261 16.4 loose routing: drop the Route entries that name us (two with r2=on)."""
        h = req.headers
        ours = False
        ruri = req.ruri
        if self.is_own_uri(ruri) and "lr" in ruri.params:
            # a strict router upstream put our Record-Route in the R-URI (16.4)
            routes = h.get_all("route")
            if routes:
                req.uri = parse_name_addr(routes[-1]).uri
                h.replace_all("route", routes[:-1])
                ours = True
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
            ours = True
        return ours

    def is_own_uri(self, uri: SipUri) -> bool:
        if self.teams.is_me(uri):
            return True
        pl = self.config.pbx.listen
        return uri.host_bare == pl.host and (uri.port or 5060) == pl.port

    def normalise_numbers(self, req: Request) -> None:
        h = req.headers
        rules = self.config.numbers
        h.set("from", e164_address(h.get("from") or "", self.teams.fqdn, rules))
        h.set("to", e164_address(h.get("to") or "", self.config.teams.proxies[0], rules))
        for name in ("p-asserted-identity", "p-preferred-identity"):
            values = h.get_all(name)
            if values:
                h.replace_all(name, [e164_address(v, self.teams.fqdn, rules) for v in values])
