#!/usr/bin/env bash
# TLS on the client side: nginx and hopline, each a one-worker reverse proxy terminating
# TLS 1.3 with an RSA-2048 certificate (the server's signature is the expensive side of a
# handshake) in front of the same nginx upstream, access log on. Proxy + upstream pinned to
# cpu 0, wrk to cpu 1; interleaved rounds.
#
#   bench/tls.sh                 # ROUNDS=3 DURATION=10s CONNS=64 by default
#
# Two loads, $CONNS connections for $DURATION each:
#   handshakes  bench's tls-handshakes (rustls, one thread): every request on a new TCP
#               connection with a full TLS 1.3 handshake (no resumption), `connection:
#               close`. Not wrk: it resumes the TLS session when it reconnects, so its
#               "handshakes" skip the server's signature (hopline spent 0.39 ms of CPU per
#               wrk reconnect, while one RSA-2048 signature alone takes 0.9 ms here per
#               `openssl speed rsa2048`, vs 1.25 ms per full handshake from tls-handshakes).
#   keep-alive  wrk -t1: one handshake per connection, then requests back to back
# The client's own CPU use (user+sys over wall time, from /proc) is printed next to each
# result: well under 100 % means the client was not the bottleneck.
# Prints a table and writes bench/results/tls-<unix time>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}

source bench/lib.sh
install_missing nginx:nginx-light wrk:wrk openssl:openssl
cargo build --profile dist --locked -p hopline -p hopline-bench --features hopline/jemalloc >/dev/null 2>&1
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$DIR/tls.key" -out "$DIR/tls.pem" \
  -subj /CN=localhost -days 2 -addext subjectAltName=DNS:localhost,IP:127.0.0.1 2>/dev/null
start_upstream

start_tls() { # name port -> pid
  case "$1" in
    nginx) taskset -c 0 nginx -c "$(render tls-nginx.conf "$2")" >"$DIR/tls-nginx.out" 2>&1 & ;;
    hopline) taskset -c 0 ./target/dist/hopline serve --threads 1 -c "$(render tls-hopline.toml "$2")" >"$DIR/tls-hopline.out" 2>"$DIR/tls-hopline.err" & ;;
  esac
  echo $!
}

# run_load port mode -> "rps p99_ms client_cpu_percent"
run_load() {
  local secs=${DURATION%s}
  if [ "$2" = handshakes ]; then
    taskset -c 1 ./target/dist/tls-handshakes "127.0.0.1:$1" "$CONNS" 2 >/dev/null # warm-up
    taskset -c 1 ./target/dist/tls-handshakes "127.0.0.1:$1" "$CONNS" "$secs" > "$DIR/load.out" &
  else
    taskset -c 1 wrk -t1 -c"$CONNS" -d2s "https://127.0.0.1:$1/" >/dev/null # warm-up
    taskset -c 1 wrk -t1 -c"$CONNS" -d"$DURATION" --latency "https://127.0.0.1:$1/" > "$DIR/load.out" &
  fi
  local pid=$! hz t0 t1 c0 c1
  hz=$(getconf CLK_TCK)
  sleep 0.2
  t0=$(date +%s.%N); c0=$(awk '{print $14+$15}' "/proc/$pid/stat")
  sleep "$(( secs - 1 ))"
  t1=$(date +%s.%N); c1=$(awk '{print $14+$15}' "/proc/$pid/stat")
  wait "$pid"
  local rps p99 errors
  if [ "$2" = handshakes ]; then
    rps=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["rps"])' "$DIR/load.out")
    p99="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["p99_ms"])' "$DIR/load.out")ms"
    errors=$(python3 -c 'import json,sys; e=json.load(open(sys.argv[1]))["errors"]; print(f"{e} failed requests" if e else "")' "$DIR/load.out")
  else
    rps=$(awk '/Requests\/sec/ {print $2}' "$DIR/load.out")
    p99=$(awk '$1=="99%" {print $2}' "$DIR/load.out")
    errors=$(awk '/Non-2xx|Socket errors/' "$DIR/load.out")
  fi
  [ -z "$errors" ] || { echo "errors: $errors" >&2; }
  python3 -c '
import re, sys
rps, p99, c0, c1, t0, t1, hz = sys.argv[1:]
m = re.match(r"([\d.]+)(us|ms|s)", p99); n = float(m.group(1))
ms = n / 1000 if m.group(2) == "us" else n * 1000 if m.group(2) == "s" else n
cpu = (float(c1) - float(c0)) / float(hz) / (float(t1) - float(t0)) * 100
print(rps, f"{ms:.2f}", f"{cpu:.0f}")' "$rps" "$p99" "$c0" "$c1" "$t0" "$t1" "$hz"
}

declare -A RPS P99 CPU
for round in $(seq "$ROUNDS"); do
  for mode in handshakes keep-alive; do
    for name in nginx hopline; do
      port=$(free_port); pid=$(start_tls "$name" "$port"); PIDS+=("$pid"); wait_port "$port"
      read -r rps p99 cpu < <(run_load "$port" "$mode")
      RPS[$name-$mode]+="$rps "; P99[$name-$mode]+="$p99 "; CPU[$name-$mode]+="$cpu "
      echo "round $round $mode $name: $rps req/s, p99 ${p99} ms, client cpu ${cpu}%" >&2
      kill "$pid"; wait "$pid" 2>/dev/null || true
    done
  done
done

python3 - <<PY
import json, statistics, time, platform, os
keys = ["nginx-handshakes", "hopline-handshakes", "nginx-keep-alive", "hopline-keep-alive"]
raw = {"rps": {$(for k in nginx-handshakes hopline-handshakes nginx-keep-alive hopline-keep-alive; do printf '"%s": "%s", ' "$k" "${RPS[$k]}"; done)},
       "p99": {$(for k in nginx-handshakes hopline-handshakes nginx-keep-alive hopline-keep-alive; do printf '"%s": "%s", ' "$k" "${P99[$k]}"; done)},
       "cpu": {$(for k in nginx-handshakes hopline-handshakes nginx-keep-alive hopline-keep-alive; do printf '"%s": "%s", ' "$k" "${CPU[$k]}"; done)}}
d = {m: {k: [float(x) for x in v.split()] for k, v in raw[m].items()} for m in raw}
med = statistics.median
print(f"\nTLS 1.3, RSA-2048, ${CONNS} connections, ${DURATION}, ${ROUNDS} interleaved rounds, medians (range); handshakes: tls-handshakes, keep-alive: wrk -t1")
print(f"{'proxy / load':<22} {'req/s':>18} {'p99 ms':>8} {'client cpu':>10}")
for k in keys:
    r = d['rps'][k]
    print(f"{k:<22} {med(r):>8.0f} ({min(r):.0f}-{max(r):.0f}) {med(d['p99'][k]):>8.2f} {med(d['cpu'][k]):>7.0f}%")
for mode in ["handshakes", "keep-alive"]:
    print(f"{mode}: hopline/nginx {med(d['rps']['hopline-'+mode])/med(d['rps']['nginx-'+mode]):.2f}x")
out = {"date": time.strftime("%Y-%m-%d"), "machine": platform.node(), "cpus": os.cpu_count(),
       "rounds": ${ROUNDS}, "conns": ${CONNS}, "duration": "${DURATION}", "tls": "1.3", "certificate": "RSA-2048",
       "results": {k: {"rps": d['rps'][k], "p99_ms": d['p99'][k], "client_cpu_percent": d['cpu'][k]} for k in keys}}
path = f"bench/results/tls-{int(time.time())}.json"
json.dump(out, open(path, "w"), indent=2)
print("saved", path)
PY
