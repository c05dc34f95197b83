"""The old deployment's Django project (tests/django) run for real, two ways:

- `OldStack`: Daphne serving config.asgi (HTTP and WebSockets) with a real redis-server
  as the channel layer: the reference;
- `NewStack`: Gunicorn serving config.wsgi with the Switchboard bridge mounted, its
  channel layer (channels_redis, unchanged) pointed at a node's RESP port, and nodes
  started with --backend-url pointing at it.

Both expose the same calls (the project's API, where WebSocket clients connect, a kick
and a revocation as each stack does them), so a test runs one scenario against each and
compares what a real WebSocket client received.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from conftest import DEADLINE, free_port, wait_until

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PROJECT = os.path.join(ROOT, "tests", "django")
VENV_BIN = os.path.dirname(sys.executable)
SECRET_KEY = "django-insecure-bridge-suite-0123456789abcdefghijklmnopqrstuvwxyz"
BACKEND_SECRET = "bridge-suite-backend-secret"


class Listener:
    """A listening socket on an ephemeral loopback port, made before the server that
    will serve it (Gunicorn takes it as `fd://N`), so that the nodes can be given its
    address first and no other process can take the port meanwhile."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.sock.set_inheritable(True)
        self.port = self.sock.getsockname()[1]

    def close(self):
        self.sock.close()


class Process:
    """A child process whose output is kept (the tail, for failure messages) and
    scanned for a line."""

    def __init__(self, cmd, env, cwd=PROJECT, pass_fds=()):
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, pass_fds=pass_fds)
        self.lines = []
        self.lock = threading.Lock()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            with self.lock:
                self.lines.append(line.rstrip())
                del self.lines[:-2000]

    def find(self, pattern):
        with self.lock:
            for line in self.lines:
                m = re.search(pattern, line)
                if m:
                    return m
        return None

    def tail(self, n=30):
        with self.lock:
            return "\n".join(self.lines[-n:])

    def wait_for(self, pattern, what):
        try:
            return wait_until(lambda: self.find(pattern) or self._check_alive(), timeout=20, what=what)
        except AssertionError as e:
            raise AssertionError(f"{e}; output ends with:\n{self.tail()}") from None

    def _check_alive(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"exited {self.proc.returncode}:\n{self.tail()}")
        return None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def django_env(redis_port, db, **extra):
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        SECRET_KEY=SECRET_KEY,
        DB_NAME=db,
        REDIS_HOST="127.0.0.1",
        REDIS_PORT=str(redis_port),
        PYTHONPATH=PROJECT,
    )
    env.pop("SWITCHBOARD_BACKEND_SECRET", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def migrate(env):
    out = subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=PROJECT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


class Api:
    """The project's HTTP API at `base`."""

    def __init__(self, base):
        self.base = base

    def call(self, path, data=None, method=None):
        body = json.dumps(data).encode() if data is not None else None
        req = urllib.request.Request(self.base + path, data=body, method=method or ("POST" if body else "GET"),
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=DEADLINE) as r:
            return json.loads(r.read())

    def user(self, name):
        """A new user and an access token for it (SimpleJWT's /api/token/)."""
        password = f"pw-{name}-0"
        uid = self.call("/api/signup/", {"username": name, "password": password})["id"]
        token = self.call("/api/token/", {"username": name, "password": password})["access"]
        return uid, token

    def events(self, kind=None):
        return self.call("/api/events/" + (f"?kind={kind}" if kind else ""))["events"]


class RedisServer:
    def __init__(self):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="sb-redis-")
        self.proc = Process(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", self.dir], env=dict(os.environ))
        self.proc.wait_for("Ready to accept connections", "redis-server to start")

    def stop(self):
        self.proc.stop()


class OldStack:
    """Daphne + Redis, the deployment Switchboard replaces."""

    name = "daphne"

    def __init__(self, access_token_seconds=300):
        self.dir = tempfile.mkdtemp(prefix="sb-old-")
        self.redis = RedisServer()
        env = django_env(self.redis.port, os.path.join(self.dir, "db.sqlite3"),
                         ACCESS_TOKEN_SECONDS=access_token_seconds)
        migrate(env)
        self.server = Process([os.path.join(VENV_BIN, "daphne"), "-b", "127.0.0.1", "-p", "0",
                               "config.asgi:application"], env=env)
        m = self.server.wait_for(r"Listening on TCP address 127\.0\.0\.1:(\d+)", "daphne to listen")
        port = int(m.group(1))
        self.api = Api(f"http://127.0.0.1:{port}")
        self.ws_url = f"ws://127.0.0.1:{port}/ws/notifications/"

    def kick(self, user_id, code):
        self.api.call("/api/kick/", {"user_id": user_id, "code": code})

    def revoke(self, user_id):
        # The old stack had no revocation: the consumer closed itself with 4001.
        self.api.call("/api/kick/", {"user_id": user_id, "code": 4001})

    def stop(self):
        self.server.stop()
        self.redis.stop()


class Bridge:
    """Gunicorn serving the project with the bridge mounted, on `listener`;
    `redis_port` is the RESP port of the node its channel layer talks to."""

    def __init__(self, listener, redis_port, db, access_token_seconds=300, threads=16, workers=1,
                 layer="core"):
        env = django_env(redis_port, db, SWITCHBOARD_BACKEND_SECRET=BACKEND_SECRET,
                         ACCESS_TOKEN_SECONDS=access_token_seconds, CHANNEL_LAYER=layer)
        migrate(env)
        fd = listener.sock.fileno()
        self.server = Process([os.path.join(VENV_BIN, "gunicorn"), "config.wsgi", "-b", f"fd://{fd}",
                               "--workers", str(workers), "--threads", str(threads), "--timeout", "60"], env=env,
                              pass_fds=(fd,))
        listener.close()
        self.server.wait_for(r"Booting worker", "gunicorn to start")
        self.api = Api(f"http://127.0.0.1:{listener.port}")
        wait_until(self._answers, what="gunicorn to answer")

    def _answers(self):
        try:
            self.api.call("/api/events/")
            return True
        except (urllib.error.URLError, ConnectionError):
            return False

    def stop(self):
        self.server.stop()


def backend_flags(listener):
    """The flags that point a node at the bridge on `listener` (and make it deliver what
    the old consumer's send_json(event["message"]) sent)."""
    return ("--jwt-secret", SECRET_KEY, "--backend-url", f"http://127.0.0.1:{listener.port}/switchboard/",
            "--backend-secret", BACKEND_SECRET, "--channels-unwrap", "message")


class NewStack:
    """Switchboard nodes (already started with `backend_flags(port)`) and the bridge.
    Clients connect to `client_node`; Django's channel layer talks to `publisher_node`.
    `stop` stops the nodes first (they make their last disconnect calls), then the
    bridge."""

    name = "switchboard"

    def __init__(self, listener, client_node, publisher_node, access_token_seconds=300, nodes=None,
                 layer="core"):
        self.nodes = nodes or [client_node]
        self.dir = tempfile.mkdtemp(prefix="sb-new-")
        self.bridge = Bridge(listener, publisher_node.resp_port, os.path.join(self.dir, "db.sqlite3"),
                             access_token_seconds=access_token_seconds, layer=layer)
        self.api = self.bridge.api
        self.node = client_node
        self.ws_url = client_node.ws_url

    def kick(self, user_id, code):
        self.node.cli("disconnect", str(user_id), "--code", str(code))

    def revoke(self, user_id):
        self.node.cli("revoke", str(user_id))

    def stop(self):
        for node in self.nodes:
            node.stop()
        self.bridge.stop()
