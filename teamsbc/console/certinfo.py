"""The SBC certificate as the console shows it: what is served (subject, names, issuer, days
left), when and how it will be renewed, the archive of earlier generations, and "renew now"
run by the SBC itself through `teamsbc.certs.manager` (the same code as `teamsbc cert renew
--force`) in a worker thread, never on the event loop (the ACME library blocks).

The certificate is *managed* when `teams.certificate` is `<certs_dir>/live/<sbc.fqdn>/
fullchain.pem` (what `teamsbc cert issue` installs): then the renewal timer
(deploy/teamsbc-renew.timer, `teamsbc cert renew` twice a day) renews it at 2/3 of its
lifetime or inside the CA's ARI window, and the SBC reloads it. Otherwise teamsbc does not
renew what it serves, and says so.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from pathlib import Path
from typing import Any

from ..timefmt import iso_utc

log = logging.getLogger("teamsbc.console")


def _describe(cert: Any, now: dt.datetime) -> dict:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from ..certs.gate import cert_names
    key = cert.public_key()
    kind = (f"RSA {key.key_size}" if isinstance(key, rsa.RSAPublicKey)
            else f"EC {key.curve.name}" if isinstance(key, ec.EllipticCurvePublicKey) else type(key).__name__)
    left = (cert.not_valid_after_utc - now).total_seconds() / 86400
    return {"subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(),
            "names": list(cert_names(cert)), "serial": format(cert.serial_number, "x"), "key": kind,
            "not_before": iso_utc(cert.not_valid_before_utc.timestamp()),
            "not_after": iso_utc(cert.not_valid_after_utc.timestamp()), "days_left": round(left, 2)}


def _why(e: Exception) -> str:
    return (e.strerror or str(e)) if isinstance(e, OSError) else str(e)


def _live_fullchain(config: Any) -> Path:
    return Path(config.certs_dir) / "live" / config.sbc.fqdn / "fullchain.pem"


def managed(config: Any) -> bool:
    try:
        return Path(config.teams.certificate).resolve() == _live_fullchain(config).resolve()
    except OSError:
        return False


def certificate_info(config: Any, now: dt.datetime | None = None) -> dict:
    """The served certificate and its renewal. Never raises: an unreadable file is reported."""
    from cryptography import x509

    from ..certs.policy import decide
    now = now or dt.datetime.now(dt.timezone.utc)
    path = Path(config.teams.certificate)
    out: dict[str, Any] = {"path": str(path), "managed": managed(config), "live": str(_live_fullchain(config))}
    try:
        cert = x509.load_pem_x509_certificates(path.read_bytes())[0]
    except (OSError, ValueError, IndexError) as e:
        out.update(readable=False, problem=f"{path}: {_why(e)}", days_left=None)
        return out
    out["readable"] = True
    out.update(_describe(cert, now))
    d = decide(cert, now)
    acme = config.acme
    if out["managed"]:
        http01 = ("answered by this SBC on " + str(acme.serve_http01)) if acme.serve_http01 else (
            f"answered on {acme.http01_listen}" if acme.http01_listen else "tokens in <certs_dir>/acme-challenge")
        how = (f"ACME {acme.directory}, {acme.challenge}"
               + (f" ({http01})" if acme.challenge == "http-01" else "")
               + "; `teamsbc cert renew` from teamsbc-renew.timer twice a day, then the SBC reloads it")
    else:
        how = (f"not managed by teamsbc: teams.certificate is {path}, not {_live_fullchain(config)}; "
               "renew it where it was issued, then `systemctl reload teamsbc`")
    out["next_renewal"] = {"at": iso_utc(d.at.timestamp()), "due": d.due, "reason": d.reason,
                           "text": d.describe(now), "how": how}
    return out


def archive(config: Any) -> list[dict]:
    """Earlier generations in <certs_dir>/archive/<fqdn>/, newest first."""
    from cryptography import x509

    from ..certs.store import CertStore
    now = dt.datetime.now(dt.timezone.utc)
    out = []
    for d in reversed(CertStore(Path(config.certs_dir), config.sbc.fqdn).archives()):
        entry: dict[str, Any] = {"archived": d.name, "path": str(d)}
        try:
            cert = x509.load_pem_x509_certificates((d / "fullchain.pem").read_bytes())[0]
            entry.update(_describe(cert, now))
        except (OSError, ValueError, IndexError) as e:
            entry["problem"] = _why(e)
        out.append(entry)
    return out


class Renewer:
    """"Renew now": one renewal at a time, run in a thread; the last outcome is kept to show."""

    def __init__(self, config: Any, reload: Any = None):
        """`reload(why) -> problem | None`: the shell's certificate reload, called after a
        successful renewal of the certificate the SBC serves."""
        self.config = config
        self.reload = reload
        self.task: asyncio.Task | None = None
        self.last: dict | None = None

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def start(self) -> asyncio.Task:
        if self.running:
            assert self.task is not None
            return self.task
        self.last = {"running": True, "started": iso_utc(time.time())}
        self.task = asyncio.get_running_loop().create_task(self._run())
        return self.task

    async def _run(self) -> dict:
        from ..certs.manager import CertManager, CertTarget
        c = self.config
        started = time.time()
        target = CertTarget(c.sbc.fqdn, Path(c.certs_dir), c.acme, source=c.source,
                            teams_certificate=Path(c.teams.certificate))
        log.info("certificate renewal requested from the console (ACME %s)", c.acme.directory)
        try:
            out = await asyncio.to_thread(CertManager(target).renew, force=True)
        except Exception as e:  # noqa: BLE001 - shown to the operator, never a dead task
            log.exception("certificate renewal from the console failed")
            result = {"ok": False, "action": "failed", "line": f"{c.sbc.fqdn}: renewal failed: {e}",
                      "details": [], "notes": []}
        else:
            result = {"ok": out.ok, "action": out.action, "line": out.line, "details": list(out.details),
                      "notes": list(out.notes)}
            if out.ok and out.action == "renewed" and managed(c) and self.reload is not None:
                problem = self.reload("renewal from the console")
                result["notes"].append(f"reload refused: {problem}" if problem else
                                       "reloaded: new TLS handshakes present the new certificate")
        (log.info if result["ok"] else log.warning)("console renewal: %s", result["line"])
        result.update(running=False, started=iso_utc(started), finished=iso_utc(time.time()),
                      seconds=round(time.time() - started, 1))
        self.last = result
        return result
