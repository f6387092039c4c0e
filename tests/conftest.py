"""Shared fixtures for the test-suite (harness pieces live in tests/support/)."""

from __future__ import annotations

import pytest

from tests.support.pki import TestPki, build_test_pki
from tests.support.procs import ProcessManager


@pytest.fixture(scope="session")
def test_pki(tmp_path_factory) -> TestPki:
    """Test CA, SBC and "Teams" certificates, and an unrelated CA (built once per session)."""
    return build_test_pki(tmp_path_factory.mktemp("pki"))


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
