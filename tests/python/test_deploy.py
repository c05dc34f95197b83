"""deploy/: the systemd unit, its environment file and the nginx config, each used for real."""

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile

import msgpack
import pytest
import redis

from conftest import BIN, Node, free_port, mint, wait_until
from wsclient import connect, recv

DEPLOY = os.path.join(os.path.dirname(__file__), "../../deploy")


def test_the_systemd_unit_verifies_clean():
    tmp = tempfile.mkdtemp(prefix="sb-unit-")
    with open(os.path.join(DEPLOY, "systemd/switchboard@.service")) as f:
        unit = f.read()
    assert "ExecStart=/usr/local/bin/switchboard serve" in unit
    # verify checks that ExecStart exists: point it at the binary under test.
    with open(os.path.join(tmp, "switchboard@.service"), "w") as f:
        f.write(unit.replace("/usr/local/bin/switchboard", os.path.abspath(BIN)))
    out = subprocess.run(["systemd-analyze", "verify", "./switchboard@1.service"], cwd=tmp,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    # Unknown keys are only warnings for systemd-analyze: any output is a failure here.
    assert out.stdout.strip() == "" and out.stderr.strip() == "", out.stdout + out.stderr


def env_file():
    values = {}
    with open(os.path.join(DEPLOY, "systemd/switchboard.env")) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                key, value = line.split("=", 1)
                values[key] = value
    return values


def test_the_environment_file_configures_a_working_node():
    values = env_file()
    assert set(values) >= {"SWITCHBOARD_JWT_SECRET", "SWITCHBOARD_RESP_LISTEN", "SWITCHBOARD_ALLOWED_ORIGINS"}
    # The file's settings; the listen addresses move to free ports for the test (flags
    # beat the environment), and no --jwt-secret flag: the file's secret is the one used.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env.update(values)
    node = Node(env=env, secret=None)
    try:
        async def scenario():
            token = mint(42, secret=values["SWITCHBOARD_JWT_SECRET"])
            origin = values["SWITCHBOARD_ALLOWED_ORIGINS"].split(",")[0]
            ws = await connect(node.ws_url, token, origin=origin)
            node.wait_group("user_42", 1)
            r = redis.Redis(host=node.resp_host, port=node.resp_port)
            assert r.publish("user_42", "from systemd env") == 1
            assert await recv(ws) == "from systemd env"
            # What the old consumer sent to the socket, `event["message"]`, and only that
            # (the file sets --channels-unwrap message): clients change nothing.
            event = msgpack.packb({"type": "send_notification", "message": {"text": "hi"}})
            assert r.publish("asgi__group__user_42", event) == 1
            assert json.loads(await recv(ws)) == {"text": "hi"}
            r.close()
            await ws.close()

        asyncio.run(scenario())
    finally:
        node.stop()


def snippets(prefix, ws_addrs):
    """deploy/nginx/snippets/ copied into `prefix`/snippets/ (where nginx looks for
    `include snippets/...` with `-p prefix`), the upstream pointed at `ws_addrs`."""
    os.makedirs(os.path.join(prefix, "snippets"), exist_ok=True)
    with open(os.path.join(DEPLOY, "nginx/snippets/switchboard-upstream.conf")) as f:
        upstream = f.read()
    servers = "".join(f"    server {a} max_fails=1 fail_timeout=5s;\n" for a in ws_addrs)
    upstream, n = re.subn(r"(upstream switchboard_ws \{\n)(?:.*\n)*?(?=\})",
                          lambda m: m.group(1) + servers, upstream)
    assert n == 1
    with open(os.path.join(prefix, "snippets/switchboard-upstream.conf"), "w") as f:
        f.write(upstream)
    shutil.copy(os.path.join(DEPLOY, "nginx/snippets/switchboard-location.conf"),
                os.path.join(prefix, "snippets/switchboard-location.conf"))


def plain_site(port):
    """deploy/nginx/switchboard.conf with the listener on 127.0.0.1:`port`."""
    with open(os.path.join(DEPLOY, "nginx/switchboard.conf")) as f:
        site = f.read()
    site, n = re.subn(r"listen 80;", f"listen 127.0.0.1:{port};", site)
    assert n == 1
    return site


# The old deployment's server block (the reference guide's), with its /ws/ location
# replaced by the snippet as docs/migration.md says; the upstream comes from conf.d.
EXISTING_SERVER = """
include snippets/switchboard-upstream.conf;
server {
    listen 127.0.0.1:PORT;
    server_name _;

    # Configuration HTTP normale
    location /api/ {
        proxy_pass http://127.0.0.1:8000;
        proxy_set_header Host $host;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
    }

    include snippets/switchboard-location.conf;

    location = /healthz { proxy_pass http://switchboard_ws; }
}
"""


class Nginx:
    """Real nginx (Debian package) running a site built from deploy/nginx/."""

    def __init__(self, ws_addrs, tls=False, existing=False):
        self.prefix = tempfile.mkdtemp(prefix="sb-nginx-")
        self.port = free_port()
        snippets(self.prefix, ws_addrs)
        if existing:
            site = EXISTING_SERVER.replace("PORT", str(self.port))
        else:
            site = plain_site(self.port)
        if tls:
            site = self.tls_site(site)
        with open(os.path.join(self.prefix, "switchboard.conf"), "w") as f:
            f.write(site)
        with open(os.path.join(self.prefix, "nginx.conf"), "w") as f:
            f.write(f"""
daemon off;
pid {self.prefix}/nginx.pid;
error_log {self.prefix}/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log {self.prefix}/access.log;
    client_body_temp_path {self.prefix}/body;
    proxy_temp_path {self.prefix}/proxy;
    fastcgi_temp_path {self.prefix}/fastcgi;
    uwsgi_temp_path {self.prefix}/uwsgi;
    scgi_temp_path {self.prefix}/scgi;
    include {self.prefix}/switchboard.conf;
}}
""")
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        check = subprocess.run([nginx, "-t", "-p", self.prefix, "-c", "nginx.conf"], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        self.proc = subprocess.Popen([nginx, "-p", self.prefix, "-c", "nginx.conf"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.addr = f"127.0.0.1:{self.port}"
        wait_until(lambda: Node.http(self.addr, "/healthz")[0] == 200, what="nginx")

    def tls_site(self, plain):
        """deploy/nginx/switchboard-tls.conf with a fresh self-signed certificate, its
        listeners on free loopback ports, and the upstream and map of the plain site
        (which it says to use together with it) kept; the plain server block stays on
        self.port for health checks."""
        cert, key = os.path.join(self.prefix, "cert.pem"), os.path.join(self.prefix, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=api.example.com", "-keyout", key, "-out", cert],
                       check=True, capture_output=True, timeout=60)
        with open(os.path.join(DEPLOY, "nginx/switchboard-tls.conf")) as f:
            tls = f.read()
        self.tls_port, self.redirect_port = free_port(), free_port()
        for old, new in [("/etc/letsencrypt/live/api.example.com/fullchain.pem", cert),
                         ("/etc/letsencrypt/live/api.example.com/privkey.pem", key),
                         ("listen 443 ssl;", f"listen 127.0.0.1:{self.tls_port} ssl;"),
                         ("listen 80;", f"listen 127.0.0.1:{self.redirect_port};")]:
            assert old in tls, old
            tls = tls.replace(old, new)
        return plain + tls

    def stop(self):
        # SIGTERM: fast shutdown (SIGQUIT would wait out the 7-day WebSocket timeouts).
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=10)


def test_a_client_through_nginx_receives_and_fails_over_when_its_node_dies(start_node):
    a, b = start_node(), start_node()
    nginx = Nginx([a.ws_addr, b.ws_addr])
    try:
        assert Node.http(nginx.addr, "/readyz")[0] == 200
        url = f"ws://{nginx.addr}/ws/notifications/"

        async def scenario():
            ws = await connect(url, mint(42))
            wait_until(lambda: a.group_size("user_42") + b.group_size("user_42") == 1, what="registration")
            first = a if a.group_size("user_42") == 1 else b
            other = b if first is a else a
            r = redis.Redis(host=first.resp_host, port=first.resp_port)
            assert r.publish("user_42", "via nginx") == 1
            assert await recv(ws) == "via nginx"
            r.close()
            # The node behind nginx dies hard; the client reconnects through nginx.
            first.proc.kill()
            first.proc.wait(timeout=10)
            with pytest.raises(Exception):
                await recv(ws)
            ws2 = await connect(url, mint(42))
            other.wait_group("user_42", 1)
            r = redis.Redis(host=other.resp_host, port=other.resp_port)
            assert r.publish("user_42", "after failover") == 1
            assert await recv(ws2) == "after failover"
            r.close()
            await ws2.close()

        asyncio.run(scenario())
    finally:
        nginx.stop()


def test_the_location_snippet_goes_into_the_old_server_block(node):
    """docs/migration.md's step: the old server block keeps its /api/ location; its /ws/
    location becomes `include snippets/switchboard-location.conf;` and the upstream
    snippet sits in the http context. nginx accepts it and a client gets through."""
    nginx = Nginx([node.ws_addr], existing=True)
    try:
        async def scenario():
            ws = await connect(f"ws://{nginx.addr}/ws/notifications/", mint(43))
            node.wait_group("user_43", 1)
            r = redis.Redis(host=node.resp_host, port=node.resp_port)
            assert r.publish("user_43", "through the old server block") == 1
            assert await recv(ws) == "through the old server block"
            r.close()
            await ws.close()

        asyncio.run(scenario())
    finally:
        nginx.stop()


def test_the_local_cluster_script_starts_three_meshed_nodes_and_stops_them():
    script = os.path.join(DEPLOY, "local-cluster.sh")
    state = tempfile.mkdtemp(prefix="sb-local-")
    env = dict(os.environ, SWITCHBOARD_BIN=os.path.abspath(BIN), SWITCHBOARD_LOCAL_DIR=state)
    out = subprocess.run([script, "start"], env=env, capture_output=True, text=True, timeout=60)
    try:
        assert out.returncode == 0, out.stderr
        url = next(l.strip() for l in out.stdout.splitlines() if l.strip().startswith("ws://127.0.0.1:8011"))

        def members_up():
            r = subprocess.run([BIN, "members", "--admin", "127.0.0.1:8002", "--json"], capture_output=True, text=True)
            return r.returncode == 0 and sorted(m["id"] for m in json.loads(r.stdout)["members"] if m["up"]) == [1, 2, 3]

        wait_until(members_up, what="three meshed nodes")

        async def scenario():
            ws = await connect(url.split("?token=")[0], url.split("?token=")[1])
            wait_until(lambda: json.loads(subprocess.run(
                [BIN, "group", "user_1", "--admin", "127.0.0.1:8022", "--json"],
                capture_output=True, text=True).stdout)["connections"] == 1, what="interest on node 3")
            r = redis.Redis(host="127.0.0.1", port=6382)
            assert r.publish("user_1", "from node 3") == 1
            assert await recv(ws) == "from node 3"
            r.close()
            await ws.close()

        asyncio.run(scenario())
    finally:
        stop = subprocess.run([script, "stop"], env=env, capture_output=True, text=True, timeout=60)
        assert stop.returncode == 0, stop.stderr
    for n in (1, 2, 3):
        assert not os.path.exists(os.path.join(state, f"node-{n}.pid"))


def test_the_local_cluster_script_names_a_taken_port_and_starts_nothing():
    script = os.path.join(DEPLOY, "local-cluster.sh")
    state = tempfile.mkdtemp(prefix="sb-local-")
    env = dict(os.environ, SWITCHBOARD_BIN=os.path.abspath(BIN), SWITCHBOARD_LOCAL_DIR=state)
    # What a node from step 1 of the README would hold: node 1's WebSocket port.
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", 8001))
    squatter.listen()
    try:
        out = subprocess.run([script, "start"], env=env, capture_output=True, text=True, timeout=60)
    finally:
        squatter.close()
    assert out.returncode == 1, out
    assert "node 1's WebSocket port: tcp 127.0.0.1:8001" in out.stderr, out.stderr
    assert f"pid {os.getpid()}" in out.stderr, out.stderr
    for n in (1, 2, 3):
        assert not os.path.exists(os.path.join(state, f"node-{n}.pid")), "nothing started"


def test_the_tls_example_serves_wss_and_redirects_http(start_node):
    import ssl

    node = start_node()
    nginx = Nginx([node.ws_addr], tls=True)
    try:
        req = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
                              "-H", "Host: api.example.com", f"http://127.0.0.1:{nginx.redirect_port}/ws/notifications/"],
                             capture_output=True, text=True, timeout=10)
        assert req.stdout.startswith("301 https://api.example.com/ws/notifications/"), req.stdout
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE

        async def scenario():
            import websockets
            ws = await websockets.connect(f"wss://127.0.0.1:{nginx.tls_port}/ws/notifications/?token={mint(42)}",
                                          ssl=context, open_timeout=10)
            node.wait_group("user_42", 1)
            r = redis.Redis(host=node.resp_host, port=node.resp_port)
            assert r.publish("user_42", "over wss") == 1
            assert await recv(ws) == "over wss"
            r.close()
            await ws.close()

        asyncio.run(scenario())
        status, _ = Node.http(f"127.0.0.1:{nginx.port}", "/readyz")
        assert status == 200
    finally:
        nginx.stop()
