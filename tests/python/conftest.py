"""Fixtures: a real `switchboard serve` process on ephemeral loopback ports, SimpleJWT-style
tokens, and helpers that wait for conditions with a deadline (never fixed sleeps)."""

import base64
import http.server
import hashlib
import hmac
import json
import os
import queue
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest

SECRET = "django-insecure-python-suite-secret"
BIN = os.environ.get("SWITCHBOARD_BIN", os.path.join(os.path.dirname(__file__), "../../target/debug/switchboard"))
DEADLINE = 10.0


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint(user_id, groups=None, exp_in=300, secret=SECRET, extra=None):
    """An HS256 token shaped like djangorestframework-simplejwt's access tokens."""
    now = int(time.time())
    claims = {"token_type": "access", "exp": now + exp_in, "iat": now, "jti": uuid.uuid4().hex}
    if user_id is not None:  # None: no user_id claim (say, a token naming its user in `sub`)
        claims["user_id"] = user_id
    if groups is not None:
        claims["groups"] = groups
    claims.update(extra or {})
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(sig)}"


def wait_until(pred, timeout=DEADLINE, what="condition"):
    end = time.monotonic() + timeout
    step = 0.005
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(step)
        step = min(step * 2, 0.1)


def free_port(kind=socket.SOCK_STREAM):
    """A loopback port nothing holds now (TCP, or UDP with `socket.SOCK_DGRAM`), for a
    server started at once."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    def __init__(self, *flags, env=None, secret=SECRET, preexec_fn=None, wait_ready=True):
        """A node; `secret` is passed as --jwt-secret (None: none, e.g. when `env` has one);
        `env` replaces the inherited environment; `preexec_fn` runs in the child before
        exec (resource limits); `wait_ready=False` returns once it listens."""
        self.dir = tempfile.mkdtemp(prefix="sb-py-")
        # The admin token the node was given, if any: the CLI and admin reads use it.
        self.admin_token = flags[flags.index("--admin-token") + 1] if "--admin-token" in flags else None
        if "--data-dir" in flags:
            self.dir = flags[flags.index("--data-dir") + 1]
            i = flags.index("--data-dir")
            flags = flags[:i] + flags[i + 2:]
        if secret:
            flags = ("--jwt-secret", secret, *flags)
        # Every listener on a free loopback port, unless `flags` names its address.
        listen = [arg for flag in ("--ws-listen", "--resp-listen", "--admin-listen", "--peer-listen")
                  if flag not in flags for arg in (flag, "127.0.0.1:0")]
        cmd = [BIN, "serve", "--log-format", "json", *listen, "--data-dir", self.dir, *flags]
        env = dict(env if env is not None else os.environ, RUST_LOG="info")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True,
                                     preexec_fn=preexec_fn)
        self.log_tail = []  # the last lines of stderr, for failure messages
        self.errors = []  # every ERROR line
        self.warnings = []  # every WARN record (at most 100 000)
        self.records = []  # every log record (at most 100 000)
        logs = queue.Queue()
        threading.Thread(target=self._pump, args=(logs,), daemon=True).start()
        addrs = {}
        end = time.monotonic() + DEADLINE
        while len(addrs) < 4:
            if time.monotonic() > end:
                self._fail_start(f"timed out waiting for the listening addresses (got {sorted(addrs)})")
            try:
                line = logs.get(timeout=max(0.05, min(0.5, end - time.monotonic())))
            except queue.Empty:
                if self.proc.poll() is not None:
                    self._fail_start(f"switchboard exited {self.proc.returncode} during start")
                continue
            fields = line.get("fields", {})
            message = fields.get("message", "")
            for key, prefix in (("ws", "WebSocket endpoint listening"), ("resp", "RESP ingest shim listening"),
                                ("admin", "admin API listening"), ("peer", "peer endpoint listening")):
                if message.startswith(prefix):
                    addrs[key] = fields["addr"]
        self.ws_addr, self.resp_addr, self.admin = addrs["ws"], addrs["resp"], addrs["admin"]
        self.peer_addr = addrs["peer"]
        self.resp_host, port = self.resp_addr.rsplit(":", 1)
        self.resp_port = int(port)
        self.ws_url = f"ws://{self.ws_addr}/ws/notifications/"
        if wait_ready:
            wait_until(lambda: self.http(self.ws_addr, "/readyz")[0] == 200, what="readiness")

    def _fail_start(self, why):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        tail = "\n".join(self.log_tail[-20:])
        raise AssertionError(f"{why}; stderr ends with:\n{tail}")

    @staticmethod
    def token(user_id, groups=None, exp_in=300, **extra):
        """A SimpleJWT-style access token this node accepts (see `mint`)."""
        return mint(user_id, groups=groups, exp_in=exp_in, extra=extra)

    def _pump(self, logs):
        for line in self.proc.stderr:
            self.log_tail.append(line.rstrip())
            del self.log_tail[:-200]
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("level") == "ERROR":
                self.errors.append(line.rstrip())
            if record.get("level") == "WARN" and len(self.warnings) < 100_000:
                self.warnings.append(record)
            if len(self.records) < 100_000:
                self.records.append(record)
            logs.put(record)

    @staticmethod
    def http(addr, path, method="GET", token=None):
        req = urllib.request.Request(f"http://{addr}{path}", method=method)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, ""  # not listening (yet), or gone

    def group_size(self, group):
        status, body = self.http(self.admin, f"/v1/groups/{urllib.parse.quote(group, safe='')}",
                                 token=self.admin_token)
        return json.loads(body)["connections"] if status == 200 else -1

    def wait_group(self, group, n):
        wait_until(lambda: self.group_size(group) == n, what=f"{n} connection(s) in {group}")

    def cli(self, *args):
        """`switchboard <args> --json` against this node's admin API."""
        env = dict(os.environ, SWITCHBOARD_ADMIN_TOKEN=self.admin_token) if self.admin_token else None
        out = subprocess.run([BIN, *args, "--admin", self.admin, "--json"], capture_output=True, text=True,
                             timeout=10, env=env)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            code = self.proc.wait(timeout=10)
            assert code == 0, f"switchboard exited {code} on SIGTERM"


@pytest.fixture
def node():
    n = Node()
    yield n
    n.stop()


def up_members(node):
    """Ids of the members `node` reports up, sorted."""
    return sorted(m["id"] for m in node.cli("members")["members"] if m["up"])


def formed(node, voters):
    """Whether `node` is ready, knows a leader, and has exactly `voters` as Raft voters
    (and, when presence is sharded, every shard its 3 voters, or all of `voters`, and the
    node hosting exactly the shards it votes in, each with a leader known)."""
    status = node.cli("status")
    shards = (status.get("presence_shards") or {}).get("shards", [])
    return (status["ready"] and status["leader"] is not None and status["raft"]["voters"] == voters
            and all(len(s["voters"]) == min(len(voters), 3) for s in shards)
            and all((status["id"] in s["voters"]) == (s["hosted"] is not None) for s in shards)
            and all(s["hosted"] is None or s["hosted"]["leader"] is not None for s in shards))


CLUSTER_SECRET = "python-suite-cluster-secret"


@pytest.fixture
def start_cluster(start_node):
    """Starts nodes 1..n (2..n seeded with node 1), all with the same cluster secret and a
    2 s node timeout plus `flags`, and returns them once every node sees the full mesh."""

    def start(n=3, *flags):
        common = ("--cluster-secret", CLUSTER_SECRET, "--node-timeout-ms", "2000", *flags)
        first = start_node("--node-id", "1", *common)
        nodes = [first] + [start_node("--node-id", str(i), "--seeds", first.peer_addr, *common)
                           for i in range(2, n + 1)]
        for node in nodes:
            wait_until(lambda node=node: up_members(node) == list(range(1, n + 1)), what="a full mesh")
        # Formed: every node a Raft voter (up to the default 5) and one leader known to all.
        voters = list(range(1, min(n, 5) + 1))
        for node in nodes:
            wait_until(lambda node=node: formed(node, voters), what="the Raft membership")
        return nodes

    return start


@pytest.fixture
def start_node():
    nodes = []

    def start(*flags, **kwargs):
        n = Node(*flags, **kwargs)
        nodes.append(n)
        return n

    yield start
    stop_all(nodes)


def stop_all(nodes):
    """Stops every node (SIGTERM, exit 0 within 10 s), even if one of them fails to."""
    failures = []
    for n in nodes:
        try:
            n.stop()
        except (AssertionError, subprocess.TimeoutExpired) as e:
            if n.proc.poll() is None:
                n.proc.kill()
                n.proc.wait(timeout=10)
            tail = "\n".join(n.log_tail[-15:])
            failures.append(f"{e}; its log ends with:\n{tail}")
    assert not failures, "; ".join(failures)


# ----- a page served on loopback and a headless Chromium (Debian's), for browser tests -----

CHROMIUM = "/usr/bin/chromium"

PAGE = """<!doctype html><html><body><script>
const params = new URLSearchParams(location.search);
window.received = []; window.closes = []; window.opened = false;
// The browser-console snippet of the old docs, unchanged but for the URL:
const token = params.get('token');
const ws = new WebSocket(`${params.get('url')}?token=${token}`);
ws.onopen = () => { console.log('Connecté!'); window.opened = true; };
ws.onmessage = (event) => { console.log('Message:', event.data); window.received.push(event.data); };
ws.onerror = (error) => console.error('Erreur:', error);
ws.onclose = (event) => { console.log('Déconnecté'); window.closes.push([event.code, event.reason]); };
</script></body></html>"""


@pytest.fixture
def page_server():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = PAGE.encode()
            self.send_response(200)
            self.send_header("content-type", "text/html; charset=utf-8")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def browser():
    assert os.path.exists(CHROMIUM), "chromium missing: tests/run installs Debian's chromium"
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


