"""Drives `hopline chaos` with the real third-party Toxiproxy client (PyPI toxiproxy-python 0.1.1).

Usage: toxiproxy_python.py API_PORT UPSTREAM_HOST:PORT
Creates a proxy, measures a request through it, adds a latency toxic, measures the added
latency, removes the toxic, resets, and checks each step. Exit 0 when all hold.
"""
import socket
import sys
import time

from toxiproxy import Toxiproxy


def timed_request(addr):
    host, port = addr.rsplit(":", 1)
    t0 = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"GET /tp HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data[:80]
    return time.monotonic() - t0


def main():
    api_port, upstream = int(sys.argv[1]), sys.argv[2]
    server = Toxiproxy()
    server.update_api_consumer("127.0.0.1", api_port)
    assert server.running(), "API not reachable"
    print("version", server.version())
    proxy = server.create(upstream=upstream, name="tp_svc", listen="127.0.0.1:0")
    listen = proxy.listen
    assert "tp_svc" in server.proxies()
    base = min(timed_request(listen) for _ in range(5))
    proxy.add_toxic(type="latency", attributes={"latency": 300})
    assert "latency_downstream" in proxy.toxics()
    slow = timed_request(listen)
    added = slow - base
    print("base %.1f ms, with latency toxic %.1f ms, added %.1f ms" % (base * 1e3, slow * 1e3, added * 1e3))
    # At least the toxic's 300 ms on the slow request itself; the base can be slow too
    # on a loaded machine, so the difference is bounded from above only.
    assert slow >= 0.295 and added <= 0.6, (slow, added)
    proxy.destroy_toxic("latency_downstream")
    assert proxy.toxics() == {}
    assert timed_request(listen) < 0.2
    proxy.add_toxic(type="timeout", stream="upstream", attributes={"timeout": 0})
    assert server.reset()
    assert server.get_proxy("tp_svc") is not None and proxy.toxics() == {}
    with proxy.down():
        assert server.proxies()["tp_svc"].enabled is False
    assert server.proxies()["tp_svc"].enabled is True
    assert timed_request(listen) < 0.2
    server.destroy(proxy)
    assert "tp_svc" not in server.proxies()
    print("toxiproxy-python client: all checks passed")


if __name__ == "__main__":
    main()
