"""The browser client (client/js/switchboard.js) in headless Chromium against real nodes:
it follows a group, moves to another node when its node drains, and recovers exactly what
was published meanwhile; it reports `recovered: false` when history could not cover the
gap; it refreshes its token before it expires; and it stops on a forbidden origin."""

import base64
import http.server
import json
import os
import threading
import time

import pytest

from conftest import mint, wait_until
from positions import client, placed, settled

JS_DIR = os.path.join(os.path.dirname(__file__), "../../client/js")

PAGE = """<!doctype html><html><body><script type="module">
import { Switchboard } from "./switchboard.js";
window.Switchboard = Switchboard;
window.ready = true;
</script></body></html>"""

# Starts a client in the page; its callbacks fill window.log. The token comes from a
# function, as an app fetching a fresh token would; `window.gate`, when set, holds the
# next connect until the test opens it.
START = """([urls, token, groups]) => {
  window.log = { messages: [], recovered: [], status: [] };
  window.sb = new window.Switchboard({
    urls, groups, backoff: { min: 50, max: 500 },
    token: () => (window.gate || Promise.resolve()).then(() => token),
    onMessage: (m) => window.log.messages.push(m),
    onRecovered: (r) => window.log.recovered.push(r),
    onStatus: (s, info) => window.log.status.push([s, info]),
  });
}"""


@pytest.fixture
def module_server():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.startswith("/switchboard.js"):
                with open(os.path.join(JS_DIR, "switchboard.js"), "rb") as f:
                    body, kind = f.read(), "text/javascript"
            else:
                body, kind = PAGE.encode(), "text/html; charset=utf-8"
            self.send_response(200)
            self.send_header("content-type", kind)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def open_page(browser, url):
    page = browser.new_page()
    page.goto(f"{url}/index.html")
    page.wait_for_function("window.ready === true", timeout=10_000)
    return page


def log(page):
    return page.evaluate("window.log")


def datas(page):
    return [m["data"] for m in log(page)["messages"]]


def test_the_browser_client_recovers_on_another_node_after_a_drain(start_cluster, browser, module_server):
    a, b, c = start_cluster(3, "--history", "user_*=1000,10m")
    wait_until(lambda: settled([a, b, c]), timeout=20, what="history assignments settled")
    user = placed(a, lambda o, r: 2 not in (o, r), prefix="js")
    group = f"user_{user}"
    page = open_page(browser, module_server)
    page.evaluate(START, [[b.ws_url, c.ws_url], mint(user), [group]])
    a.wait_group(group, 1)
    wait_until(lambda: any(s == "open" for s, _ in log(page)["status"]), what="the client open")
    with client(a) as r:
        assert r.publish(group, "before") == 1
    wait_until(lambda: datas(page) == ["before"], what="the first message")
    first = log(page)["messages"][0]
    assert first["group"] == group and first["offset"] == 1 and "epoch" in first

    b.cli("drain")
    wait_until(lambda: any(s == "closed" and i["code"] == 1012 for s, i in log(page)["status"]),
               what="the drain's 1012")
    # Published while the client is between nodes (or already on node 3: it recovers
    # either way, from its last position).
    with client(a) as r:
        for i in range(30):
            r.publish(group, f"missed {i}")
    wait_until(lambda: len(datas(page)) == 31, what="the missed messages")
    assert datas(page) == ["before"] + [f"missed {i}" for i in range(30)]
    offsets = [m["offset"] for m in log(page)["messages"]]
    assert offsets == list(range(1, 32)), "in order, none twice"
    assert {"group": group, "recovered": True} in log(page)["recovered"]
    assert page.evaluate("window.sb.positions()")[group]["offset"] == 31
    page.evaluate("window.sb.close()")
    page.close()


def test_the_browser_client_reports_what_history_could_not_cover(start_node, browser, module_server):
    n = start_node("--history", "user_*=3")
    page = open_page(browser, module_server)
    page.evaluate(START, [[n.ws_url], mint(77), ["user_77"]])
    n.wait_group("user_77", 1)
    wait_until(lambda: any(s == "open" for s, _ in log(page)["status"]), what="the client open")
    with client(n) as r:
        r.publish("user_77", "one")
    wait_until(lambda: datas(page) == ["one"], what="the first message")
    # The client's connection drops, and it cannot come back before more than the
    # history holds is published (its token is slow to come).
    page.evaluate("() => { window.gate = new Promise((open) => { window.openGate = open; }); }")
    page.evaluate("window.sb.ws.close(4000)")
    n.wait_group("user_77", 0)
    with client(n) as r:
        for i in range(10):
            r.publish("user_77", f"m{i}")
    page.evaluate("window.openGate()")
    wait_until(lambda: {"group": "user_77", "recovered": False} in log(page)["recovered"],
               what="recovered: false")
    assert datas(page) == ["one"], "nothing replayed when not recovered"
    with client(n) as r:
        r.publish("user_77", "after")
    wait_until(lambda: datas(page) == ["one", "after"], what="live messages after it")
    assert log(page)["messages"][-1]["offset"] == 12
    page.evaluate("window.sb.close()")
    page.close()


def test_the_browser_client_stops_when_forbidden(start_node, browser, module_server):
    n = start_node("--allowed-origins", "https://app.example.com")
    page = open_page(browser, module_server)
    page.evaluate(START, [[n.ws_url], mint(5), []])
    wait_until(lambda: any(s == "stopped" for s, _ in log(page)["status"]), what="the client stopped")
    closes = [i["code"] for s, i in log(page)["status"] if s == "closed"]
    assert closes == [4003], json.dumps(log(page)["status"])
    page.close()


def test_the_browser_client_refreshes_its_token_before_it_expires(start_node, browser, module_server):
    """A node that closes connections at their token's `exp` (`--token-expiry close`), and
    a client whose token function hands out a token valid for 4 s, then one valid for an
    hour: the client sends the second with `refresh` before the first expires, and its one
    connection outlives the first token."""
    n = start_node("--token-expiry", "close")
    short, long = mint(81, exp_in=4), mint(81, exp_in=3600)
    page = open_page(browser, module_server)
    page.evaluate("""([url, tokens]) => {
      window.log = { messages: [], status: [], replies: [] };
      window.sb = new window.Switchboard({
        urls: [url], groups: [],
        token: () => Promise.resolve(tokens.length > 1 ? tokens.shift() : tokens[0]),
        onMessage: (m) => window.log.messages.push(m),
        onStatus: (s, info) => window.log.status.push([s, info]),
        onReply: (r) => window.log.replies.push(r),
      });
    }""", [n.ws_url, [short, long]])
    n.wait_group("user_81", 1)
    wait_until(lambda: any(r.get("type") == "refreshed" for r in log(page)["replies"]),
               timeout=10, what="the refresh before the first token's expiry")
    exp = json.loads(base64.urlsafe_b64decode(short.split(".")[1] + "=="))["exp"]
    wait_until(lambda: time.time() >= exp + 1.5, timeout=10, what="the first token's expiry")
    with client(n) as r:
        assert r.publish("user_81", "still here") == 1
    wait_until(lambda: datas(page) == ["still here"], what="a message after the first token's expiry")
    states = [s for s, _ in log(page)["status"]]
    assert states == ["open"], json.dumps(log(page)["status"])
    page.evaluate("window.sb.close()")
    page.close()
