#!/usr/bin/env bash
# User-space instructions per proxied request, counted by valgrind's callgrind: the same
# count for the same binary and requests whatever else the machine is doing, so it can
# compare two builds on a noisy host where req/s cannot.
#
#   bench/callgrind.sh                 # SHORT=200 LONG=2200 by default
#
# hopline (`serve --threads 1`, bench/conf/proxy-hopline.toml: access log on) runs under
# callgrind in front of bench's nginx upstream; one client sends LONG keep-alive requests
# (`GET /` with Host, User-Agent and Accept) one after another, then a second run sends
# SHORT. The difference divided by LONG - SHORT is the cost of a request without start-up
# and shutdown. With PROFILE=1 the LONG run's profile is kept as
# bench/results/tmp/callgrind.out.hopline (callgrind_annotate reads it; git ignores it).
# Needs valgrind (installed from Debian when missing) and the dist build (built unless
# NO_BUILD is set).
set -euo pipefail
cd "$(dirname "$0")/.."
SHORT=${SHORT:-200}
LONG=${LONG:-2200}

source bench/lib.sh
install_missing nginx:nginx-light valgrind:valgrind
[ -n "${NO_BUILD:-}" ] || cargo build --profile dist --locked -p hopline --features hopline/jemalloc >/dev/null 2>&1
start_upstream

cat > "$DIR/client.py" <<'EOF'
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
req = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: cg\r\nAccept: */*\r\n\r\n"
buf = b""
for _ in range(n):
    s.sendall(req)
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            fields = buf[:end].lower().split(b"\r\n")[1:]
            length = int(next(f.split(b":")[1] for f in fields if f.startswith(b"content-length:")))
            if len(buf) >= end + 4 + length:
                if not buf.startswith(b"HTTP/1.1 200 "):
                    sys.exit(f"not a 200: {buf[:end]!r}")
                buf = buf[end + 4 + length:]
                break
        data = s.recv(65536)
        if not data:
            sys.exit("the proxy closed the connection")
        buf += data
EOF

# Instructions callgrind counted for one run of N requests.
count() { # n -> instructions
  local port out pid
  port=$(free_port)
  out="$DIR/callgrind.$1"
  valgrind --tool=callgrind --callgrind-out-file="$out" ./target/dist/hopline serve --threads 1 \
    -c "$(render proxy-hopline.toml "$port")" >/dev/null 2>"$DIR/valgrind.$1" &
  pid=$!
  PIDS+=("$pid")
  # Under valgrind start-up takes seconds, not milliseconds: up to 60 s.
  wait_port "$port" 1200
  python3 "$DIR/client.py" "$port" "$1"
  kill -INT "$pid"
  wait "$pid" || true
  awk '/^summary:/ {print $2}' "$out"
}

short=$(count "$SHORT")
long=$(count "$LONG")
if [ -n "${PROFILE:-}" ]; then
  mkdir -p bench/results/tmp
  cp "$DIR/callgrind.$LONG" bench/results/tmp/callgrind.out.hopline
fi
python3 -c "import sys; s,l,a,b=map(int,sys.argv[1:]); print(f'{(l-s)/(b-a):.0f} instructions per request ({a} and {b} requests: {s:,} and {l:,})')" \
  "$short" "$long" "$SHORT" "$LONG"
