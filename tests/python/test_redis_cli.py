"""redis-cli (Debian's redis-tools) as a publisher, unchanged."""

import asyncio
import subprocess

from conftest import mint
from wsclient import connect, recv


def run_cli(node, *args, password=None, user=None, stdin=None):
    """redis-cli against the node's RESP port; returns the finished process."""
    cmd = ["redis-cli", "-h", node.resp_host, "-p", str(node.resp_port)]
    if user:
        cmd += ["--user", user]
    if password:
        cmd += ["-a", password, "--no-auth-warning"]
    return subprocess.run(cmd + list(args), input=stdin, capture_output=True, text=True, timeout=10)


def cli(node, *args, **kwargs):
    return run_cli(node, *args, **kwargs).stdout.strip()


def test_redis_cli_publish_reaches_a_simplejwt_client(node):
    async def scenario():
        ws = await connect(node.ws_url, node.token(42))
        node.wait_group("user_42", 1)
        assert cli(node, "PUBLISH", "user_42", "hello") == "1"
        assert await recv(ws) == "hello"
        # As a terminal shows it.
        assert cli(node, "--no-raw", "PUBLISH", "user_42", "again") == "(integer) 1"
        assert await recv(ws) == "again"
        assert cli(node, "PUBLISH", "user_43", "nobody") == "0"
        # The same over RESP3 (redis-cli -3 sends HELLO 3 first).
        assert cli(node, "-3", "PUBLISH", "user_42", "resp3") == "1"
        assert await recv(ws) == "resp3"
        await ws.close()

    asyncio.run(scenario())


def test_redis_cli_payload_from_stdin_arrives_byte_for_byte(node):
    """`redis-cli -x` takes the last argument from stdin: newlines and UTF-8 kept."""
    async def scenario():
        ws = await connect(node.ws_url, node.token(9))
        node.wait_group("user_9", 1)
        payload = '{"title": "Réunion à 15h", "body": "ligne 1\nligne 2"}\n'
        assert cli(node, "-x", "PUBLISH", "user_9", stdin=payload) == "1"
        assert await recv(ws) == payload
        await ws.close()

    asyncio.run(scenario())


def test_redis_cli_connection_commands(node):
    assert cli(node, "PING") == "PONG"
    assert cli(node, "PING", "bonjour") == "bonjour"
    assert cli(node, "ECHO", "héllo") == "héllo"
    hello = cli(node, "-3", "HELLO", "3").splitlines()
    assert "server redis" in hello and "proto 3" in hello and "mode standalone" in hello, hello
    hello2 = cli(node, "HELLO", "2").splitlines()
    assert "proto" in hello2 and hello2[hello2.index("proto") + 1] == "2", hello2
    assert cli(node, "SELECT", "0") == "OK"
    assert cli(node, "SELECT", "1") == "ERR DB index is out of range"
    assert "redis_version:" in cli(node, "INFO")
    assert cli(node, "--no-raw", "FROB", "x") == "(error) ERR unknown command 'FROB', with args beginning with: 'x'"
    assert cli(node, "FROB", "x").startswith("ERR unknown command 'FROB'")
    assert cli(node, "PUBLISH", "only-a-group") == "ERR wrong number of arguments for 'publish' command"
    # Several commands through one connection, as a script would pipe them.
    out = run_cli(node, stdin="PING\nECHO hi\nPUBLISH g x\nFROB\nPING\n")
    assert out.stdout.split("\n")[:3] == ["PONG", "hi", "0"]
    assert "ERR unknown command 'FROB'" in out.stdout and out.stdout.rstrip().endswith("PONG"), out.stdout


def test_redis_cli_several_commands_reach_the_client_in_order(node):
    async def scenario():
        ws = await connect(node.ws_url, node.token(11))
        node.wait_group("user_11", 1)
        out = run_cli(node, stdin="".join(f"PUBLISH user_11 line{i}\n" for i in range(20)))
        assert out.stdout.split() == ["1"] * 20, out.stdout + out.stderr
        for i in range(20):
            assert await recv(ws) == f"line{i}"
        await ws.close()

    asyncio.run(scenario())


def test_redis_cli_pipe_mode(node):
    async def scenario():
        ws = await connect(node.ws_url, mint(7, groups=["bulk"]))
        node.wait_group("bulk", 1)
        commands = "".join(f"PUBLISH bulk m{i}\r\n" for i in range(100))
        out = subprocess.run(["redis-cli", "-h", node.resp_host, "-p", str(node.resp_port), "--pipe"],
                             input=commands, capture_output=True, text=True, timeout=20)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "errors: 0, replies: 100" in out.stdout, out.stdout + out.stderr
        for i in range(100):
            assert await recv(ws) == f"m{i}"
        # The mass-insertion format redis-cli's docs recommend: commands in RESP itself,
        # here with a binary payload that no inline command could carry.
        def resp(*args):
            return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
        raw = b"".join(resp(b"PUBLISH", b"bulk", b"\x00\xff\r\n" + bytes([i])) for i in range(50))
        out = subprocess.run(["redis-cli", "-h", node.resp_host, "-p", str(node.resp_port), "--pipe"],
                             input=raw, capture_output=True, timeout=20)
        assert b"errors: 0, replies: 50" in out.stdout, out.stdout + out.stderr
        for i in range(50):
            assert await recv(ws) == b"\x00\xff\r\n" + bytes([i])
        await ws.close()

    asyncio.run(scenario())


def test_redis_cli_with_a_password(start_node):
    node = start_node("--resp-password", "pw")

    async def scenario():
        ws = await connect(node.ws_url, node.token(12))
        node.wait_group("user_12", 1)
        assert cli(node, "PUBLISH", "user_12", "no password").startswith("NOAUTH")
        assert cli(node, "-a", "pw", "--no-auth-warning", "PUBLISH", "user_12", "with -a") == "1"
        assert await recv(ws) == "with -a"  # not "no password": the refused PUBLISH went nowhere
        assert cli(node, "PUBLISH", "user_12", "with a user", user="default", password="pw") == "1"
        assert await recv(ws) == "with a user"
        # RESP3 with a password: redis-cli sends AUTH, then HELLO 3.
        assert cli(node, "-3", "PUBLISH", "user_12", "resp3", password="pw") == "1"
        assert await recv(ws) == "resp3"
        assert cli(node, "PING", password="pw") == "PONG"
        # A wrong password: redis-cli reports the refused AUTH and carries on unauthenticated.
        out = run_cli(node, "PING", password="nope")
        assert "WRONGPASS" in out.stderr and out.stdout.startswith("NOAUTH"), out.stdout + out.stderr
        await ws.close()

    asyncio.run(scenario())
