"""The README's "Run it" and "A 2-minute tour", walked as a newcomer walks them: every
command is read from the README's code blocks, in order, and run as written (through
bash, in a directory of its own holding `deploy/`), with `switchboard` on the PATH as
`cargo install --path node` would put it (the binary under test) and wscat from npm. The
README's example answers (`< {...}` lines) are compared with what the nodes send: the
same keys and words, the same offsets, and epochs that change where the README says
they may. Every code block must be used, so the README and this test cannot drift.

Between commands the test waits for what a person would see before typing the next
(a member marked down, a node ready), each with a deadline."""

import base64
import hashlib
import hmac
import json
import os
import pty
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import urllib.request

from conftest import BIN, wait_until
from test_admin_ui import check_labels, watch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
WSCAT_DIR = os.path.join(ROOT, "tests/js/node_modules/.bin")
TOKEN = re.compile(r"ws://127\.0\.0\.1:(\d+)/ws/notifications/\?token=([\w.-]+)")


class Readme:
    """The code blocks of the README's "Run it" and "A 2-minute tour", taken in order."""

    def __init__(self):
        self.text = open(os.path.join(ROOT, "README.md")).read()
        text = self.text
        section = (text[text.index("## Run it"):text.index("## Run the tests")]
                   + text[text.index("## A 2-minute tour"):text.index("## Layout")])
        self.blocks, block, lang = [], None, None
        for line in section.splitlines():
            stripped = line.strip()
            if stripped.startswith("```"):
                if block is None:
                    block, lang = [], stripped[3:]
                else:
                    self.blocks.append((lang, block))
                    block = None
            elif block is not None:
                block.append(stripped)
        self.at = 0

    def next(self, lang):
        """The next block's lines; it must be of `lang` ("" for an answer shown)."""
        assert self.at < len(self.blocks), "the README has fewer blocks than the tour walks"
        kind, lines = self.blocks[self.at]
        assert kind == lang, f"README block {self.at}: {kind!r} where the tour expects {lang!r}: {lines}"
        self.at += 1
        return lines

    def inline(self, text):
        """An inline command of the prose, which must be there as written."""
        assert f"`{text}`" in self.text, f"the README no longer says `{text}`"
        return text

    def done(self):
        left = self.blocks[self.at:]
        assert not left, f"README blocks the tour does not walk: {left}"


class Shell:
    """Runs README commands in the tour's directory, and remembers what it started."""

    def __init__(self, workdir):
        self.workdir = workdir
        bindir = os.path.join(workdir, ".bin")
        os.makedirs(bindir)
        os.symlink(os.path.abspath(BIN), os.path.join(bindir, "switchboard"))
        os.symlink(os.path.join(ROOT, "deploy"), os.path.join(workdir, "deploy"))
        self.env = dict(os.environ, PATH=f"{bindir}:{WSCAT_DIR}:{os.environ['PATH']}",
                        SWITCHBOARD_BIN=os.path.abspath(BIN))
        self.env.pop("SWITCHBOARD_LOCAL_DIR", None)
        self.procs = []

    def run(self, command, token=None, ok=True):
        out = subprocess.run(["bash", "-c", command.replace("eyJ...", token or "eyJ...")], cwd=self.workdir,
                             env=self.env, capture_output=True, text=True, timeout=60)
        assert not ok or out.returncode == 0, f"{command}: exit {out.returncode}\n{out.stdout}\n{out.stderr}"
        return out.stdout

    def wscat(self, command, token=None):
        """A wscat of the README (or like it) in a terminal, as a person runs it (piped,
        wscat drops what is typed before it connects and says nothing of connecting)."""
        proc = self.start(command, token, tty=True)
        wait_until(lambda: any("Connected" in line for line in proc.lines), what=f"{command[:60]} connected")
        return proc

    @staticmethod
    def type(proc, line):
        os.write(proc.tty, (line + "\n").encode())

    def start(self, command, token=None, tty=False):
        """A command running on (in a terminal when `tty`), its output gathered as it comes."""
        argv = ["bash", "-c", "exec " + command.replace("eyJ...", token or "eyJ...")]
        if tty:
            master, slave = pty.openpty()
            proc = Proc(argv, cwd=self.workdir, env=self.env, stdin=slave, stdout=slave, stderr=slave,
                        start_new_session=True)
            os.close(slave)
            proc.tty = fd = master
        else:
            proc = Proc(argv, cwd=self.workdir, env=self.env, stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
            fd = proc.stdout.fileno()
        proc.out = ""

        def pump():
            while True:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # a terminal whose program ended
                    return
                if not chunk:
                    return
                proc.out += chunk.decode(errors="replace")

        threading.Thread(target=pump, daemon=True).start()
        self.procs.append(proc)
        return proc

    def stop_all(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            if getattr(proc, "tty", None) is not None:
                os.close(proc.tty)


class Proc(subprocess.Popen):
    """A started command: what it printed as it comes (`out`), and as lines (`lines`)."""

    @property
    def lines(self):
        return screen_lines(self.out)


class Positions:
    """The README's example epochs and offsets bound to the ones the nodes send: an
    offset is the README's, an epoch the same wherever the README repeats it."""

    def __init__(self):
        self.epochs = {}

    def match(self, expected, actual):
        assert set(expected) == set(actual), (expected, actual)
        for key, value in expected.items():
            if key == "epoch":
                assert self.epochs.setdefault(value, actual[key]) == actual[key], (expected, actual, self.epochs)
            else:
                assert actual[key] == value, f"{key}: the README says {value!r}, the node sent {actual[key]!r}"

    def fill(self, sent):
        since = sent.get("since")
        if since:
            since["epoch"] = self.epochs[since["epoch"]]
        return json.dumps(sent, separators=(",", ":"))


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def screen_lines(out):
    """Lines as a terminal shows them: colours and line clearing removed, and what a
    carriage return wrote over gone."""
    return [ANSI.sub("", line).split("\r")[-1] for line in out.replace("\r\n", "\n").split("\n")]


def received(proc):
    """The messages wscat printed: `< message` lines."""
    return [line[2:] for line in proc.lines if line.startswith("< ")]


def frames(proc):
    """The JSON frames wscat printed."""
    return [json.loads(line) for line in received(proc) if line.startswith("{")]


def printed(proc, message):
    return message in received(proc)


def expect(proc, answers, positions, seen=0):
    """Waits for wscat to print the README's `< ` answers after the first `seen` frames."""
    wanted = [json.loads(a[2:]) for a in answers]
    wait_until(lambda: len(frames(proc)) >= seen + len(wanted), timeout=30,
               what=f"wscat printing {answers} (printed {proc.lines[-5:]})")
    for want, got in zip(wanted, frames(proc)[seen:]):
        positions.match(want, got)
    return seen + len(wanted)


def session(shell, lines, token, positions):
    """A README wscat session: the command, then `> ` lines sent and `< ` lines awaited."""
    command, rest = lines[0], lines[1:]
    assert command.startswith("wscat -c "), lines
    proc = shell.wscat(command, token)
    seen = 0
    for i, line in enumerate(rest):
        if line.startswith("> "):
            shell.type(proc, positions.fill(json.loads(line[2:])))
        else:
            assert line.startswith("< "), line
            if i == 0 or rest[i - 1].startswith("> "):
                seen = expect(proc, answers_from(rest, i), positions, seen)
    proc.seen = seen
    return proc


def answers_from(lines, i):
    """The run of `< ` lines starting at `i`."""
    out = []
    for line in lines[i:]:
        if not line.startswith("< "):
            break
        out.append(line)
    return out


def http_json(addr, path):
    with urllib.request.urlopen(f"http://{addr}{path}", timeout=5) as r:
        return json.loads(r.read())


def status(admin):
    try:
        return http_json(admin, "/v1/status")
    except OSError:
        return None


def up(admin):
    try:
        return sorted(m["id"] for m in http_json(admin, "/v1/members")["members"] if m["up"])
    except OSError:
        return []


ADMINS = {1: "127.0.0.1:8002", 2: "127.0.0.1:8012", 3: "127.0.0.1:8022"}


def settled(nodes):
    """Every node of `nodes` sees them all up and no history bucket moving: what a person
    finds a little later, before killing the next node."""
    def check():
        for n in nodes:
            s = status(ADMINS[n])
            if not s or up(ADMINS[n]) != sorted(nodes) or s.get("history", {}).get("buckets_moving", 1) != 0:
                return False
        return True
    wait_until(check, timeout=30, what=f"nodes {nodes} up and settled")


def test_the_readme_tour_as_written(browser):
    readme = Readme()
    workdir = tempfile.mkdtemp(prefix="sb-tour-")
    shell = Shell(workdir)
    positions = Positions()
    try:
        walk(readme, shell, positions, browser)
    finally:
        shell.stop_all()
        try:
            shell.run("deploy/local-cluster.sh stop", ok=False)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def walk(readme, shell, positions, browser):
    # Run it: `cargo install --path node` is what built the binary under test; the node
    # starts as written.
    [run] = readme.next("sh")
    install, serve = run.split(" && ")
    assert install == "cargo install --path node" and serve == "switchboard serve", run
    node = shell.start(serve)
    wait_until(lambda: any(TOKEN.search(l) for l in node.lines), what="the printed URL")
    [shown] = readme.next("")
    assert TOKEN.sub("", shown) == "", shown  # the README shows the URL's shape
    port, token = next(TOKEN.search(l) for l in node.lines if TOKEN.search(l)).groups()
    assert port == "8001"

    # 2. wscat, and the browser snippet run as a console runs it, on a page of its own.
    [wscat] = readme.next("sh")
    client = shell.wscat(wscat, token)
    snippet = "\n".join(readme.next("js")).replace("eyJ...", token)
    page = browser.new_page()
    problems = watch(page)
    console = []
    page.on("console", lambda m: console.append(m.text))
    page.set_content("<!doctype html><title>any page</title><p>any page</p>")
    page.add_script_tag(content=snippet)
    wait_until(lambda: http_json(ADMINS[1], "/v1/groups/user_1")["connections"] == 2, what="two clients")

    # 3. One publish, both clients.
    [publish] = readme.next("sh")
    assert shell.run(publish).strip() == "2"
    wait_until(lambda: printed(client, "hello"), what="hello in wscat")
    # (Playwright delivers console events while it is called: the evaluate lets them in.)
    wait_until(lambda: page.evaluate("() => true") and "Message: hello" in console,
               what="hello in the browser console")
    assert not problems, problems

    # 4. What the node sees (both clients still connected).
    status_cmd, presence_cmd, group_cmd = readme.next("sh")
    said = shell.run(status_cmd)
    assert re.search(r"^ready\s+true$", said, re.M) and re.search(r"^connections\s+2$", said, re.M), said
    presence = json.loads(shell.run(presence_cmd))
    assert [c["node"] for c in presence["connections"]] == [1, 1], presence
    assert shell.run(group_cmd).startswith("group user_1: 2 connection(s)")

    # 5. Ctrl-C, then three nodes.
    page.close()
    node.send_signal(signal.SIGINT)
    assert node.wait(timeout=20) == 0
    client.wait(timeout=10)
    [start] = readme.next("sh")
    assert start == "deploy/local-cluster.sh start"
    said = shell.run(start)
    urls = [m.groups() for m in TOKEN.finditer(said)]
    assert [p for p, _ in urls] == ["8001", "8011", "8021"], said
    cluster_token = urls[0][1]
    assert "switchboard token --secret local-cluster-development-jwt-secret" in said, said
    clients = [shell.wscat(f'wscat -c "ws://127.0.0.1:{p}/ws/notifications/?token={t}"') for p, t in urls]
    wait_until(lambda: http_json(ADMINS[2], "/v1/groups/user_1")["connections"] == 3, what="a client on each node")
    [publish] = readme.next("sh")
    assert publish == "redis-cli -p 6381 PUBLISH user_1 hello"
    assert shell.run(publish).strip() == "3"
    for c in clients:
        wait_until(lambda c=c: printed(c, "hello"), what="hello on every node")

    kill3, members, presence1, still = readme.next("sh")
    assert kill3 == "kill -9 $(cat switchboard-local/node-3.pid)"
    shell.run(kill3)
    wait_until(lambda: re.search(r"^3\s+voter\s+down", shell.run(members), re.M), timeout=15,
               what="`switchboard members` showing node 3 down")
    wait_until(lambda: shell.run(presence1).startswith("user 1: 2 connection(s)"), timeout=15,
               what="`switchboard presence 1` without node 3's connection")
    assert shell.run(still).strip() == "2"

    again, status_cmd, kill1, status2, again2 = readme.next("sh")
    assert again == again2 == "deploy/local-cluster.sh start"
    shell.run(again)
    settled([1, 2, 3])
    # The README's example leader is node 1 (it founded the cluster and usually still
    # leads); should an election have moved it, the leader is killed and a survivor asked.
    leader = int(re.search(r"^leader\s+(\d+)$", shell.run(status_cmd), re.M).group(1))
    assert kill1 == "kill -9 $(cat switchboard-local/node-1.pid)" and status2.endswith("--admin 127.0.0.1:8012")
    survivor = 2 if leader != 2 else 3
    shell.run(kill1.replace("node-1", f"node-{leader}"))
    status2 = status2.replace("127.0.0.1:8012", ADMINS[survivor])
    wait_until(lambda: re.search(rf"^leader\s+(?!{leader}$)\d+$", shell.run(status2, ok=False), re.M), timeout=15,
               what="a new leader on a survivor's status")
    shell.run(again2)
    settled([1, 2, 3])
    for c in clients:
        c.kill()

    # 6. History: subscribe on node 3, a publish, node 3 killed, recovery on node 1.
    watcher = session(shell, readme.next("sh"), cluster_token, positions)
    [publish] = readme.next("sh")
    assert shell.run(publish).strip() == "1"
    expect(watcher, readme.next(""), positions, seen=watcher.seen)
    kill3, one, two = readme.next("sh")
    shell.run(kill3)
    # (0 clients, or 1 while the publishing node has not yet marked node 3 down.)
    assert int(shell.run(one)) in (0, 1) and int(shell.run(two)) in (0, 1)
    session(shell, readme.next("sh"), cluster_token, positions)
    [again] = readme.next("sh")
    shell.run(again)
    settled([1, 2, 3])

    # 7. Presence events, from the CLI and as Server-Sent Events: a client joins.
    follow, sse = readme.next("sh")
    events = [shell.start(follow, tty=True), shell.start(sse, tty=True)]  # each in its terminal
    wait_until(lambda: any("following the presence events" in l for l in events[0].lines), what="the CLI following")
    wait_until(lambda: any(l.startswith(": switchboard presence events") for l in events[1].lines),
               what="the SSE stream")
    newcomer = shell.wscat(f'wscat -c "ws://127.0.0.1:8011/ws/notifications/?token={cluster_token}"')
    wait_until(lambda: any(re.search(r"\bjoin\b.*user=1\b", l) for l in events[0].lines), timeout=15,
               what="`presence-events --follow` printing the join")
    wait_until(lambda: any('"type":"join"' in l and '"user":"1"' in l for l in events[1].lines), timeout=15,
               what="the SSE stream carrying the join")
    newcomer.kill()
    for e in events:
        e.kill()

    # 8. The admin page, on a node without admin tokens: labels, hints, nothing failing.
    url = readme.inline("http://127.0.0.1:8002/ui/")
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    problems = watch(page)
    page.goto(url)
    wait_until(lambda: page.evaluate("() => document.querySelectorAll('#members tbody tr').length") == 3,
               what="three members on the page")
    check_labels(page)
    assert not problems, problems
    page.close()

    # 9. Tokens: the cluster's, used on node 2 for `news`; step 1's node's, checked.
    for_cluster, for_node = readme.next("sh")
    token42 = shell.run(for_cluster).strip()
    reader = shell.wscat(f'wscat -c "ws://127.0.0.1:8011/ws/notifications/?token={token42}"')
    wait_until(lambda: http_json(ADMINS[2], "/v1/groups/news")["connections"] == 1, what="user 42 in news")
    assert shell.run(readme.inline("redis-cli -p 6382 PUBLISH news hi")).strip() == "1"
    wait_until(lambda: printed(reader, "hi"), what="hi for user 42")
    reader.kill()
    header, claims, signature = shell.run(for_node).strip().split(".")
    secret = open(os.path.join(shell.workdir, "switchboard-data/node-1/dev-jwt-secret")).read().strip()
    expected = hmac.new(secret.encode(), f"{header}.{claims}".encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64decode(signature + "==") == expected, "signed with step 1's node's secret"
    decoded = json.loads(base64.urlsafe_b64decode(claims + "=="))
    assert decoded["user_id"] == 42 and decoded["groups"] == ["news"], decoded

    [stop] = readme.next("sh")
    assert stop == "deploy/local-cluster.sh stop"
    shell.run(stop)
    assert all(status(a) is None for a in ADMINS.values()), "every node stopped"
    readme.done()
