#!/usr/bin/env bash
# Memory after a burst (issue: "idle memory after a burst"): for nginx, HAProxy and hopline
# as one-worker reverse proxies (bench/run.sh's configs, access logs on) in front of the
# same nginx upstream, bench's idle-conns --burst opens BURST keep-alive connections, sends
# one request on every one at the same moment, checks every answer is a 2xx, waits one
# second and reads the serving process's RSS. ROUNDS rounds, interleaved; medians.
#
#   bench/burst.sh                       # BURST="1000 5000 9000" ROUNDS=3
#   HOPLINE=./target/dist/hopline-other bench/burst.sh   # another hopline binary
set -euo pipefail
cd "$(dirname "$0")/.."
BURST=${BURST:-1000 5000 9000}
ROUNDS=${ROUNDS:-3}
HOPLINE=${HOPLINE:-./target/dist/hopline}

source bench/lib.sh
install_missing nginx:nginx-light haproxy:haproxy
[ -n "${NO_BUILD:-}" ] || cargo build --profile dist --locked -p hopline -p hopline-bench --features hopline/jemalloc >/dev/null 2>&1
start_upstream

start_proxy() { # name port -> pid
  case "$1" in
    nginx) taskset -c 0 nginx -c "$(render proxy-nginx.conf "$2")" >"$DIR/nginx-proxy.out" 2>&1 & ;;
    haproxy) taskset -c 0 haproxy -f "$(render proxy-haproxy.cfg "$2")" >"$DIR/haproxy-access.log" 2>&1 & ;;
    hopline) taskset -c 0 "$HOPLINE" serve --threads 1 -c "$(render proxy-hopline-burst.toml "$2")" >"$DIR/hopline.out" 2>"$DIR/hopline.err" & ;;
  esac
  echo $!
}

RESULTS="$DIR/burst.jsonl"
for n in $BURST; do
  for round in $(seq "$ROUNDS"); do
    for name in ${PROXIES:-nginx haproxy hopline}; do
      # HAProxy's maxconn (8000) must stay under the machine's 20,000 descriptors.
      if [ "$name" = haproxy ] && [ "$n" -gt 8000 ]; then continue; fi
      port=$(free_port); pid=$(start_proxy "$name" "$port"); PIDS+=("$pid"); wait_port "$port"
      worker=$pid
      [ "$name" = nginx ] && worker=$(pgrep -P "$pid" | head -1)
      # A burst the proxy could not answer in full (a reset, a non-2xx) is recorded as failed.
      line=$(taskset -c 1 ./target/dist/idle-conns "127.0.0.1:$port" "$worker" "$n" --burst) || line='{"failed":true,"connections":'"$n"'}'
      echo "{\"proxy\":\"$name\",\"round\":$round,\"result\":$line}" >>"$RESULTS"
      echo "burst $n round $round $name: $line" >&2
      kill "$pid"; wait "$pid" 2>/dev/null || true
    done
  done
done

python3 - "$RESULTS" <<'PY'
import json, statistics, sys, time
rows = [json.loads(l) for l in open(sys.argv[1])]
print("\nmemory after a burst: RSS growth over the one-connection baseline / connections, medians (range)")
print(f"{'connections':>11} {'proxy':<8} {'bytes/conn':>11} {'range':>15}")
by = {}
failed = [r for r in rows if r["result"].get("failed")]
for r in rows:
    if r["result"].get("failed"):
        continue
    by.setdefault((r["result"]["connections"], r["proxy"]), []).append(r["result"]["bytes_per_connection"])
for (n, p), v in sorted(by.items()):
    print(f"{n:>11} {p:<8} {statistics.median(v):>11.0f} {min(v):>7.0f}–{max(v):<7.0f}")
for r in failed:
    print(f"{r['result']['connections']:>11} {r['proxy']:<8} failed in round {r['round']}")
print("(after_close_kib in the JSON: RSS once every connection closed again)")
path = f"bench/results/burst-{int(time.time())}.json"
json.dump(rows, open(path, "w"), indent=2)
print("saved", path)
PY
