"""Issue 17 item 5: `teamsbc doctor --pair URL` checks the other box of an HA pair through its
admin API (two real SBC processes on loopback): reachable, the same sbc.secret compared by an
HMAC of a random challenge (the secret never printed), the same FQDN, clocks in step."""
from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from teamsbc import config as cfg
from teamsbc.doctor.report import FAIL, PASS, WARN
from teamsbc.doctor.runner import CHECKS, Doctor, Options
from tests.support.ports import free_port
from tests.support.sbc import SbcProcess

pytestmark = pytest.mark.e2e

SECRET = "doctor-pair-secret-0123456789abcdefghij"
OTHER = "another-secret-entirely-0123456789abcdef"


def box(tmp_path, procs, pki, name, host, **sbc) -> SbcProcess:
    return SbcProcess(tmp_path, procs, pki, pbx_port=free_port("both"), host=host, name=name,
                      extra={"sbc": sbc})


def admin_url(b: SbcProcess) -> str:
    return f"http://{b.config['admin']['listen']}"


async def pair_results(a: SbcProcess, b: SbcProcess, **kw):
    conf = cfg.load(a.config_path)
    skip = tuple(c for c in CHECKS if c != "pair")
    return {r.check: r for r in await Doctor(conf, Options(pair_url=admin_url(b), skip=skip, **kw)).run_async()}


async def test_pair_with_the_same_secret_passes_and_another_fails(procs, tmp_path, test_pki):
    a = box(tmp_path, procs, test_pki, "a", "127.0.18.1", secret=SECRET)
    b = box(tmp_path, procs, test_pki, "b", "127.0.18.2", secret=SECRET)
    c = box(tmp_path, procs, test_pki, "c", "127.0.18.3", secret=OTHER)
    rot = box(tmp_path, procs, test_pki, "rot", "127.0.18.4", secret=OTHER, previous_secret=SECRET)
    await asyncio.gather(*(asyncio.to_thread(x.start) for x in (a, b, c, rot)))

    same = await pair_results(a, b)
    assert same["pair reachable"].status == PASS
    assert same["pair secret"].status == PASS, same["pair secret"]
    assert same["pair fqdn"].status == PASS
    assert same["pair clock"].status == PASS and "ms from ours" in same["pair clock"].finding

    assert (await pair_results(a, c))["pair secret"].status == FAIL
    assert (await pair_results(a, rot))["pair secret"].status == WARN   # rotation in progress

    out = subprocess.run([sys.executable, "-m", "teamsbc", "doctor", "-c", str(a.config_path),
                          "--pair", admin_url(c), *sum((["--skip", x] for x in CHECKS if x != "pair"), [])],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "FAIL  pair secret: the boxes have different sbc.secret" in out.stdout, out.stdout
    for s in (SECRET, OTHER):
        assert s not in out.stdout + out.stderr + a.log() + c.log()


async def test_pair_unreachable_fails_with_a_fix(tmp_path, test_pki):
    conf = cfg.from_dict({
        "sbc": {"fqdn": "sbc.example.com", "secret": SECRET},
        "teams": {"listen": "127.0.0.1:5061", "certificate": str(test_pki.sbc_fullchain),
                  "private_key": str(test_pki.sbc_key)},
        "pbx": {"listen": "127.0.0.1:5060", "transport": "udp", "address": "127.0.0.2:5060"}}, base=tmp_path)
    skip = tuple(c for c in CHECKS if c != "pair")
    res = await Doctor(conf, Options(pair_url=f"http://127.0.0.1:{free_port('tcp')}", skip=skip, timeout=2)).run_async()
    assert [r.check for r in res] == ["pair reachable"] and res[0].status == FAIL
    assert "admin.listen must be reachable" in res[0].fix
