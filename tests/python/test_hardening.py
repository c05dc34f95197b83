"""Hardening, tried as an attacker would, on real sockets against the real binary: every
class of docs/security.md. Memory bounds are read from the node's RSS with a generous
margin; stalls are measured as another client's connect + ping while the hostile
command runs."""

import asyncio
import json
import os
import resource
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import urllib.request

import pytest
import redis
import websockets

import wsclient
from conftest import BIN, CLUSTER_SECRET, DEADLINE, SECRET, Node, mint, up_members, wait_until

MIB = 1024 * 1024


def rss(node):
    """The node's resident memory, in bytes."""
    with open(f"/proc/{node.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def metric(node, name):
    status, body = Node.http(node.admin, "/metrics")
    assert status == 200, body
    for line in body.splitlines():
        if line.startswith(f"switchboard_{name} "):
            return int(line.split()[1])
    raise AssertionError(f"metric {name} missing")


def resp_conn(node, source="127.0.0.1"):
    s = socket.create_connection((node.resp_host, node.resp_port), timeout=DEADLINE, source_address=(source, 0))
    return s


class Lines:
    """A socket read line by line (RESP replies here are one line each)."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def line(self, timeout=DEADLINE):
        """The next line with its CRLF; b'' when the peer closed first."""
        self.sock.settimeout(timeout)
        while b"\r\n" not in self.buf:
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                chunk = b""
            if not chunk:
                line, self.buf = self.buf, b""
                return line
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line + b"\r\n"


def read_reply(s, timeout=DEADLINE):
    """Reads one reply line from a fresh socket (see `Lines` for several)."""
    return Lines(s).line(timeout)


def command(*args):
    """A RESP command."""
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


def closed(s, timeout=DEADLINE):
    """Whether the peer closes `s` (reads to EOF within the timeout)."""
    s.settimeout(timeout)
    try:
        while s.recv(65536):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def send_quietly(s, data):
    """Sends what the peer takes before it closes."""
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def connect_and_ping(node):
    """Seconds for a fresh WebSocket connect + ping + pong."""
    async def go():
        start = time.monotonic()
        ws = await wsclient.connect(node.ws_url, node.token(99))
        await ws.send(json.dumps({"op": "ping", "id": 1}))
        reply = json.loads(await wsclient.recv(ws))
        assert reply["type"] == "pong"
        elapsed = time.monotonic() - start
        await ws.close()
        return elapsed
    return asyncio.run(go())


# ----- 1. RESP memory, before and after AUTH -----

def test_unauthenticated_resp_commands_are_bounded_on_their_headers(start_node):
    node = start_node("--resp-password", "pw")
    before = rss(node)
    for attack in (
        b"*100000\r\n",                                   # more than 10 arguments
        b"*3\r\n$1048576\r\n",                            # a 1 MiB bulk
        b"*5\r\n" + (b"$16000\r\n" + b"x" * 16000 + b"\r\n") * 4 + b"$16000\r\n",  # over 64 KiB in all
    ):
        s = resp_conn(node)
        send_quietly(s, attack)
        reply = read_reply(s)
        assert reply.startswith(b"-ERR Protocol error"), reply
        assert closed(s)
    # Many connections streaming 1 MiB bulks: each is refused on its header, nothing is
    # buffered.
    for _ in range(20):
        s = resp_conn(node)
        send_quietly(s, b"*2\r\n$1048576\r\n" + b"x" * MIB)
        assert closed(s)
    assert rss(node) - before < 32 * MIB
    assert metric(node, "resp_protocol_errors_total") >= 23


def test_an_authenticated_command_is_bounded_by_max_command_bytes(start_node):
    node = start_node("--max-command-bytes", str(2 * MIB))
    before = rss(node)
    s = resp_conn(node)
    # Three bulks of 1 MiB each pass --max-payload; the third breaks the 2 MiB command
    # bound as soon as its header arrives.
    big = b"$1048576\r\n" + b"x" * MIB + b"\r\n"
    send_quietly(s, b"*4\r\n$7\r\nPUBLISH\r\n" + big + big + b"$1048576\r\n")
    reply = read_reply(s)
    assert reply.startswith(b"-ERR Protocol error: frame of at least"), reply
    assert closed(s)
    assert rss(node) - before < 32 * MIB
    r = redis.Redis(host=node.resp_host, port=node.resp_port)
    assert r.publish("g", b"y" * (MIB - 100)) == 0, "a command within the bound passes"


def test_a_multi_queue_is_bounded_in_bytes(node):
    before = rss(node)
    r = redis.Redis(host=node.resp_host, port=node.resp_port)
    conn = r.connection_pool.get_connection("MULTI")
    conn.send_command("MULTI")
    assert conn.read_response() in (b"OK", "OK")
    refused = None
    for i in range(64):
        conn.send_command("PUBLISH", "g", b"x" * MIB)
        try:
            conn.read_response()
        except redis.ResponseError as e:
            refused = (i, str(e))
            break
    assert refused is not None, "64 MiB were queued"
    assert refused[0] < 20 and "transaction discarded" in refused[1], refused
    r.connection_pool.release(conn)
    assert rss(node) - before < 64 * MIB


def test_a_slow_clients_queue_is_bounded_in_bytes(start_node):
    node = start_node("--client-queue-bytes", str(MIB))
    token = node.token(5)
    # A client that completes the handshake and never reads, with a small receive buffer.
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    host, port = node.ws_addr.rsplit(":", 1)
    s.connect((host, int(port)))
    s.sendall((f"GET /ws/notifications/?token={token} HTTP/1.1\r\nHost: {node.ws_addr}\r\n"
               "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").encode())
    assert b"101" in s.recv(4096).split(b"\r\n")[0]
    node.wait_group("user_5", 1)
    before = rss(node)
    r = redis.Redis(host=node.resp_host, port=node.resp_port)
    for _ in range(100):
        r.publish("user_5", b"z" * (512 * 1024))
    wait_until(lambda: metric(node, "slow_consumer_closes_total") == 1, what="the slow consumer closed")
    # 1 MiB holds two 512 KiB messages (and the socket buffers a few more), not 100.
    assert metric(node, "messages_delivered_total") < 20
    assert rss(node) - before < 40 * MIB
    s.close()


# ----- 2. Introspection cannot stall the data path -----

def test_a_costly_pubsub_channels_pattern_is_refused_and_stalls_nothing(start_node):
    node = start_node("--max-groups-per-connection", "3100", "--client-ops-burst", "4000")
    names = [f"room_{i:04d}_" + "a" * 200 + "_" for i in range(3000)]

    async def subscribe_all():
        ws = await wsclient.connect(node.ws_url, node.token(1, groups=["room_*"]))
        for i, name in enumerate(names):
            await ws.send(json.dumps({"op": "subscribe", "group": name, "id": i}))
        for _ in names:
            assert json.loads(await wsclient.recv(ws))["type"] == "subscribed"
        return ws

    loop = asyncio.new_event_loop()
    ws = loop.run_until_complete(subscribe_all())
    try:
        r = redis.Redis(host=node.resp_host, port=node.resp_port)
        # Every name retries the whole suffix at every position of its run of a's.
        costly = "*" + "a" * 200 + "b"
        with pytest.raises(redis.ResponseError, match="too costly"):
            r.pubsub_channels(costly)
        with pytest.raises(redis.ResponseError, match="longer than 512"):
            r.pubsub_channels("*" * 600)
        assert len(r.pubsub_channels("*" * 500 + "\x01")) == 0, "runs of * cost one"
        assert len(r.pubsub_channels("room_00*")) == 100

        stop = threading.Event()

        def hammer():
            h = redis.Redis(host=node.resp_host, port=node.resp_port)
            while not stop.is_set():
                try:
                    h.pubsub_channels(costly)
                except redis.ResponseError:
                    pass

        hammers = [threading.Thread(target=hammer)]
        for t in hammers:
            t.start()
        timed = redis.Redis(host=node.resp_host, port=node.resp_port)
        started = time.monotonic()
        with pytest.raises(redis.ResponseError, match="too costly"):
            timed.pubsub_channels(costly)
        print(f"one costly PUBSUB CHANNELS refused in {time.monotonic() - started:.3f} s")
        try:
            worst = max(connect_and_ping(node) for _ in range(10))
        finally:
            stop.set()
            for t in hammers:
                t.join(timeout=DEADLINE)
        assert worst < 1.0, f"a connect + ping took {worst:.2f} s while PUBSUB CHANNELS ran"
    finally:
        loop.run_until_complete(ws.close())
        loop.close()


# ----- 3. The admin API: tokens, scopes, Host and Origin -----

def admin_request(node, path, method="GET", headers=None, host=None):
    req = urllib.request.Request(f"http://{node.admin}{path}", method=method, headers=headers or {})
    if host:
        req.add_unredirected_header("Host", host)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_admin_tokens_scopes_host_and_origin(start_node, tmp_path):
    tokens = tmp_path / "admin-tokens"
    tokens.write_text("root-token\nreader-token read\n")
    node = start_node("--admin-token-file", str(tokens))
    bearer = lambda t: {"Authorization": f"Bearer {t}"}  # noqa: E731
    # Health checks stay open; everything else needs a token.
    assert admin_request(node, "/healthz")[0] == 200
    assert admin_request(node, "/readyz")[0] == 200
    assert admin_request(node, "/v1/status")[0] == 401
    assert admin_request(node, "/metrics")[0] == 401
    assert admin_request(node, "/v1/status?token=root-token")[0] == 401, "no tokens in the query"
    assert admin_request(node, "/v1/status", headers=bearer("nope"))[0] == 401
    assert admin_request(node, "/v1/status", headers=bearer("reader-token"))[0] == 200
    assert admin_request(node, "/metrics", headers=bearer("reader-token"))[0] == 200
    assert admin_request(node, "/v1/drain", "POST", headers=bearer("reader-token"))[0] == 403
    # A web page: a text/plain POST with the page's Origin, even with a token, is refused.
    page = {"Origin": "https://evil.example", "Content-Type": "text/plain", **bearer("root-token")}
    assert admin_request(node, "/v1/drain", "POST", headers=page)[0] == 403
    # DNS rebinding: the page's host name in Host.
    assert admin_request(node, "/v1/status", headers=bearer("root-token"), host="evil.example:80")[0] == 403
    # The CLI without a token is refused; with one it works.
    out = subprocess.run([BIN, "status", "--admin", node.admin, "--json"], capture_output=True, text=True, timeout=10)
    assert out.returncode != 0 and "401" in out.stderr
    env = dict(os.environ, SWITCHBOARD_ADMIN_TOKEN="reader-token")
    out = subprocess.run([BIN, "status", "--admin", node.admin, "--json"], capture_output=True, text=True, timeout=10, env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["ready"] is True
    out = subprocess.run([BIN, "members", "--admin", node.admin, "--admin-token-file", str(tokens), "--json"],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    assert metric_with(node, "admin_refusals_total", "root-token") >= 7
    # SIGHUP re-reads the token file: the old token stops working, the new one works.
    tokens.write_text("new-token\n")
    node.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: admin_request(node, "/v1/status", headers=bearer("new-token"))[0] == 200, what="the new token")
    assert admin_request(node, "/v1/status", headers=bearer("root-token"))[0] == 401


def metric_with(node, name, token):
    status, body = admin_request(node, "/metrics", headers={"Authorization": f"Bearer {token}"})
    assert status == 200, body
    return int(next(line.split()[1] for line in body.splitlines() if line.startswith(f"switchboard_{name} ")))


def test_the_admin_port_refuses_to_bind_beyond_loopback_without_a_token():
    data = tempfile.mkdtemp(prefix="sb-py-admin-")
    out = subprocess.run([BIN, "serve", "--jwt-secret", SECRET, "--data-dir", data,
                          "--ws-listen", "127.0.0.1:0", "--resp-listen", "127.0.0.1:0",
                          "--peer-listen", "127.0.0.1:0", "--admin-listen", "0.0.0.0:0"],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode != 0
    assert "refusing to bind --admin-listen" in out.stderr and "admin token" in out.stderr


# ----- 4. Idle and unauthenticated RESP connections, AUTH guessing -----

def test_unauthenticated_connections_time_out_and_cannot_lock_out_publishers(start_node):
    node = start_node("--resp-password", "pw", "--resp-auth-timeout", "2")
    idle = []
    for _ in range(32):
        s = resp_conn(node)
        lines = Lines(s)
        s.sendall(command("PING"))  # a round trip: its task has counted it
        assert lines.line().startswith(b"-NOAUTH")
        idle.append(lines)
    extra = resp_conn(node)
    assert b"too many unauthenticated connections" in read_reply(extra)
    assert closed(extra)
    # A publisher from another address is served meanwhile.
    other = Lines(resp_conn(node, source="127.0.0.2"))
    other.sock.sendall(command("AUTH", "pw") + command("PUBLISH", "g", "x"))
    assert other.line() == b"+OK\r\n"
    assert other.line() == b":0\r\n"
    # The idle ones are closed after the auth timeout, with a reason.
    for lines in idle:
        assert b"authentication timeout" in lines.line()
        assert closed(lines.sock)
    assert redis.Redis(host=node.resp_host, port=node.resp_port, password="pw").ping()


def test_idle_connections_from_many_addresses_cannot_take_every_resp_slot(start_node):
    """A node with 2 048 descriptors has 256 RESP slots (an eighth), and unauthenticated
    connections may hold half of them: 300 idle connections from ten addresses (30 each,
    under the per-address cap) make the oldest ones give way, and a publisher that
    authenticates still gets a slot."""
    def few_files():
        resource.setrlimit(resource.RLIMIT_NOFILE, (2048, 2048))

    node = Node("--resp-password", "pw", preexec_fn=few_files)
    try:
        idle = []
        for address in range(10, 20):
            for _ in range(30):
                lines = Lines(resp_conn(node, source=f"127.0.0.{address}"))
                lines.sock.sendall(command("PING"))
                assert lines.line().startswith(b"-NOAUTH")
                idle.append(lines)
        # The oldest gave way to the newer ones, with a reason; 128 are still waiting.
        given_way = idle[:300 - 128]
        for lines in given_way:
            assert b"the oldest is closed to make room" in lines.line()
            assert closed(lines.sock)
        publisher = Lines(resp_conn(node, source="127.0.0.2"))
        publisher.sock.sendall(command("AUTH", "pw") + command("PUBLISH", "g", "x"))
        assert publisher.line() == b"+OK\r\n", "a slot for the publisher"
        assert publisher.line() == b":0\r\n"
        for lines in idle:
            lines.sock.close()
        publisher.sock.close()
    finally:
        node.stop()


def test_auth_guessing_is_slowed_and_closed(start_node):
    node = start_node("--resp-password", "pw")
    lines = Lines(resp_conn(node))
    for i in range(10):
        lines.sock.sendall(command("AUTH", f"guess{i}"))
        assert lines.line().startswith(b"-WRONGPASS")
    assert b"too many failed AUTH attempts" in lines.line()
    assert closed(lines.sock)
    # Ten more guesses from the same address use up the burst...
    lines = Lines(resp_conn(node))
    for i in range(10):
        lines.sock.sendall(command("AUTH", f"more{i}"))
        assert lines.line().startswith(b"-WRONGPASS")
    lines.sock.close()
    # ...after which each guess costs its address about a second.
    lines = Lines(resp_conn(node))
    lines.sock.sendall(command("AUTH", "a"))
    first = lines.line()
    started = time.monotonic()
    lines.sock.sendall(command("AUTH", "b"))
    second = lines.line()
    assert first.startswith(b"-WRONGPASS") and second.startswith(b"-WRONGPASS"), (first, second)
    assert time.monotonic() - started >= 0.5, "the second guess was answered without delay"
    # The right password from another address is not slowed.
    other = Lines(resp_conn(node, source="127.0.0.3"))
    other.sock.sendall(command("AUTH", "pw") + command("PING"))
    assert other.line() == b"+OK\r\n"
    assert other.line() == b"+PONG\r\n"


# ----- 5. No panic per request -----

def test_an_absurd_eval_numkeys_is_an_error_and_the_gauge_stays_right(node):
    baseline = metric(node, "resp_connections")
    r = redis.Redis(host=node.resp_host, port=node.resp_port)
    script = "local over_capacity = 0 redis.call('ZADD', KEYS[1], 1, ARGV[1])"
    for numkeys in (99999999999999999, 2**63 - 1, 4):
        with pytest.raises(redis.ResponseError, match="Number of keys|not an integer"):
            r.execute_command("EVAL", script, numkeys, "k", "m")
    assert r.ping()
    r.close()
    wait_until(lambda: metric(node, "resp_connections") == baseline, what="the RESP gauge back")


# ----- 6. Capacity from the descriptor limit -----

def limit_files(n):
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))


def test_max_connections_follows_the_descriptor_limit_and_the_node_answers_1013(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    node = Node(preexec_fn=limit_files(2400))
    try:
        status = node.cli("status")
        # 2400 descriptors: 300 for RESP, 512 + 1024 kept in reserve, the rest for clients.
        assert status["limits"]["open_files"] == 2400
        assert status["limits"]["max_connections"] == 564
        assert status["limits"]["max_resp_connections"] == 300

        async def flood():
            opened, refused = [], 0
            for _ in range(600):
                ws = await wsclient.connect(node.ws_url, node.token(7))
                opened.append(ws)
            for ws in opened[564:]:
                code, reason = await wsclient.close_code(ws)
                assert (code, reason) == (1013, "node full")
                refused += 1
            assert Node.http(node.ws_addr, "/healthz")[0] == 200
            assert Node.http(node.admin, "/healthz")[0] == 200
            assert redis.Redis(host=node.resp_host, port=node.resp_port).publish("user_7", "hi") == 564
            for ws in opened[:564]:
                await ws.close()
            return refused

        assert asyncio.run(flood()) == 36
    finally:
        node.stop()


# ----- 7. Identity: a node id is bound to its data dir -----

def test_a_second_process_with_a_members_id_is_refused(start_cluster, start_node):
    nodes = start_cluster(2)
    real = nodes[1]
    bound = lambda: {m["id"]: m.get("incarnation") for m in nodes[0].cli("members")["members"]}  # noqa: E731
    wait_until(lambda: all(bound().values()), what="both ids bound to their data dirs")
    # The real node 2 pauses (SIGSTOP) long enough to be marked down; an impostor with its
    # id, the cluster secret and a fresh data dir tries to take its place.
    real.proc.send_signal(signal.SIGSTOP)
    try:
        wait_until(lambda: up_members(nodes[0]) == [1], what="node 2 marked down")
        impostor = Node("--node-id", "2", "--seeds", nodes[0].peer_addr, "--cluster-secret", CLUSTER_SECRET,
                        "--node-timeout-ms", "2000", wait_ready=False)
        try:
            wait_until(lambda: any("another data dir" in line for line in nodes[0].log_tail),
                       what="node 1 refusing the impostor")
            assert up_members(nodes[0]) == [1]
            assert not impostor.cli("status")["ready"]
        finally:
            impostor.proc.kill()
            impostor.proc.wait(timeout=10)
    finally:
        real.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: up_members(nodes[0]) == [1, 2] and real.cli("status")["ready"], what="the real node 2 back")


# ----- 8. The smaller ones -----

def test_a_refresh_that_drops_a_group_leaves_it(node):
    async def go():
        ws = await wsclient.connect(node.ws_url, node.token(3, groups=["news"]))
        node.wait_group("news", 1)
        await ws.send(json.dumps({"op": "refresh", "token": node.token(3, groups=["sport"]), "id": 1}))
        reply = json.loads(await wsclient.recv(ws))
        assert reply["type"] == "refreshed" and reply["left"] == ["news"] and reply["joined"] == ["sport"]
        r = redis.Redis(host=node.resp_host, port=node.resp_port)
        assert r.publish("news", "old") == 0
        assert r.publish("sport", "new") == 1
        assert await wsclient.recv(ws) == "new"
        await ws.close()
    asyncio.run(go())


def raw_ws(node, token, request=None):
    host, port = node.ws_addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=DEADLINE)
    s.sendall((request or (f"GET /ws/notifications/?token={token} HTTP/1.1\r\nHost: {node.ws_addr}\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            break
        head += chunk
    return s, head


def client_frame(opcode, payload, rsv=0):
    """A masked client frame."""
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | rsv << 4 | opcode, 0x80 | len(payload)]) + mask + masked


def close_frame_code(s):
    """Reads server frames until a close frame; returns its code."""
    s.settimeout(DEADLINE)
    buf = b""
    while True:
        while len(buf) < 2:
            chunk = s.recv(4096)
            if not chunk:
                return None
            buf += chunk
        length = buf[1] & 0x7F
        header = 2 + (2 if length == 126 else 8 if length == 127 else 0)
        while len(buf) < header:
            buf += s.recv(4096)
        if length == 126:
            length = struct.unpack(">H", buf[2:4])[0]
        elif length == 127:
            length = struct.unpack(">Q", buf[2:10])[0]
        while len(buf) < header + length:
            buf += s.recv(4096)
        opcode, payload = buf[0] & 0x0F, buf[header:header + length]
        buf = buf[header + length:]
        if opcode == 8:
            return struct.unpack(">H", payload[:2])[0]


def test_websocket_protocol_violations_close_with_1007_and_1002(node):
    s, head = raw_ws(node, node.token(1))
    assert b" 101 " in head
    s.sendall(client_frame(1, b"\xff\xfe not utf-8"))
    assert close_frame_code(s) == 1007
    s, _ = raw_ws(node, node.token(1))
    s.sendall(client_frame(1, b"hi", rsv=4))
    assert close_frame_code(s) == 1002
    s, _ = raw_ws(node, node.token(1))
    # A ping of 256 bytes (control frames carry at most 125).
    s.sendall(bytes([0x89, 0xFE, 0x01, 0x00]) + b"\x00" * 4 + b"p" * 256)
    assert close_frame_code(s) == 1002
    assert metric(node, "protocol_violations_total") == 3


def test_the_upgrade_is_a_get_over_http_1_1(node):
    token = node.token(1)
    base = ("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nHost: {node.ws_addr}\r\n\r\n")
    _, head = raw_ws(node, token, f"POST /ws/notifications/?token={token} HTTP/1.1\r\n{base}")
    assert head.startswith(b"HTTP/1.1 405") and b"allow: get" in head.lower()
    _, head = raw_ws(node, token, f"GET /ws/notifications/?token={token} HTTP/1.0\r\n{base}")
    assert head.startswith(b"HTTP/1.1 400")


def token_with_header(header, claims, secret=SECRET):
    import base64
    import hashlib
    import hmac as hm
    enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    signing = f"{enc(header)}.{enc(claims)}"
    sig = hm.new(secret.encode(), signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{base64.urlsafe_b64encode(sig).rstrip(b'=').decode()}"


def test_token_headers_and_user_ids_are_checked(node):
    claims = {"user_id": 1, "exp": int(time.time()) + 60, "token_type": "access"}

    async def reason(token):
        ws = await wsclient.connect(node.ws_url, token)
        return await wsclient.close_code(ws)

    none = token_with_header({"alg": "none", "typ": "JWT"}, claims).rsplit(".", 1)[0] + "."
    assert asyncio.run(reason(none)) == (4001, "algorithm not allowed")
    crit = token_with_header({"alg": "HS256", "typ": "JWT", "crit": ["exp"]}, claims)
    assert asyncio.run(reason(crit)) == (4001, "unsupported critical header")
    long_user = mint("u" * 300)
    code, text = asyncio.run(reason(long_user))
    assert code == 4001 and "user id too long" in text


def test_a_weak_secret_is_warned_about_at_start(start_node):
    """HS256 keys and cluster secrets under 32 bytes (256 bits) can be brute-forced
    offline from one token or handshake: the node says so when it starts."""
    weak = start_node("--cluster-secret", "short-cluster", secret="short")
    strong = start_node()  # the suite's secret: 35 bytes
    def warned(node, flag):
        return any(flag in r.get("fields", {}).get("message", "") and "bytes" in r["fields"]["message"]
                   for r in node.warnings)
    wait_until(lambda: warned(weak, "--jwt-secret is 5 bytes"), what="the JWT secret called weak")
    assert warned(weak, "--cluster-secret is 13 bytes")
    assert not warned(strong, "--jwt-secret")


def test_the_development_secret_is_private(tmp_path):
    data = tmp_path / "data"
    node = Node("--data-dir", str(data), secret=None)
    try:
        assert os.stat(data).st_mode & 0o777 == 0o700
        assert os.stat(data / "dev-jwt-secret").st_mode & 0o777 == 0o600
        assert os.stat(data / "incarnation").st_mode & 0o777 == 0o600
    finally:
        node.stop()


def test_secrets_come_from_files_and_reload_on_sighup(tmp_path):
    jwt = tmp_path / "jwt"
    jwt.write_text("first-secret\n")
    password = tmp_path / "resp"
    password.write_text("pw1\n")
    node = Node("--jwt-secret-file", str(jwt), "--resp-password-file", str(password), secret=None)
    try:
        args = " ".join(open(f"/proc/{node.proc.pid}/cmdline").read().split("\0"))
        assert "first-secret" not in args and "pw1" not in args

        async def go():
            old = await wsclient.connect(node.ws_url, mint(1, secret="first-secret"))
            node.wait_group("user_1", 1)
            jwt.write_text("second-secret\n")
            password.write_text("pw2\n")
            node.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: any("reloaded" in line for line in node.log_tail), what="the reload")
            refused = await wsclient.connect(node.ws_url, mint(2, secret="first-secret"))
            assert await wsclient.close_code(refused) == (4001, "bad signature")
            fresh = await wsclient.connect(node.ws_url, mint(2, secret="second-secret"))
            node.wait_group("user_2", 1)
            # The connection made with the old secret stays and keeps receiving.
            r = redis.Redis(host=node.resp_host, port=node.resp_port, password="pw2")
            assert r.publish("user_1", "still here") == 1
            assert await wsclient.recv(old) == "still here"
            with pytest.raises(redis.AuthenticationError):
                redis.Redis(host=node.resp_host, port=node.resp_port, password="pw1").ping()
            await old.close()
            await fresh.close()
        asyncio.run(go())
    finally:
        node.stop()
