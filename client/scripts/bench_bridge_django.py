"""The backend's own side of the bridge, measured: the old deployment's Django project
(tests/django) serving signed bridge calls, under Gunicorn (its WSGI app, as the old
deployment served HTTP) and under Uvicorn (its ASGI app), one process each; calls one at
a time, then 16 at once. What a node's disconnect calls after a node death go at.

Run by client/scripts/bench-bridge.sh django (it needs the test venv: tests/run makes it).
"""

import concurrent.futures
import json
import os
import sys
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))

from conftest import wait_until  # noqa: E402
from django_stack import BACKEND_SECRET, VENV_BIN, Listener, Process, django_env, migrate  # noqa: E402
from switchboard_channels.signing import sign  # noqa: E402


def call(base, i, kind):
    event = {"v": 1, "type": kind, "connection": f"9-a-{i}", "channel": f"switchboard.conn!9-a-{i}", "node": 9,
             "user": "1", "seq": 1, "scope": {"path": "/ws/notifications/", "query_string": "", "headers": []}}
    if kind == "disconnect":
        event["code"] = 1006
    else:
        event["text"] = json.dumps({"action": "mark_read", "id": 1})
    body = json.dumps(event).encode()
    req = urllib.request.Request(base + "/switchboard/", data=body, headers={
        "content-type": "application/json", "x-switchboard-signature": sign(BACKEND_SECRET.encode(), body)})
    started = time.monotonic()
    urllib.request.urlopen(req, timeout=30).read()
    return time.monotonic() - started


def measure(name, cmd_of):
    listener = Listener()
    env = django_env(6390, f"/tmp/bench-bridge-{name}.sqlite3", SWITCHBOARD_BACKEND_SECRET=BACKEND_SECRET,
                     LOG_LEVEL="WARNING")
    migrate(env)
    fd = listener.sock.fileno()
    server = Process(cmd_of(fd), env=env, pass_fds=(fd,))
    listener.close()
    base = f"http://127.0.0.1:{listener.port}"

    def up():
        try:
            urllib.request.urlopen(base + "/api/events/", timeout=2).read()
            return True
        except OSError:
            return False

    wait_until(up, timeout=30, what=f"{name} to answer")
    offset = 0
    for kind in ("receive", "disconnect"):
        for n, parallel in ((300, 1), (600, 16)):
            started = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
                took = sorted(pool.map(lambda i: call(base, offset + i, kind), range(n)))
            offset += n
            elapsed = time.monotonic() - started
            print(f"{name:9} {kind:10} {parallel:2} at once: {n / elapsed:5.0f} calls/s, "
                  f"p50 {took[n // 2] * 1e3:6.1f} ms, p99 {took[int(n * 0.99)] * 1e3:6.1f} ms")
    server.stop()


measure("gunicorn", lambda fd: [os.path.join(VENV_BIN, "gunicorn"), "config.wsgi", "-b", f"fd://{fd}",
                                 "--threads", "16", "--log-level", "warning"])
measure("uvicorn", lambda fd: [os.path.join(VENV_BIN, "uvicorn"), "config.asgi:application", "--fd", str(fd),
                                "--log-level", "warning"])
