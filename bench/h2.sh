#!/usr/bin/env bash
# HTTP/2 on the client side: nginx and hopline, each a one-worker reverse proxy taking
# h2c with prior knowledge in front of the same nginx upstream (HTTP/1.1 keep-alive to
# it), access log on. Proxy + upstream pinned to cpu 0, h2load to cpu 1; interleaved
# rounds.
#
#   bench/h2.sh                  # ROUNDS=3 DURATION=10 by default
#
# Two loads, each for $DURATION seconds after a 2 s warm-up:
#   1-stream    h2load -c64 -m1: 64 connections, one request in flight on each
#   100-streams h2load -c4 -m100: 4 connections, 100 concurrent streams on each
# Prints a table and writes bench/results/h2-<unix time>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}

source bench/lib.sh
install_missing nginx:nginx-light h2load:nghttp2-client
cargo build --profile dist --locked -p hopline --features hopline/jemalloc >/dev/null 2>&1
start_upstream

start_h2() { # name port -> pid
  case "$1" in
    nginx) taskset -c 0 nginx -c "$(render h2-nginx.conf "$2")" >"$DIR/h2-nginx.out" 2>&1 & ;;
    hopline) taskset -c 0 ./target/dist/hopline serve --threads 1 -c "$(render h2-hopline.toml "$2")" >"$DIR/h2-hopline.out" 2>"$DIR/h2-hopline.err" & ;;
  esac
  echo $!
}

run_load() { # port mode -> "rps"
  local args
  case "$2" in
    1-stream) args=(-c64 -m1) ;;
    100-streams) args=(-c4 -m100) ;;
  esac
  taskset -c 1 h2load "${args[@]}" --warm-up-time=2 -D "$DURATION" "http://127.0.0.1:$1/" > "$DIR/h2load.out"
  local failed
  failed=$(awk '/^requests:/ {print $10}' "$DIR/h2load.out")
  [ "$failed" = "0" ] || { echo "failed requests: $failed" >&2; cat "$DIR/h2load.out" >&2; }
  awk '/^finished in/ {print $4}' "$DIR/h2load.out"
}

declare -A RPS
for round in $(seq "$ROUNDS"); do
  for mode in 1-stream 100-streams; do
    for name in nginx hopline; do
      port=$(free_port); pid=$(start_h2 "$name" "$port"); PIDS+=("$pid"); wait_port "$port"
      rps=$(run_load "$port" "$mode")
      RPS[$name-$mode]+="$rps "
      echo "round $round $mode $name: $rps req/s" >&2
      kill "$pid"; wait "$pid" 2>/dev/null || true
    done
  done
done

python3 - <<PY
import json, statistics, time, platform, os
keys = ["nginx-1-stream", "hopline-1-stream", "nginx-100-streams", "hopline-100-streams"]
raw = {$(for k in nginx-1-stream hopline-1-stream nginx-100-streams hopline-100-streams; do printf '"%s": "%s", ' "$k" "${RPS[$k]}"; done)}
d = {k: [float(x) for x in v.split()] for k, v in raw.items()}
med = statistics.median
print(f"\nh2c prior knowledge, ${DURATION}s per load, ${ROUNDS} interleaved rounds, medians (range); h2load")
for k in keys:
    r = d[k]
    print(f"{k:<22} {med(r):>8.0f} ({min(r):.0f}-{max(r):.0f}) req/s")
for mode in ["1-stream", "100-streams"]:
    print(f"{mode}: hopline/nginx {med(d['hopline-'+mode])/med(d['nginx-'+mode]):.2f}x")
out = {"date": time.strftime("%Y-%m-%d"), "machine": platform.node(), "cpus": os.cpu_count(),
       "rounds": ${ROUNDS}, "duration_s": ${DURATION}, "results": {k: {"rps": d[k]} for k in keys}}
path = f"bench/results/h2-{int(time.time())}.json"
json.dump(out, open(path, "w"), indent=2)
print("saved", path)
PY
