#!/usr/bin/env bash
# What sharing the egress budget through Redis costs ([egress] shared).
#
#   bench/shared-egress.sh            # ROUNDS=4 DURATION=10s CONNS=64 by default
#
# 1. Per request: shared-acquire takes a new-connection token and an in-flight slot (and
#    gives the slot back) call by call, paced, while the lease task refills from a real
#    redis-server: p50/p99/p99.9 of that call, refusals, the lease round trip.
# 2. At saturation: wrk -t1 -c$CONNS through hopline (one worker, cpu 0) to an egress
#    upstream (nginx, cpu 0), the same budgets local vs shared, interleaved rounds
#    (alternating which goes first).
# Prints the numbers and writes bench/results/shared-egress-<unix time>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-4}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}

source bench/lib.sh
install_missing nginx:nginx-light wrk:wrk redis-server:redis-server
cargo build --profile dist --locked -p hopline -p hopline-bench --features hopline/jemalloc >/dev/null 2>&1
start_upstream
REDIS=$(free_port)
taskset -c 1 redis-server --port "$REDIS" --bind 127.0.0.1 --save '' --appendonly no >"$DIR/redis.out" 2>&1 &
PIDS+=($!)
wait_port "$REDIS"

ACQUIRE=()
for round in $(seq "$ROUNDS"); do
  for spec in "20000 1" "50000 2"; do
    read -r rate threads <<<"$spec"
    r=$(./target/dist/shared-acquire "redis://127.0.0.1:$REDIS" "$rate" 5 "$threads")
    ACQUIRE+=("$r")
    echo "round $round acquire ${threads}x${rate}/s: $r" >&2
  done
done

declare -A RPS P99
for round in $(seq "$ROUNDS"); do
  # Alternate which goes first, so that an order effect does not pass for a cost.
  order="local shared"; [ $((round % 2)) -eq 0 ] && order="shared local"
  for variant in $order; do
    port=$(free_port)
    conf=$(render "egress-$variant-hopline.toml" "$port")
    sed -i "s#__REDIS_PORT__#$REDIS#g" "$conf"
    taskset -c 0 ./target/dist/hopline serve --threads 1 -c "$conf" >"$DIR/hopline.out" 2>"$DIR/hopline.err" &
    pid=$!; PIDS+=("$pid"); wait_port "$port"
    taskset -c 1 wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$port/" >/dev/null
    taskset -c 1 wrk -t1 -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:$port/" >"$DIR/wrk.out"
    rps=$(awk '/Requests\/sec/ {print $2}' "$DIR/wrk.out")
    p99=$(awk '$1=="99%" {print $2}' "$DIR/wrk.out")
    ! grep -q Non-2xx "$DIR/wrk.out" || { cat "$DIR/wrk.out" >&2; exit 1; }
    RPS[$variant]+="$rps "; P99[$variant]+="$p99 "
    echo "round $round $variant: $rps req/s, p99 $p99" >&2
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done

python3 - <<PY
import json, statistics, time
acq = [json.loads(x) for x in """$(printf '%s\n' "${ACQUIRE[@]}")""".splitlines() if x.strip()]
def us(v):
    import re
    m = re.match(r'([\d.]+)(us|ms|s)', v); n = float(m.group(1))
    return n / 1000 if m.group(2) == 'us' else n * 1000 if m.group(2) == 's' else n
rps = {k: [float(x) for x in v.split()] for k, v in {"local": "${RPS[local]}", "shared": "${RPS[shared]}"}.items()}
p99 = {k: [us(x) for x in v.split()] for k, v in {"local": "${P99[local]}", "shared": "${P99[shared]}"}.items()}
print("\nper request (take a token + take and give back a slot), ${ROUNDS} rounds of 5 s")
print(f"{'threads x calls/s':<20} {'p50 ns':>8} {'p99 ns':>8} {'p99.9 ns':>9} {'refused':>8} {'lease p99 <= ms':>16}")
for a in acq:
    k = f"{a['threads']} x {a['calls_per_sec_per_thread']}"
    n = a['acquire_ns']
    print(f"{k:<20} {n['p50']:>8} {n['p99']:>8} {n['p999']:>9} {a['refused']:>8} {a['lease_round_trip_p99_le_ms']:>16}")
med = statistics.median
print(f"\nsaturation: wrk -t1 -c${CONNS} -d${DURATION}, ${ROUNDS} interleaved rounds")
for k in ["local", "shared"]:
    print(f"{k:<8} req/s {' '.join(f'{x:.0f}' for x in rps[k])}  median {med(rps[k]):.0f}  p99 ms median {med(p99[k]):.2f}")
print(f"shared/local {med(rps['shared'])/med(rps['local']):.3f}  (local spread {(max(rps['local'])-min(rps['local']))/med(rps['local'])*100:.1f}%)")
out = {"acquire": acq, "saturation": {"rps": rps, "p99_ms": p99, "conns": ${CONNS}, "duration": "${DURATION}"}}
path = f"bench/results/shared-egress-{int(time.time())}.json"
json.dump(out, open(path, "w"), indent=2)
print(path)
PY
