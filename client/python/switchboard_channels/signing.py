"""The signature every node puts on its calls: ``x-switchboard-signature:
t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``."""

from __future__ import annotations

import hashlib
import hmac
import time


class Refused(Exception):
    """A call that is not from a node: the text says why (never the secret)."""


def sign(secret: bytes, body: bytes, t: int | None = None) -> str:
    """The header value a node sends for ``body`` at ``t`` (now by default)."""
    t = int(time.time()) if t is None else t
    digest = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def verify(secret: bytes, body: bytes, header: str | None, max_age: float, now: float | None = None) -> None:
    """Raises :class:`Refused` unless ``header`` signs ``body`` with ``secret`` within
    ``max_age`` seconds of ``now``."""
    if not header:
        raise Refused("unsigned call: no x-switchboard-signature header")
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        t = int(parts["t"])
        given = parts["v1"]
    except (KeyError, ValueError):
        raise Refused("malformed x-switchboard-signature header") from None
    now = time.time() if now is None else now
    if abs(now - t) > max_age:
        raise Refused(f"stale call: signed {int(now - t)} s from now, more than {int(max_age)} s")
    expected = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, given):
        raise Refused("bad signature: the node and the bridge have different secrets")
