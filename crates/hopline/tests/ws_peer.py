"""A WebSocket echo server and client (Python websockets) for hopline's tests.

    python3 ws_peer.py server
        Echoes every message; prints one JSON line per connection when it ends (path,
        messages, close code). Prints "listening on ADDR" on stderr.

    python3 ws_peer.py client URL N
        Sends N text messages, reads their echoes, closes; prints one JSON line: the
        echoes, the close code, or the handshake error (e.g. the status a refused upgrade
        got).
"""

import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed, InvalidStatus


async def echo(ws):
    n = 0
    try:
        async for message in ws:
            n += 1
            await ws.send(message)
    except ConnectionClosed:
        pass
    print(
        json.dumps({"path": ws.request.path, "messages": n, "close_code": ws.close_code}),
        flush=True,
    )


async def server():
    async with serve(echo, "127.0.0.1", 0) as s:
        port = s.sockets[0].getsockname()[1]
        print(f"listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
        await asyncio.Future()


async def client(url, n):
    out = {"echoes": [], "close_code": None, "error": None}
    try:
        async with asyncio.timeout(10):
            async with connect(url) as ws:
                for i in range(n):
                    await ws.send(f"m{i}")
                    out["echoes"].append(await ws.recv())
            out["close_code"] = ws.close_code
    except InvalidStatus as e:
        out["error"] = f"status {e.response.status_code}"
    except Exception as e:  # noqa: BLE001 - the test reads what went wrong
        out["error"] = repr(e)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        asyncio.run(server())
    else:
        asyncio.run(client(sys.argv[2], int(sys.argv[3])))
