"""Check `identity`: messages the SBC's own code builds toward Teams (our OPTIONS, the answer
to Teams' OPTIONS, a relayed INVITE and a relayed 200 OK, for the base FQDN and each tenant)
carry the FQDN, never an IP, in Contact, Record-Route and Via; `--sample FILE` adds captured
messages (what the SBC sent to Teams).

Microsoft's rules (reference sections 3 and 9): Teams finds the trunk by the FQDN in Contact
and answers 403 to an IP or an unknown FQDN there; the top Record-Route (the hop Teams routes
to) carries the same FQDN; the port is the SBC's signalling port; the Via sent-by is the FQDN.
"""
from __future__ import annotations

from pathlib import Path

from ..addresses import is_ip
from ..config import Config
from ..sip.message import Message, Request, Response
from ..sip.uri import parse_name_addr, parse_uri, split_quoted
from ..teams import TeamsIdentity
from .report import FAIL, PASS, Result
from .samples import load_sample_file, sample_messages


def check(config: Config, sample_files: tuple[Path, ...] = ()) -> list[Result]:
    check = "identity"
    try:
        samples = sample_messages(config)
    except Exception as e:  # the core refused or broke on a plain call: that is a finding
        return [Result(FAIL, check, f"cannot build sample messages with this config: {e}",
                       "teamsbc check -c FILE; report a bug if the config is valid")]
    for path in sample_files:
        try:
            samples += [(f"{path.name} #{i + 1}", m) for i, m in enumerate(load_sample_file(path))]
        except (OSError, ValueError) as e:
            return [Result(FAIL, check, f"cannot read sample {path}: {e}", "give a file with SIP messages")]
    names = {config.sbc.fqdn, *config.teams.tenants}
    problems = []
    for label, msg in samples:
        problems += [f"{label}: {p}" for p in identity_problems(msg, names, config.teams.signaling_port,
                                                                config)]
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return [Result(FAIL, check, problems[0] + more,
                       "Teams answers 403 to an IP (or an unknown FQDN) in Contact and needs the same FQDN "
                       "in the top Record-Route: every Contact/Record-Route/Via toward Teams must carry "
                       "sbc.fqdn (or the tenant FQDN) and teams.signaling_port")] + \
               [Result(FAIL, check, p) for p in problems[1:]]
    kinds = ", ".join(sorted({label.split(" [")[0] for label, _ in samples}))
    return [Result(PASS, check, f"{len(samples)} messages toward Teams ({kinds}) carry only "
                                f"{'/'.join(sorted(names))}:{config.teams.signaling_port} in "
                                "Contact, Record-Route and Via")]


def identity_problems(msg: Message, names: set[str], port: int, config: Config) -> list[str]:
    """Why Teams would refuse or misroute this message (sent by the SBC toward Teams)."""
    is_teams = TeamsIdentity(config).is_teams_host
    problems: list[str] = []
    is_req = isinstance(msg, Request)
    contacts = _values(msg, "contact")
    contact_host = None
    needs_contact = (isinstance(msg, Request) and msg.method in ("INVITE", "OPTIONS")) or \
        (isinstance(msg, Response) and 200 <= msg.status < 300 and msg.cseq.method in ("INVITE", "OPTIONS"))
    if not contacts and needs_contact:
        problems.append("no Contact (Teams refuses it: \"Record-Route and Contact headers are missing\")")
    for c in contacts:
        try:
            host, cport, uri = _uri_host_port(c)
        except Exception:
            problems.append(f"Contact {c!r} does not parse")
            continue
        if is_ip(host):
            problems.append(f"Contact <{uri}> carries an IP address (Teams answers 403)")
        elif host not in names:
            problems.append(f"Contact <{uri}>: {host} is neither sbc.fqdn nor a tenant FQDN (Teams finds the trunk by it: 403)")
        elif cport is not None and cport != port:
            problems.append(f"Contact <{uri}>: port {cport} is not teams.signaling_port {port}")
        contact_host = contact_host or host
    rrs = _values(msg, "record-route")
    ordered = rrs if is_req else list(reversed(rrs))  # from Teams' side inward
    for r in ordered:
        try:
            host, rport, uri = _uri_host_port(r)
        except Exception:
            problems.append(f"Record-Route {r!r} does not parse")
            break
        if is_teams(host):
            continue  # Teams' own entry (its edge proxy)
        if is_ip(host):
            problems.append(f"Record-Route <{uri}> (the hop Teams routes to) carries an IP address")
        elif contact_host and host != contact_host:
            problems.append(f"Record-Route host {host} differs from the Contact host {contact_host} (Teams: they must match)")
        elif rport is not None and rport != port:
            problems.append(f"Record-Route <{uri}>: port {rport} is not teams.signaling_port {port}")
        break
    if is_req:
        try:
            via = msg.top_via
            if is_ip(via.host.strip("[]")):
                problems.append(f"top Via sent-by {via.host} is an IP address")
        except Exception:
            problems.append("no parsable Via")
    return problems


def _values(msg: Message, lname: str) -> list[str]:
    """Every comma-separated value of a header, over all its fields."""
    return [v.strip() for field in msg.headers.get_all(lname) for v in split_quoted(field, ",") if v.strip()]


def _uri_host_port(value: str) -> tuple[str, int | None, str]:
    """(host, port, uri text) of a name-addr / addr-spec header value."""
    na = parse_name_addr(value)
    u = parse_uri(na.uri)
    return u.host_bare, u.port, na.uri
