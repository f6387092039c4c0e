"""End-to-end test harness: ports, processes, test PKI, stunnel (TLS for "Teams") and sipp.

Modules: ports (free_port, free_ports), procs (ProcessManager, wait_port), pki
(build_test_pki), stunnel (Stunnel, TeamsClient, TeamsServer), sipp (Sipp, SippResult).
Fixtures ``procs`` and ``test_pki`` are in tests/conftest.py.
"""
