"""Real WebSocket clients from the old docs: wscat (npm) with the documented command
line, and headless Chromium (Debian) running the browser-console snippet on a page."""

import asyncio
import http.server
import os
import subprocess
import threading
import time

import pytest
import redis

from conftest import mint, wait_until

JS = os.path.join(os.path.dirname(__file__), "../js")
WSCAT = os.path.join(JS, "node_modules/.bin/wscat")
CHROMIUM = "/usr/bin/chromium"


def test_wscat_receives_a_published_message(node):
    assert os.path.exists(WSCAT), "wscat missing: tests/run installs it with npm ci in tests/js"
    # The old docs' command line: wscat -c "wss://host/ws/notifications/?token=YOUR_JWT_TOKEN"
    proc = subprocess.Popen([WSCAT, "-c", f"{node.ws_url}?token={mint(42)}"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    reader = threading.Thread(target=lambda: [lines.append(l) for l in proc.stdout], daemon=True)
    reader.start()
    try:
        node.wait_group("user_42", 1)
        r = redis.Redis(host=node.resp_host, port=node.resp_port)
        assert r.publish("user_42", "hello wscat") == 1
        wait_until(lambda: any("hello wscat" in l for l in lines), what="wscat to print the message")
        r.close()
    finally:
        proc.kill()
        proc.wait(timeout=10)


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


def open_page(browser, page_server, node, token):
    page = browser.new_page()
    page.goto(f"{page_server}/?url={node.ws_url}&token={token}")
    return page


def test_the_browser_snippet_receives_hello(start_node, page_server, browser):
    # The page's origin is allowed; the browser sends it as Origin.
    node = start_node("--allowed-origins", page_server)
    page = open_page(browser, page_server, node, mint(42))
    page.wait_for_function("window.opened === true", timeout=10_000)
    node.wait_group("user_42", 1)
    r = redis.Redis(host=node.resp_host, port=node.resp_port)
    assert r.publish("user_42", "hello") == 1
    page.wait_for_function("window.received.includes('hello')", timeout=10_000)
    r.close()


def test_a_browser_from_another_origin_gets_4003(start_node, page_server, browser):
    node = start_node("--allowed-origins", "https://app.example")
    page = open_page(browser, page_server, node, mint(42))
    page.wait_for_function("window.closes.length === 1", timeout=10_000)
    assert page.evaluate("window.closes[0]") == [4003, "origin not allowed"]


def test_a_token_expiring_while_the_browser_is_connected(node, page_server, browser):
    page = open_page(browser, page_server, node, mint(42, exp_in=2))
    page.wait_for_function("window.opened === true", timeout=10_000)
    page.wait_for_function("window.closes.length === 1", timeout=10_000)
    assert page.evaluate("window.closes[0]") == [4001, "token expired"]
