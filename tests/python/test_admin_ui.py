"""The admin page (`/ui/` on the admin port) in headless Chromium against a real 3-node
cluster with an admin token: it asks for the token, then shows this node, every member
(up, role, connections, buckets), charts drawn from /metrics, a presence lookup, and a
drain that asks for confirmation. Screenshots are taken and checked: not blank, and the
chart canvases hold drawn pixels."""

import os
import struct
import tempfile
import zlib

from conftest import mint, up_members, wait_until
from websockets.sync.client import connect as ws_connect

ADMIN_TOKEN = "admin-ui-test-token"


def png_size_and_colours(data):
    """(width, height, distinct colours in a sample of rows) of an RGB(A) PNG, decoded
    here (no imaging library): a blank or failed render has one colour."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, chunks, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            chunks.append(body)
        pos += 12 + length
    width, height, depth, colour_type = header[:4]
    assert depth == 8 and colour_type in (2, 6), header
    channels = 3 if colour_type == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels
    colours, previous = set(), bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        row = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):  # PNG filters, undone
            a = row[x - channels] if x >= channels else 0
            b, c = previous[x], previous[x - channels] if x >= channels else 0
            if kind == 1:
                row[x] = (row[x] + a) & 0xFF
            elif kind == 2:
                row[x] = (row[x] + b) & 0xFF
            elif kind == 3:
                row[x] = (row[x] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                row[x] = (row[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        if y % 8 == 0:
            for x in range(0, stride, channels * 4):
                colours.add(bytes(row[x:x + 3]))
        previous = row
    return width, height, len(colours)


def watch(page):
    """Every console error, failed request and HTTP error the page meets, as a list."""
    problems = []
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} {r.failure}"))
    page.on("response", lambda r: r.status >= 400 and problems.append(f"HTTP {r.status}: {r.url}"))
    return problems


# What the page calls its figures, and that each has a hint (the element's title).
STATUS_LABELS = ["Node", "State", "Ready for clients", "Raft role", "Raft term", "Raft leader", "Members up",
                 "Clients connected here", "Groups with clients here", "Connections in the cluster",
                 "History buckets moving", "Version", "Up for"]
MEMBER_COLUMNS = ["Node", "Raft role", "State", "Version", "WebSocket address", "Clients", "Groups",
                  "History buckets: owner / replica", "Last heard"]


def labels_and_hints(page, selector):
    return page.evaluate(f"""() => [...document.querySelectorAll({selector!r})]
        .map(e => [e.textContent.trim(), e.title.trim()])""")


def check_labels(page):
    """The page's labels are words a person reads without the docs, each with a hint."""
    status = labels_and_hints(page, "#status dt")
    assert [label for label, _ in status] == STATUS_LABELS
    members = labels_and_hints(page, "#members thead th")
    assert [label for label, _ in members] == MEMBER_COLUMNS
    for label, hint in status + members + labels_and_hints(page, "#presence thead th"):
        assert len(hint) > 15, f"{label!r} has no hint"


def test_the_admin_page_shows_the_cluster_and_drains_with_confirmation(start_cluster, browser):
    a, b, c = start_cluster(3, "--admin-token", ADMIN_TOKEN)
    shots = tempfile.mkdtemp(prefix="sb-ui-")
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    dialogs = []

    def on_dialog(dialog):
        dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", on_dialog)
    # Nothing the page does may fail: no console error, no failed or refused request.
    problems = watch(page)

    def until(predicate, timeout=15, what="the page"):
        """Polls a JS function in the page (the page's CSP forbids eval, so no
        `wait_for_function`: this runs through the debugger protocol)."""
        wait_until(lambda: page.evaluate(predicate), timeout=timeout, what=what)

    page.goto(f"http://{b.admin}/ui/")
    # No token yet: the page says what it needs, and shows nothing of the cluster.
    until("() => document.getElementById('message').textContent.includes('token')", what="the token prompt")
    assert page.locator("#members tbody tr").count() == 0

    page.fill("#token", ADMIN_TOKEN)
    page.click("#token-form button")
    until("() => document.querySelectorAll('#members tbody tr').length === 3", what="three members")
    until("() => [...document.querySelectorAll('#members tbody tr td:nth-child(3)')]"
          ".every(td => td.textContent === 'up')", what="every member up")
    check_labels(page)

    # A client on node 2: the page's member row for node 2 counts it (from heartbeats).
    # (A blocking client: Playwright's sync API already runs an event loop here.)
    with ws_connect(f"{b.ws_url}?token={mint(61)}"):
        b.wait_group("user_61", 1)
        until("() => document.querySelector('#members tr[data-node=\"2\"] td:nth-child(6)')"
              ".textContent === '1'", what="node 2's connection counted")
        page.fill("#presence-user", "61")
        page.click("#presence-form button")
        until("() => document.querySelectorAll('#presence tbody tr').length === 1", what="the presence answer")
        assert page.locator("#presence tbody tr td").first.text_content() == "2"
        # A group: a table of labelled rows, not raw JSON.
        page.fill("#group-name", "user_61")
        page.click("#group-form button")
        until("() => document.querySelectorAll('#group tbody tr').length >= 4", what="the group answer")
        rows = dict(page.evaluate("""() => [...document.querySelectorAll('#group tbody tr')]
            .map(r => [r.querySelector('th').textContent, r.querySelector('td').textContent])"""))
        assert rows["Group"] == "user_61" and rows["Clients in it"] == "1" and rows["Clients on node 2"] == "1", rows
        assert rows["History"] == "none" and rows["Membership kept by"].startswith("node "), rows
        assert all(hint for _, hint in labels_and_hints(page, "#group th")), "every row has a hint"
        # Charts: a few refreshes draw the connection line (uPlot paints a canvas).
        until("() => globalThis.switchboardSeries && globalThis.switchboardSeries.t.length >= 3",
              timeout=20, what="three samples charted")
        until("""() => {
            const canvas = document.querySelector('#chart-connections canvas');
            if (!canvas) return false;
            const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
            let painted = 0;
            for (let i = 3; i < data.length; i += 4) if (data[i] > 0) painted++;
            return painted > 200;
        }""", timeout=20, what="a drawn chart")
        page.screenshot(path=os.path.join(shots, "cluster.png"), full_page=True)

    with open(os.path.join(shots, "cluster.png"), "rb") as f:
        width, height, colours = png_size_and_colours(f.read())
    assert width >= 1280 and height >= 600, (width, height)
    assert colours > 20, f"a screenshot of {colours} colours: blank or unstyled"
    members = page.locator("#members").screenshot()
    assert png_size_and_colours(members)[2] > 5, "the members table rendered"

    # Drain: the page asks first; once accepted, node 2 drains and leaves.
    page.click("#drain")
    wait_until(lambda: len(dialogs) == 1, what="the confirmation dialog")
    assert "Drain node 2" in dialogs[0]
    wait_until(lambda: b.http(b.ws_addr, "/readyz")[0] == 503, what="node 2 draining")
    for n in (a, c):
        wait_until(lambda n=n: 2 not in up_members(n), timeout=20, what="node 2 gone")
    page.screenshot(path=os.path.join(shots, "drained.png"), full_page=True)
    print(f"screenshots in {shots}")
    assert not problems, "\n".join(problems)
    page.close()
