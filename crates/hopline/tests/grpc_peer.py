"""A gRPC server and client (Python grpcio, raw bytes, no generated code) for hopline's tests.

    python3 grpc_peer.py server
        Serves /test.Echo/Unary (echo; trailing metadata x-time-remaining-ms: the deadline
        the server saw), /test.Echo/Stream (the request repeated 5 times) and
        /test.Echo/Slow (waits up to 5 s; prints one JSON line when it ends, saying whether
        the call was cancelled and the deadline it saw). Prints "listening on ADDR" on stderr.

    python3 grpc_peer.py client ADDR METHOD [TIMEOUT_S [CANCEL_AFTER_S]]
        One call through ADDR (METHOD: a /test.Echo method name, or a whole /pkg.Svc/M path); prints one JSON line: code, details, responses, trailing
        metadata.
"""

import json
import sys
import threading
import time
from concurrent import futures

import grpc


def remaining_ms(context):
    left = context.time_remaining()
    return None if left is None else int(left * 1000)


def unary(request, context):
    ms = remaining_ms(context)
    context.set_trailing_metadata((("x-time-remaining-ms", str(ms)),))
    return request


def stream(request, context):
    for i in range(5):
        yield request + str(i).encode()


def slow(request, context):
    ms = remaining_ms(context)
    ended = threading.Event()
    context.add_callback(ended.set)
    ended.wait(5)
    print(
        json.dumps({"slow": True, "cancelled": not context.is_active(), "deadline_ms": ms}),
        flush=True,
    )
    return request


def server():
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
    }
    s = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    s.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
    port = s.add_insecure_port("127.0.0.1:0")
    s.start()
    print(f"listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    s.wait_for_termination()


def client(addr, method, timeout=None, cancel_after=None):
    channel = grpc.insecure_channel(addr)
    out = {"code": None, "details": None, "responses": [], "trailing": {}}
    path = method if method.startswith("/") else f"/test.Echo/{method}"
    try:
        if method == "Stream":
            call = channel.unary_stream(path)(b"hi", timeout=timeout)
            out["responses"] = [r.decode() for r in call]
        else:
            call = channel.unary_unary(path).future(b"hello", timeout=timeout)
            if cancel_after is not None:
                time.sleep(cancel_after)
                call.cancel()
            out["responses"] = [call.result().decode()]
        out["code"] = call.code().value[0]
        out["trailing"] = dict(call.trailing_metadata() or ())
    except grpc.RpcError as e:
        out["code"] = e.code().value[0]
        out["details"] = e.details()
        out["trailing"] = dict(e.trailing_metadata() or ())
    except grpc.FutureCancelledError:
        out["code"] = grpc.StatusCode.CANCELLED.value[0]
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server()
    else:
        args = sys.argv[2:]
        timeout = float(args[2]) if len(args) > 2 else None
        cancel = float(args[3]) if len(args) > 3 else None
        client(args[0], args[1], timeout, cancel)
