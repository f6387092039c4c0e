"""What Teams demands of every message the SBC sends it (reference sections 3, 5, 7).

Pure functions over message objects; the proxy calls them on the Teams leg.
"""
from __future__ import annotations

import os
import re
from typing import Callable

from . import MODEL, __version__
from .config import Config
from .sealing import CONTACT, ROUTE, Keyring, Sealer, Secret, Unsealable
from .trunk_settings import NumbersSection
from .sip.errors import ParseError
from .sip.message import Message, Request
from .sip.uri import NameAddr, SipUri, parse_name_addr, parse_uri, split_quoted

X_MS_SBC = f"teamsbc/{MODEL}/{__version__}"

# The original Contact of the PBX travels inside the FQDN Contact we give Teams, so Teams'
# in-dialog requests can be routed back without any state in the SBC (survives restarts, and
# reaches the PBX through any box sharing sbc.secret); sealed (sealing.py): Teams can neither
# read the PBX's address nor forge a target.
CONTACT_PARAM = "x-tsbc-c"

TEAMS_DOMAINS = (".pstnhub.microsoft.com", ".pstnhub.gov.teams.microsoft.us",
                 ".pstnhub.dod.teams.microsoft.us")

ALLOW_TOWARD_TEAMS = "INVITE, ACK, CANCEL, BYE, OPTIONS, NOTIFY, INFO"
USER_AGENT = f"teamsbc/{__version__}"


class Forged(Exception):
    """A sealed parameter of ours (x-tsbc-c, x-tsbc-rr) that does not open: altered, forged,
    or sealed with a secret this box does not share. The request is refused (403), never
    routed."""

    def __init__(self, param: str, why: str):
        super().__init__(f"{param} failed authentication ({why}): not sealed with this box's "
                         "sbc.secret or sbc.previous_secret")
        self.param = param


def throwaway_keys(entropy: Callable[[int], bytes] = os.urandom) -> Keyring:
    """Keys for a TeamsIdentity that only looks (doctor's samples and probes): what it seals
    opens nowhere else."""
    return Keyring(Secret(entropy(32).hex()))


class TeamsIdentity:
    """The SBC as Teams sees it: base FQDN, tenant FQDNs (carrier mode), signalling port,
    which hosts are Teams; and the sealer of the values it hands out in URIs."""

    def __init__(self, config: Config, keys: Keyring | None = None, *,
                 entropy: Callable[[int], bytes] = os.urandom):
        self.sealer = Sealer(keys or throwaway_keys(entropy))
        self.entropy = entropy
        self.fqdn = config.sbc.fqdn
        self.port = config.teams.signaling_port
        self.names = frozenset({self.fqdn, *config.teams.tenants})
        self.allow_refer = config.teams.allow_refer
        # option tags never sent to Teams: Replaces (refused since April 2022) and, with
        # pbx.prack: strip, 100rel (Teams does no PRACK, answers Require: 100rel with 420)
        rel = ("100rel",) if config.pbx.prack == "strip" else ()
        self.drop_in_requests = frozenset(("replaces", *rel))
        self.drop_in_responses = frozenset(rel)
        self._teams_hosts = set(config.teams.proxies) | set(config.teams.resolve)

    @property
    def allow(self) -> str:
        """Our Allow toward Teams: with REFER only when teams.allow_refer (reference 7)."""
        return ALLOW_TOWARD_TEAMS + (", REFER" if self.allow_refer else "")

    def record_route(self, fqdn: str | None = None) -> str:
        return f"<sip:{fqdn or self.fqdn}:{self.port};transport=tls;lr;r2=on>"

    def is_teams_host(self, host: str) -> bool:
        h = host.lower().rstrip(".")
        return h in self._teams_hosts or h.endswith(TEAMS_DOMAINS)

    def name_of(self, uri: SipUri) -> str | None:
        """Our FQDN (base or tenant) when `uri` names this SBC on the Teams side, else None."""
        host = uri.host.lower().rstrip(".")
        if host in self.names and (uri.port or 5061) == self.port:
            return host
        return None

    def is_me(self, uri: SipUri) -> bool:
        return self.name_of(uri) is not None

    def contact_for(self, value: str, fqdn: str | None = None) -> str:
        """Rewrite one Contact value to the SBC FQDN, carrying the original URI along."""
        na = parse_name_addr(value)
        if na.uri.startswith("<") or na.uri == "*":
            return value
        try:
            orig = parse_uri(na.uri)
        except ParseError:
            return value
        if orig.host.lower() in self.names:
            return value  # already ours (our own keep-alive answer, or a spiral)
        user = f"{orig.user}@" if orig.user else ""
        new = (f"sip:{user}{fqdn or self.fqdn}:{self.port};transport=tls;"
               f"{CONTACT_PARAM}={self.seal_contact(na.uri)}")
        return str(NameAddr(new, na.display, na.params))

    def seal_contact(self, uri: str) -> str:
        return self.sealer.seal(uri, CONTACT, self.entropy)

    def open_contact(self, value: str) -> str:
        """The PBX Contact sealed in an x-tsbc-c value; Forged when it does not open or is
        not a URI."""
        try:
            text = self.sealer.open(value, CONTACT)
            parse_uri(text)
        except Unsealable as e:
            raise Forged(CONTACT_PARAM, str(e)) from None
        except ParseError:
            raise Forged(CONTACT_PARAM, "not a URI") from None
        return text

    def original_target(self, ruri: SipUri) -> str | None:
        """The PBX contact hidden in a Request-URI we handed out as Contact; None when the
        R-URI carries none; Forged when it carries one that is not ours."""
        v = ruri.params.get(CONTACT_PARAM)
        if v is None or ruri.host.lower() not in self.names:
            return None
        return self.open_contact(v)

    def fold_route(self, entries: list[str], fqdn: str) -> str:
        """One Record-Route entry naming us that carries `entries` (in the order they will be
        used as Route by whoever receives them back), sealed."""
        token = self.sealer.seal("\n".join(entries), ROUTE, self.entropy)
        return f"<sip:{fqdn}:{self.port};transport=tls;lr;r2=on;{RR_PARAM}={token}>"

    def unfold_route(self, uri: SipUri) -> list[str] | None:
        """The entries folded into one of our Route/Record-Route URIs; None when it carries
        none; Forged when it carries a value that is not ours."""
        v = uri.params.get(RR_PARAM)
        if v is None:
            return None
        try:
            raw = self.sealer.open(v, ROUTE)
        except Unsealable as e:
            raise Forged(RR_PARAM, str(e)) from None
        entries = [e for e in raw.split("\n") if e]
        for e in entries:
            try:
                parse_name_addr(e).sip_uri()
            except ParseError:
                raise Forged(RR_PARAM, "not a route set") from None
        return entries


# Topology hiding (security.topology_hiding): the Record-Route entries of the PBX side (ours
# and the PBX's own) travel toward Teams folded into one entry naming our FQDN; popping it
# restores them, so the PBX keeps its real route set, with no state (restarts included).
RR_PARAM = "x-tsbc-rr"


def rewrite_toward_teams(msg: Message, ident: TeamsIdentity, fqdn: str | None = None) -> None:
    """Headers every message to Teams must carry (reference 3, 4, 5, 7)."""
    h = msg.headers
    contacts = h.get_all("contact")
    if contacts:
        h.replace_all("contact", [ident.contact_for(c, fqdn) for c in contacts])
    h.set("x-ms-sbc", X_MS_SBC)
    allows = h.get_all("allow")
    if allows and not ident.allow_refer:
        h.set("allow", strip_refer(", ".join(allows)))  # several Allow lines are one list (RFC 3261 7.3.1)
    if isinstance(msg, Request):
        h.remove("replaces")  # Teams refuses Replaces from an SBC (since April 2022)
        drop = ident.drop_in_requests
    else:
        drop = ident.drop_in_responses
        if drop and msg.status < 200 and "rseq" in h:
            h.remove("rseq")  # a reliable provisional of the PBX, PRACKed by the SBC (reliable.py)
    for name in ("supported", "require") if drop else ():
        values = h.get_all(name)
        joined = ", ".join(values)
        low = joined.lower()
        if not any(d in low for d in drop):
            continue
        opts = [o.strip() for o in joined.split(",") if o.strip() and o.strip().lower() not in drop]
        if opts:
            h.set(name, ", ".join(opts))
        else:
            h.remove(name)


def strip_refer(allow: str) -> str:
    """Teams transfers by itself when REFER is not in our Allow (reference 7)."""
    return ", ".join(m.strip() for m in allow.split(",") if m.strip() and m.strip().upper() != "REFER")


_VISUAL = re.compile(r"[\s\-.()]")


def to_e164(user: str, rules: NumbersSection) -> str | None:
    """A dialled/caller number as +E.164, or None when `user` is not a phone number."""
    core, sep, rest = user.partition(";")  # ;phone-context=... and the like (RFC 3966)
    digits = _VISUAL.sub("", core)
    if digits.startswith("+"):
        return digits if digits[1:].isdigit() and 3 <= len(digits) - 1 <= 15 else None
    if not digits.isdigit():
        return None
    ip, np_, cc = rules.international_prefix, rules.national_prefix, rules.country_code
    if ip and digits.startswith(ip):
        out = digits[len(ip):]
    elif cc and np_ and digits.startswith(np_):
        out = cc + digits[len(np_):]
    else:
        out = digits  # already international without the '+'
    if out.startswith("0"):
        return None  # no country code starts with 0: the national prefix needs numbers.country_code
    return "+" + out if 3 <= len(out) <= 15 else None  # E.164: at most 15 digits


def e164_address(value: str, host: str, rules: NumbersSection) -> str:
    """From/To/P-Asserted-Identity toward Teams: +E.164 user, `user=phone`, our host."""
    na = parse_name_addr(value)
    try:
        uri = parse_uri(na.uri)
    except ParseError:
        return value
    number = to_e164(uri.user or "", rules)
    if number is None:
        return value
    new = SipUri("sip", number, host, None, None, {"user": "phone"})
    return str(NameAddr(str(new), na.display, na.params))


def list_values(value: str) -> list[str]:
    return [v.strip() for v in split_quoted(value, ",") if v.strip()]
