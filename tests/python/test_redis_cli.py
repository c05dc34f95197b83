"""redis-cli (Debian's redis-tools) as a publisher, unchanged."""

import asyncio
import subprocess

from conftest import mint
from wsclient import connect, recv


def cli(node, *args, password=None):
    cmd = ["redis-cli", "-h", node.resp_host, "-p", str(node.resp_port)]
    if password:
        cmd += ["-a", password, "--no-auth-warning"]
    out = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=10)
    return out.stdout.strip()


def test_redis_cli_publish_reaches_a_simplejwt_client(node):
    async def scenario():
        ws = await connect(node.ws_url, mint(42))
        node.wait_group("user_42", 1)
        assert cli(node, "PUBLISH", "user_42", "hello") == "1"
        assert await recv(ws) == "hello"
        assert cli(node, "PUBLISH", "user_43", "nobody") == "0"
        await ws.close()

    asyncio.run(scenario())


def test_redis_cli_connection_commands(node):
    assert cli(node, "PING") == "PONG"
    hello = cli(node, "-3", "HELLO", "3")
    assert "proto" in hello and "3" in hello and "redis" in hello
    assert "ERR unknown command 'FROB'" in cli(node, "FROB", "x")
    assert "redis_version:" in cli(node, "INFO")
    # Several commands through one connection, as a script would pipe them.
    out = subprocess.run(["redis-cli", "-h", node.resp_host, "-p", str(node.resp_port)],
                         input="PING\nECHO hi\nPUBLISH g x\n", capture_output=True, text=True, timeout=10)
    assert out.stdout.split() == ["PONG", "hi", "0"]


def test_redis_cli_pipe_mode(node):
    async def scenario():
        ws = await connect(node.ws_url, mint(7, groups=["bulk"]))
        node.wait_group("bulk", 1)
        commands = "".join(f"PUBLISH bulk m{i}\r\n" for i in range(100))
        out = subprocess.run(["redis-cli", "-h", node.resp_host, "-p", str(node.resp_port), "--pipe"],
                             input=commands, capture_output=True, text=True, timeout=20)
        assert "errors: 0, replies: 100" in out.stdout, out.stdout + out.stderr
        for i in range(100):
            assert await recv(ws) == f"m{i}"
        await ws.close()

    asyncio.run(scenario())


def test_redis_cli_with_a_password(start_node):
    node = start_node("--resp-password", "pw")
    assert "NOAUTH" in cli(node, "PUBLISH", "g", "x")
    assert cli(node, "PUBLISH", "g", "x", password="pw") == "0"
    # redis-cli reports the refused AUTH on stderr and carries on unauthenticated.
    assert "NOAUTH" in cli(node, "PING", password="nope")
