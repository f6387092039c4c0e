"""Shared fixtures for the test-suite (harness pieces live in tests/support/)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.pki import TestPki, build_test_pki
from tests.support.procs import ProcessManager


@pytest.fixture(scope="session")
def test_pki(tmp_path_factory) -> TestPki:
    """Test CA, SBC and "Teams" certificates, and an unrelated CA (built once per session)."""
    return build_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def bookworm_root(tmp_path_factory) -> Path:
    """A Debian 12 root (mmdebstrap minbase + systemd, python3, python3-venv), made once per
    test run; tests copy it (tests/support/debroot.py). TEAMSBC_DEBROOT_CACHE=DIR keeps it
    across runs (a developer's loop; CI makes it anew)."""
    import os
    from tests.support.debroot import debian_root
    keep = os.environ.get("TEAMSBC_DEBROOT_CACHE")
    return debian_root(Path(keep) if keep else tmp_path_factory.mktemp("debroot-cache"))


@pytest.fixture(scope="session")
def release(tmp_path_factory) -> Path:
    """The release files (sdist + wheel) as deploy/build-release.sh makes them, once per run."""
    out = tmp_path_factory.mktemp("dist")
    repo = Path(__file__).resolve().parent.parent
    r = subprocess.run(["bash", str(repo / "deploy/build-release.sh"), str(out)], capture_output=True,
                       text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    assert r.returncode == 0, r.stdout + r.stderr
    return out


@pytest.fixture
def procs(tmp_path):
    """A ProcessManager for this test: every process started through it is stopped (by PID)
    at the end of the test, pass or fail. A failing test's report shows their exit status
    and the end of their output."""
    pm = ProcessManager(tmp_path / "procs")
    try:
        yield pm
    finally:
        pm.stop_all()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        pm = getattr(item, "funcargs", {}).get("procs")
        if isinstance(pm, ProcessManager) and pm.processes:
            rep.sections.append(("processes started by the test", pm.describe()))
