"""HTTP-01 answers: TokenStore as an aiohttp handler (idempotent), webroot, standalone responder."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from teamsbc.certs.challenges import ChallengeError, Http01Solver, StandaloneHttp01, TokenStore
from tests.support.ports import free_port

TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
KEYAUTH = TOKEN + ".9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"


async def test_token_store_answers_repeatedly():
    store = TokenStore()
    store.put(TOKEN, KEYAUTH)
    app = web.Application()
    store.add_routes(app)
    async with TestClient(TestServer(app)) as client:
        for _ in range(3):   # pebble's validator fetches three times
            r = await client.get(f"/.well-known/acme-challenge/{TOKEN}")
            assert r.status == 200 and await r.text() == KEYAUTH
        assert (await client.get("/.well-known/acme-challenge/unknown")).status == 404
        assert (await client.get("/.well-known/acme-challenge/..%2f..%2fetc%2fpasswd")).status == 404
    assert store.served == 3


async def test_token_store_reads_webroot(tmp_path):
    (tmp_path / TOKEN).write_text(KEYAUTH + "\n")
    (tmp_path / "secret.txt").write_text("no")
    store = TokenStore(webroot=tmp_path)
    app = web.Application()
    store.add_routes(app)
    async with TestClient(TestServer(app)) as client:
        r = await client.get(f"/.well-known/acme-challenge/{TOKEN}")
        assert r.status == 200 and await r.text() == KEYAUTH
        assert (await client.get("/.well-known/acme-challenge/secret.txt")).status == 404


def test_token_store_refuses_bad_tokens():
    with pytest.raises(ValueError):
        TokenStore().put("../x", "v")


def _get(port: int, token: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/.well-known/acme-challenge/{token}",
                                    timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""


def test_standalone_solver_serves_then_cleans_up(tmp_path):
    port = free_port("tcp")
    solver = Http01Solver(TokenStore(), listen=("127.0.0.1", port), webroot=tmp_path / "wr")
    solver.add("sbc.example.com", TOKEN, KEYAUTH)
    assert (tmp_path / "wr" / TOKEN).read_text() == KEYAUTH
    solver.publish()
    try:
        assert [_get(port, TOKEN) for _ in range(3)] == [(200, KEYAUTH)] * 3
    finally:
        solver.cleanup()
    assert len(solver.store) == 0 and not (tmp_path / "wr" / TOKEN).exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_standalone_port_in_use_is_one_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ChallengeError) as e:
            StandaloneHttp01(TokenStore(), "127.0.0.1", port).start()
    msg = str(e.value)
    assert msg.startswith(f"cannot listen on 127.0.0.1:{port} for HTTP-01: ")
    assert "acme.http01_listen: null" in msg
