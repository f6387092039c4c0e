"""First contact (issue 11): `teamsbc run` without a config (what ./run-sbc starts) brings its
simulated Teams and PBX, is healthy, says in one line what to try next, answers GET / on the
admin API, and logs no WARNING."""
from __future__ import annotations

import json
import sys
import urllib.request

import pytest

from tests.support.ports import free_port
from tests.support.procs import wait_for

pytestmark = pytest.mark.e2e


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def test_run_without_config_is_a_healthy_lab(tmp_path, procs):
    ports = [free_port("tcp"), free_port("both"), free_port("tcp"), free_port("tcp"), free_port("both")]
    env = {"TEAMSBC_LAB_DIR": str(tmp_path / "lab"), "TEAMSBC_LAB_PORTS": ",".join(map(str, ports))}
    sbc = procs.start("lab", [sys.executable, "-m", "teamsbc", "run"], env=env, cwd=tmp_path)
    admin = ports[2]
    wait_for(lambda: "lab ready:" in sbc.stderr_text(), 20, what="the lab's hint line", alive=sbc)
    wait_for(lambda: get(admin, "/health")[0] == 200, 10, what="/health 200", alive=sbc)
    health = json.loads(get(admin, "/health")[1])
    assert health["ready"] and all(c["ok"] for c in health["checks"] if c["required"]), health
    status, index = get(admin, "/")
    assert status == 200 and "ready" in index.splitlines()[0] and "/health" in index, index
    hint = [line for line in sbc.stderr_text().splitlines() if "lab ready:" in line]
    assert len(hint) == 1 and "teamsbc demo" in hint[0] and f"127.0.0.1:{admin}/health" in hint[0]
    assert sbc.stop() == 0
    assert "level=WARNING" not in sbc.stderr_text() and "level=ERROR" not in sbc.stderr_text(), sbc.stderr_text()
