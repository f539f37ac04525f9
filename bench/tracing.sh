#!/usr/bin/env bash
# What tracing costs a request: saturation through one pinned hopline worker with
# [tracing] off, sampling 1 % and sampling 100 % (spans POSTed to a `hopline mock` on
# cpu 1 standing in for a collector), interleaved rounds, alternating the order.
#
#   bench/tracing.sh            # ROUNDS=3 DURATION=10s CONNS=64 by default
#
# Prints the table and writes bench/results/tracing-<unix time>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}

source bench/lib.sh
install_missing nginx:nginx-light wrk:wrk
cargo build --profile dist --locked -p hopline --features hopline/jemalloc >/dev/null 2>&1
start_upstream
COLLECTOR=$(free_port)
taskset -c 1 ./target/dist/hopline mock --listen "127.0.0.1:$COLLECTOR" --quiet >"$DIR/collector.out" 2>&1 &
PIDS+=($!)
wait_port "$COLLECTOR"

declare -A RPS
variants=(off 0.01 1.0)
for round in $(seq "$ROUNDS"); do
  order=("${variants[@]}")
  [ $((round % 2)) -eq 0 ] && order=(1.0 0.01 off)
  for v in "${order[@]}"; do
    port=$(free_port)
    if [ "$v" = off ]; then
      conf=$(render proxy-hopline.toml "$port")
    else
      conf=$(render trace-hopline.toml "$port")
      sed -i -e "s#__COLLECTOR_PORT__#$COLLECTOR#g" -e "s#__RATIO__#$v#g" "$conf"
    fi
    taskset -c 0 ./target/dist/hopline serve --threads 1 -c "$conf" >"$DIR/hopline.out" 2>"$DIR/hopline.err" &
    pid=$!; PIDS+=("$pid"); wait_port "$port"
    taskset -c 1 wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$port/" >/dev/null
    taskset -c 1 wrk -t1 -c"$CONNS" -d"$DURATION" "http://127.0.0.1:$port/" >"$DIR/wrk.out"
    rps=$(awk '/Requests\/sec/ {print $2}' "$DIR/wrk.out")
    RPS[$v]+="$rps "
    echo "round $round tracing $v: $rps req/s" >&2
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done

python3 - <<PY
import json, statistics, time
rps = {k: [float(x) for x in v.split()] for k, v in {"off": "${RPS[off]}", "0.01": "${RPS[0.01]}", "1.0": "${RPS[1.0]}"}.items()}
med = statistics.median
print(f"\nsaturation, wrk -t1 -c${CONNS} -d${DURATION}, one pinned worker, ${ROUNDS} interleaved rounds")
for k, name in [("off", "tracing off"), ("0.01", "sampling 1 %"), ("1.0", "sampling 100 %")]:
    print(f"{name:<16} req/s {' '.join(f'{x:.0f}' for x in rps[k])}  median {med(rps[k]):.0f}  vs off {med(rps[k])/med(rps['off']):.3f}")
path = f"bench/results/tracing-{int(time.time())}.json"
json.dump({"rps": rps, "conns": ${CONNS}, "duration": "${DURATION}"}, open(path, "w"), indent=2)
print(path)
PY
