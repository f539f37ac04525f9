#!/usr/bin/env bash
# Surges through nginx, HAProxy and hopline (docs/surges.md), one worker each, on cpu 0
# with their upstream; the client on cpu 1. ROUNDS rounds, interleaved:
#
# - burst: BURST keep-alive clients send one GET at the same moment, to nginx `return 200`
#   listening with backlog=64. Counted: answers by status, and the upstream connections
#   the proxy opened (the upstream logs each request's connection serial).
# - slots: 32 clients x 8 requests on an upstream that answers in 50 ms, limited to 8
#   connections (nginx max_conns=8, which has no queue without a commercial licence;
#   HAProxy maxconn 8 maxqueue 1024 with timeout queue 3s; hopline max_in_flight 8 with
#   its queue's default max_pending 1024); a 3 s deadline everywhere.
#
#   bench/surge.sh                 # BURST=5000 ROUNDS=3
#   NO_BUILD=1 PROXIES="hopline" bench/surge.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BURST=${BURST:-5000}
ROUNDS=${ROUNDS:-3}
HOPLINE=${HOPLINE:-./target/dist/hopline}

source bench/lib.sh
install_missing nginx:nginx-light haproxy:haproxy
[ -n "${NO_BUILD:-}" ] || cargo build --profile dist --locked -p hopline -p hopline-bench >/dev/null 2>&1

# render_surge TEMPLATE PORT SERVER_OPTIONS -> file
render_surge() {
  local f
  f=$(render "$1" "$2")
  sed -i -e "s#__SERVER__#$3#g" "$f"
  echo "$f"
}

start_proxy() { # name port server-options -> pid
  case "$1" in
    nginx) taskset -c 0 nginx -c "$(render_surge surge-nginx.conf "$2" "$3")" >"$DIR/nginx.out" 2>&1 & ;;
    haproxy) taskset -c 0 haproxy -f "$(render_surge surge-haproxy.cfg "$2" "$3")" >"$DIR/haproxy.out" 2>&1 & ;;
    hopline) taskset -c 0 "$HOPLINE" serve --threads 1 -c "$(render_surge surge-hopline.toml "$2" "$3")" >"$DIR/hopline.out" 2>"$DIR/hopline.err" & ;;
  esac
  echo $!
}

# The burst's upstream: nginx with a 64-entry listen queue.
taskset -c 0 nginx -c "$(render surge-upstream-nginx.conf 0)" >"$DIR/upstream.out" 2>&1 &
PIDS+=($!)
wait_port "$UP"
UPLOG="$DIR/surge-upstream-access.log"

RESULTS="$DIR/surge.jsonl"
run() { # test name port-options client-args...
  local test=$1 name=$2 opts=$3; shift 3
  local port pid before line opened
  port=$(free_port); pid=$(start_proxy "$name" "$port" "$opts"); PIDS+=("$pid"); wait_port "$port"
  before=$(wc -l <"$UPLOG" 2>/dev/null || echo 0)
  line=$(taskset -c 1 ./target/dist/surge "$@" "127.0.0.1:$port" "${ARGS[@]}")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  # nginx writes its access log per request; what this run added is after line $before.
  opened=$(tail -n +"$((before + 1))" "$UPLOG" 2>/dev/null | sort -u | wc -l)
  echo "{\"test\":\"$test\",\"proxy\":\"$name\",\"round\":$round,\"upstream_connections\":$opened,\"result\":$line}" >>"$RESULTS"
  echo "$test round $round $name: $line (upstream connections $opened)" >&2
}

for round in $(seq "$ROUNDS"); do
  UP_SAVED=$UP
  for name in ${PROXIES:-nginx haproxy hopline}; do
    case "$name" in nginx|haproxy) opts="" ;; hopline) opts=100000 ;; esac
    ARGS=("$BURST"); run burst "$name" "$opts" burst
  done
  # The slot test's upstream: hopline mock answering in 50 ms.
  UP=$(free_port)
  taskset -c 0 "$HOPLINE" mock --listen "127.0.0.1:$UP" --latency 50ms --quiet >"$DIR/mock.out" 2>&1 &
  mock=$!; PIDS+=("$mock"); wait_port "$UP"
  for name in ${PROXIES:-nginx haproxy hopline}; do
    case "$name" in nginx) opts="max_conns=8" ;; haproxy) opts="maxconn 8 maxqueue 1024" ;; hopline) opts=8 ;; esac
    ARGS=(32 8); run slots "$name" "$opts" queue
  done
  kill "$mock"; wait "$mock" 2>/dev/null || true
  UP=$UP_SAVED
done

python3 - "$RESULTS" <<'PY'
import json, sys, time
rows = [json.loads(l) for l in open(sys.argv[1])]
def fmt(st):
    return ", ".join(f"{k}: {v}" for k, v in sorted(st.items(), key=lambda kv: int(kv[0])))
for test, title in (("burst", "burst: answers by status (0: reset or none), upstream connections opened"),
                    ("slots", "32 x 8 on 8 slots: answers by status, answer times")):
    print(f"\n{title}")
    for r in rows:
        if r["test"] != test:
            continue
        res = r["result"]
        extra = (f"upstream connections {r['upstream_connections']}" if test == "burst"
                 else f"p50 {res['p50_ms']:.0f} ms, p99 {res['p99_ms']:.0f} ms, slowest {res['slowest_ms']:.0f} ms")
        print(f"  round {r['round']} {r['proxy']:<8} {fmt(res['statuses']):<40} {extra}")
path = f"bench/results/surge-{int(time.time())}.json"
json.dump(rows, open(path, "w"), indent=2)
print("saved", path)
PY
