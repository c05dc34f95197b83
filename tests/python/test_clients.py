"""Real WebSocket clients from the old docs: wscat (npm) with the documented command
line, and headless Chromium (Debian) running the browser-console snippet on a page."""

import os
import subprocess
import threading

import redis

from conftest import mint, wait_until

JS = os.path.join(os.path.dirname(__file__), "../js")
WSCAT = os.path.join(JS, "node_modules/.bin/wscat")


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


def test_a_token_expiring_while_the_browser_is_connected(start_node, page_server, browser):
    node = start_node("--token-expiry", "close")
    page = open_page(browser, page_server, node, mint(42, exp_in=2))
    page.wait_for_function("window.opened === true", timeout=10_000)
    page.wait_for_function("window.closes.length === 1", timeout=10_000)
    assert page.evaluate("window.closes[0]") == [4001, "token expired"]
