"""Publishing over HTTP (`POST /v1/publish`, `POST /v1/broadcast` on the admin port), with
real processes: three nodes, real WebSocket clients, urllib and http.client as the
backend's HTTP client."""

import asyncio
import base64
import http.client
import json
import urllib.error
import urllib.request

from conftest import wait_until
from conftest import mint
from wsclient import connect, recv

TOKENS = "root-token\nreader-token read\npublisher-token publish\n"


def post(node, path, body, token="publisher-token", raw=None):
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://{node.admin}{path}", data=data, method="POST")
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def connections(node, group):
    return node.cli("group", group)["connections"]


def test_http_publish_broadcast_idempotency_and_refusals(start_cluster, tmp_path, monkeypatch):
    tokens = tmp_path / "admin-tokens"
    tokens.write_text(TOKENS)
    # The nodes and the CLI helpers both read it (the CLI sends its first token).
    monkeypatch.setenv("SWITCHBOARD_ADMIN_TOKEN_FILE", str(tokens))
    monkeypatch.delenv("SWITCHBOARD_ADMIN_TOKEN", raising=False)
    nodes = start_cluster(3, "--max-payload", "1024", "--history", "hist_*=100")
    a, b, c = nodes

    async def scenario():
        seven = await connect(c.ws_url, mint(7))
        eight = await connect(b.ws_url, mint(8))
        for n in nodes:
            wait_until(lambda n=n: connections(n, "user_7") == 1 and connections(n, "user_8") == 1,
                       what="interest on every node")

        # A publish on node 1 reaches a client on node 3.
        assert post(a, "/v1/publish", {"group": "user_7", "data": "hello"}) == (200, {"routed": 1})
        assert await recv(seven) == "hello"
        status, answer = post(a, "/v1/publish", {"group": "user_7", "b64data": base64.b64encode(b"\xff\x00").decode()})
        assert (status, answer["routed"]) == (200, 1)
        assert await recv(seven) == b"\xff\x00"

        # The same idempotency key on two nodes: delivered once.
        first = post(a, "/v1/publish", {"group": "user_7", "data": "order 1 paid", "idempotency_key": "order-1"})
        assert first == (200, {"routed": 1})
        retry = post(b, "/v1/publish", {"group": "user_7", "data": "order 1 paid", "idempotency_key": "order-1"})
        assert retry == (200, {"routed": 0, "duplicate": True})
        assert post(c, "/v1/publish", {"group": "user_7", "data": "after"}) == (200, {"routed": 1})
        assert await recv(seven) == "order 1 paid"
        assert await recv(seven) == "after", "the retry was not delivered"

        # Broadcast: one payload to many groups; a keyed retry delivers only what is new.
        status, answer = post(b, "/v1/broadcast", {"groups": ["user_7", "user_8"], "data": "to both",
                                                   "idempotency_key": "b-1"})
        assert (status, answer["routed"]) == (200, 2)
        assert await recv(seven) == "to both" and await recv(eight) == "to both"
        status, answer = post(c, "/v1/broadcast", {"groups": ["user_7", "user_8", "user_9"], "data": "to both",
                                                   "idempotency_key": "b-1"})
        assert status == 200
        assert [g.get("duplicate", False) for g in answer["groups"]] == [True, True, False]
        assert post(a, "/v1/broadcast", {"groups": ["user_7", "user_8"], "data": "then"})[0] == 200
        assert await recv(seven) == "then" and await recv(eight) == "then"

        # A history group answers its position.
        s1, p1 = post(a, "/v1/publish", {"group": "hist_1", "data": "x"})
        s2, p2 = post(b, "/v1/publish", {"group": "hist_1", "data": "y"})
        assert s1 == s2 == 200
        assert p2["epoch"] == p1["epoch"] and p2["offset"] == p1["offset"] + 1

        # Refusals, each with a reason.
        body = {"group": "user_7", "data": "no"}
        assert post(a, "/v1/publish", body, token=None)[0] == 401
        assert post(a, "/v1/publish", body, token="nope")[0] == 401
        assert post(a, "/v1/publish", body, token="reader-token")[0] == 403
        status, answer = post(a, "/v1/publish", {"group": "user_7", "data": "x" * 1025})
        assert status == 413 and "max-payload" in answer["error"]
        status, answer = post(a, "/v1/publish", None, raw=b"x" * (2 * 1024 + 64 * 1024 + 1))
        assert status == 413, answer
        status, answer = post(a, "/v1/publish", None, raw=b'{"group": "user_7", "data": ')
        assert status == 400 and "malformed JSON" in answer["error"]
        status, answer = post(a, "/v1/publish", {"group": "", "data": "x"})
        assert status == 400 and "group" in answer["error"]
        status, answer = post(a, "/v1/publish", {"group": "user_7"})
        assert status == 400 and "data" in answer["error"]

        # A chunked body is read too (bounded the same way).
        conn = http.client.HTTPConnection(a.admin.split(":")[0], int(a.admin.split(":")[1]), timeout=10)
        parts = iter([b'{"group": "user_7", ', b'"data": "chunked"}'])
        conn.request("POST", "/v1/publish", body=parts, encode_chunked=True,
                     headers={"Authorization": "Bearer publisher-token", "Content-Type": "application/json"})
        response = conn.getresponse()
        assert (response.status, json.loads(response.read())) == (200, {"routed": 1})
        conn.close()
        assert await recv(seven) == "chunked"
        await seven.close()
        await eight.close()

    asyncio.run(scenario())
