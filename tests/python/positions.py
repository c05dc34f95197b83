"""A positioned WebSocket client for the history tests: it connects with `?positions=1`,
subscribes to its groups (with `since` once it has a position), keeps each group's last
position, checks that every message follows the one before it, and reconnects and
recovers when a node closes it (1012, 4008, 4009) or dies."""

import asyncio
import json
import socket

import redis
import websockets

from conftest import DEADLINE, mint

# Close codes after which a client reconnects and recovers.
RECONNECT = {1006, 1011, 1012, 1013, 4008, 4009, None}


class Violation(AssertionError):
    """A message that does not follow the client's position (a gap the node did not see)."""


class Follower:
    def __init__(self, user, groups=None, name=None):
        self.token = mint(user, groups=groups)
        self.groups = [f"user_{user}", *(groups or [])]
        self.name = name or f"user {user}"
        self.positions = {}  # group -> {"epoch": E, "offset": N}
        self.received = {g: [] for g in self.groups}  # group -> [(epoch, offset, data)]
        self.answers = []  # every `subscribed` answer to a subscribe with `since`
        self.closes = []  # close codes seen
        self.ws = None

    def datas(self, group=None):
        return [d for (_, _, d) in self.received[group or self.groups[0]]]

    async def connect(self, url, timeout=DEADLINE, rcvbuf=None):
        """Connects and subscribes to every group (recovering those with a position);
        returns once every `subscribed` answer (and what it replays up to then) is read.
        `rcvbuf`: a small socket receive buffer (a slow consumer backs up sooner)."""
        kwargs = {}
        if rcvbuf:
            host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
            kwargs = {"sock": sock, "max_queue": 1}
        self.ws = await websockets.connect(f"{url}?token={self.token}&positions=1", open_timeout=timeout, **kwargs)
        for group in self.groups:
            op = {"op": "subscribe", "group": group}
            if group in self.positions:
                op["since"] = dict(self.positions[group])
            await self.ws.send(json.dumps(op))
        pending = set(self.groups)
        end = asyncio.get_running_loop().time() + timeout
        while pending:
            frame = await self.next(max(0.01, end - asyncio.get_running_loop().time()))
            if frame.get("type") == "subscribed":
                pending.discard(frame["group"])

    async def resubscribe(self, group=None, timeout=DEADLINE):
        """A `subscribe` with `since` on the open connection; returns its answer."""
        group = group or self.groups[0]
        await self.ws.send(json.dumps({"op": "subscribe", "group": group, "since": dict(self.positions[group])}))
        end = asyncio.get_running_loop().time() + timeout
        while True:
            frame = await self.next(max(0.01, end - asyncio.get_running_loop().time()))
            if frame.get("type") == "subscribed" and frame["group"] == group:
                return frame

    def take(self, frame):
        kind = frame.get("type")
        if kind == "subscribed" and "epoch" in frame:
            if "recovered" in frame:
                self.answers.append(frame)
            # Recovered: the missed messages follow, up to the offset answered; else (or
            # a fresh subscription) the client stands at the position answered.
            if not frame.get("recovered"):
                self.positions[frame["group"]] = {"epoch": frame["epoch"], "offset": frame["offset"]}
        elif kind == "message" and "epoch" in frame:
            group, epoch, offset = frame["group"], frame["epoch"], frame["offset"]
            at = self.positions.get(group)
            if at is not None and offset != at["offset"] + 1:
                raise Violation(f"{self.name}: {group} at {at} got offset {offset} (epoch {epoch})")
            if at is not None and epoch < at["epoch"]:
                raise Violation(f"{self.name}: {group} at {at} got an older epoch {epoch}")
            self.positions[group] = {"epoch": epoch, "offset": offset}
            self.received.setdefault(group, []).append((epoch, offset, frame.get("data")))

    async def next(self, timeout=DEADLINE):
        frame = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        self.take(frame)
        return frame

    async def close_code(self, timeout=DEADLINE):
        """Reads (taking every frame) until the node closes the connection; its code."""
        async def until_closed():
            try:
                while True:
                    await self.next(timeout)
            except websockets.ConnectionClosed as e:
                return e.rcvd.code if e.rcvd else None

        code = await asyncio.wait_for(until_closed(), timeout)
        self.closes.append(code)
        return code

    async def follow(self, urls, done, timeout=30.0):
        """Reads until `done(self)`; when the connection ends, reconnects to the next URL
        of `urls` (in turn) and recovers. Bounded by `timeout` seconds overall."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        turn = 0
        while not done(self):
            left = end - loop.time()
            if left <= 0:
                raise AssertionError(f"{self.name}: not done within {timeout} s (positions {self.positions}, "
                                     f"received {self.received}, answers {self.answers}, closes {self.closes})")
            try:
                if self.ws is None:
                    await self.connect(urls[turn % len(urls)], timeout=min(left, DEADLINE))
                    continue
                await self.next(min(left, 0.5))
            except asyncio.TimeoutError:
                continue
            except (websockets.ConnectionClosed, OSError) as e:
                code = getattr(getattr(e, "rcvd", None), "code", None)
                assert code in RECONNECT, f"{self.name}: closed with {code}"
                self.closes.append(code)
                self.ws = None
                turn += 1
                await asyncio.sleep(0.05)  # reconnect backoff, not synchronisation

    async def catch_up(self, urls, done, timeout=30.0):
        """Once publishing is over, gets everything `done` asks for: a live connection may
        not know what it missed (nothing newer showed the gap), so it recovers once on
        the open connection, then follows (reconnecting and recovering as needed)."""
        if self.ws is not None and not done(self):
            try:
                await self.resubscribe()
            except websockets.ConnectionClosed as e:
                self.closes.append(e.rcvd.code if e.rcvd else None)
                self.ws = None
        await self.follow(urls, done, timeout=timeout)

    async def close(self):
        if self.ws is not None:
            await self.ws.close()
            self.ws = None


# ----- where history groups live, as the nodes report it -----

def client(node):
    return redis.Redis(host=node.resp_host, port=node.resp_port, socket_timeout=10)


def history_of(node, group):
    return node.cli("group", group)["history"]


def holders_of(node, group):
    """The owner and replica of the group's bucket: who holds its interest (any group)."""
    return node.cli("group", group)["interest"]


def placed(node, predicate, prefix="", limit=500):
    """The first user id (as a string) whose user group's owner and replica satisfy
    `predicate(owner, replica)`, as `node` sees the assignments."""
    for u in range(1, limit + 1):
        user = f"{prefix}{u}"
        h = history_of(node, f"user_{user}")
        if h["owner"] is not None and predicate(h["owner"], h["replica"]):
            return user
    raise AssertionError("no user placed as asked in the first ids")


def settled(nodes):
    """Whether every node sees every history bucket with its desired owner and replica
    (newcomers take over buckets in two steps, a few seconds after they join)."""
    return all(n.cli("status")["history"]["buckets_moving"] == 0 for n in nodes) and \
        len({json.dumps(holders_of(n, "user_1"), sort_keys=True) for n in nodes}) == 1
