"""A real WebSocket client (the `websockets` package) for the tests."""

import asyncio

import websockets

from conftest import DEADLINE


async def connect(url, token=None, headers=None, origin=None):
    target = f"{url}?token={token}" if token else url
    kwargs = {}
    if headers:
        kwargs["additional_headers"] = headers
    if origin:
        kwargs["origin"] = origin
    return await websockets.connect(target, open_timeout=DEADLINE, **kwargs)


async def recv(ws, timeout=DEADLINE):
    return await asyncio.wait_for(ws.recv(), timeout)


async def close_code(ws, timeout=DEADLINE):
    """Reads until the server closes; returns (code, reason)."""
    async def until_closed():
        try:
            while True:
                await ws.recv()
        except websockets.ConnectionClosed as e:
            return (e.rcvd.code, e.rcvd.reason) if e.rcvd else (None, "")

    return await asyncio.wait_for(until_closed(), timeout)
