#!/usr/bin/env bash
# Cost growth (docs/performance.md, the charts): how hopline's costs grow with load shape,
# next to nginx, both one-worker reverse proxies with their access logs on in front of the
# same nginx upstream, pinned as in bench/run.sh (proxy + upstream on cpu 0, clients on 1).
#
#   bench/growth.sh        # IDLE_STEPS="1000 2500 5000 10000 15000" ROUNDS=2 DURATION=5s
#   SWEEPS=size bench/growth.sh   # only some of the sweeps: idle, size, fanout (charts of the others are kept)
#
# 1. Idle connections: bench's idle-conns opens N keep-alive connections (each after one
#    request) and holds them; RSS growth over a one-connection baseline, then bench's
#    fixed-rate at RATE req/s (64 other connections, latency from the schedule) for
#    FIXED_SECS while they stay open: does an idle connection cost the busy ones anything?
# 2. Response size: wrk -c64 saturation with bodies of SIZES bytes (files the upstream
#    serves from disk; nginx with its default proxy buffering).
# 3. Fan-out (hopline only; nginx has no aggregation): aggregate routes of 1, 3 and 10
#    parallel upstream calls per client request, and the plain proxy route beside them.
# ROUNDS interleaved rounds; medians. Writes bench/results/growth-<unix time>.json and the
# SVG charts docs/performance.md shows (bench/plot.py) into OUT (docs/bench).
set -euo pipefail
cd "$(dirname "$0")/.."
IDLE_STEPS=${IDLE_STEPS:-1000 2500 5000 10000 15000}
SIZES=${SIZES:-100 1024 10240 102400 1048576}
FANOUT=${FANOUT:-1 3 10}
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-5s}
RATE=${RATE:-5000}
FIXED_SECS=${FIXED_SECS:-5}
OUT=${OUT:-docs/bench}
HOPLINE=${HOPLINE:-./target/dist/hopline}
SWEEPS=${SWEEPS:-idle size fanout}

source bench/lib.sh
install_missing nginx:nginx-light wrk:wrk
[ -n "${NO_BUILD:-}" ] || cargo build --profile dist --locked -p hopline -p hopline-bench --features hopline/jemalloc >/dev/null 2>&1
mkdir -p "$DIR/www/size" "$OUT"
for s in $SIZES; do head -c "$s" /dev/urandom >"$DIR/www/size/$s"; done
# nginx's workers run as nobody: the files (in a private temp dir) must be readable to them.
chmod o+rx "$DIR" "$DIR/www" "$DIR/www/size"; chmod o+r "$DIR"/www/size/*
start_upstream

start_proxy() { # name port -> pid
  case "$1" in
    nginx) taskset -c 0 nginx -c "$(render proxy-nginx.conf "$2")" >"$DIR/nginx-proxy.out" 2>&1 & ;;
    hopline) taskset -c 0 "$HOPLINE" serve --threads 1 -c "$(render growth-hopline.toml "$2")" >"$DIR/hopline.out" 2>"$DIR/hopline.err" & ;;
  esac
  echo $!
}
stop() { kill "$1"; wait "$1" 2>/dev/null || true; }
wrk_json() { # port path -> {"rps":…,"p99_ms":…,"non_2xx":…}
  taskset -c 1 wrk -t1 -c64 -d1s "http://127.0.0.1:$1$2" >/dev/null
  taskset -c 1 wrk -t1 -c64 -d"$DURATION" --latency "http://127.0.0.1:$1$2" >"$DIR/wrk.out"
  python3 - "$DIR/wrk.out" <<'PY'
import json, re, sys
t = open(sys.argv[1]).read()
def ms(v):
    n, u = re.match(r"([\d.]+)(us|ms|s)", v).groups()
    return float(n) / 1000 if u == "us" else float(n) * 1000 if u == "s" else float(n)
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
print(json.dumps({"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1)),
                  "p99_ms": ms(re.search(r"\s99%\s+(\S+)", t).group(1)),
                  "non_2xx": int(bad.group(1)) if bad else 0,
                  "socket_errors": sum(map(int, errs.groups())) if errs else 0}))
PY
}

RESULTS="$DIR/growth.jsonl"
: >"$RESULTS"
on() { [[ " $SWEEPS " == *" $1 "* ]]; }
for round in $(seq "$ROUNDS"); do
  on idle && for n in $IDLE_STEPS; do
    for name in nginx hopline; do
      port=$(free_port); pid=$(start_proxy "$name" "$port"); PIDS+=("$pid"); wait_port "$port"
      rm -f "$DIR/hold" "$DIR/idle.out"; mkfifo "$DIR/hold"
      taskset -c 1 ./target/dist/idle-conns "127.0.0.1:$port" "$(serving_pid "$name" "$pid")" "$n" --hold <"$DIR/hold" >"$DIR/idle.out" &
      holder=$!; PIDS+=("$holder")
      exec 7>"$DIR/hold"
      # Wait (bounded: 120 s) for the line saying all N are open, or for the holder to fail.
      for _ in $(seq 1200); do [ -s "$DIR/idle.out" ] || ! kill -0 "$holder" 2>/dev/null && break; sleep 0.1; done
      idle=$(head -1 "$DIR/idle.out"); [ -n "$idle" ] || idle='{"failed":true}'
      fixed=$(taskset -c 1 ./target/dist/fixed-rate "127.0.0.1:$port" "$RATE" "$FIXED_SECS")
      exec 7>&-
      wait "$holder" || true
      echo "{\"sweep\":\"idle\",\"round\":$round,\"proxy\":\"$name\",\"connections\":$n,\"idle\":$idle,\"fixed\":$fixed}" >>"$RESULTS"
      echo "round $round idle $n $name: $idle $fixed" >&2
      stop "$pid"
    done
  done
  on size && for name in nginx hopline; do
    port=$(free_port); pid=$(start_proxy "$name" "$port"); PIDS+=("$pid"); wait_port "$port"
    for s in $SIZES; do
      r=$(wrk_json "$port" "/size/$s")
      echo "{\"sweep\":\"size\",\"round\":$round,\"proxy\":\"$name\",\"bytes\":$s,\"wrk\":$r}" >>"$RESULTS"
      echo "round $round size $s $name: $r" >&2
    done
    stop "$pid"
  done
  if on fanout; then
    port=$(free_port); pid=$(start_proxy hopline "$port"); PIDS+=("$pid"); wait_port "$port"
    for calls in 0 $FANOUT; do
      if [ "$calls" = 0 ]; then path=/; else path=/agg$calls; fi
      r=$(wrk_json "$port" "$path")
      echo "{\"sweep\":\"fanout\",\"round\":$round,\"calls\":$calls,\"wrk\":$r}" >>"$RESULTS"
      echo "round $round fan-out $calls: $r" >&2
    done
    stop "$pid"
  fi
done

path="bench/results/growth-$(date +%s).json"
python3 - "$RESULTS" "$path" "$ROUNDS" "$RATE" <<'PY'
import json, os, statistics, sys, time
rows = [json.loads(l) for l in open(sys.argv[1])]
med = statistics.median
out = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "rounds": int(sys.argv[3]),
       "idle_rate": int(sys.argv[4]), "proxies": ["nginx", "hopline"], "idle": [], "size": [], "fanout": [], "raw": rows}
def group(sweep, key):
    g = {}
    for r in rows:
        if r["sweep"] == sweep:
            g.setdefault(key(r), []).append(r)
    return g
for (p, n), rs in sorted(group("idle", lambda r: (r["proxy"], r["connections"])).items()):
    ok = [r for r in rs if not r["idle"].get("failed")]
    out["idle"].append({"proxy": p, "connections": n,
        "rss_growth_mib": [(r["idle"]["after_kib"] - r["idle"]["baseline_kib"]) / 1024 for r in ok],
        "bytes_per_connection": [r["idle"]["bytes_per_connection"] for r in ok],
        "p99_ms": [r["fixed"]["latency"]["p99_ms"] for r in ok],
        "non_2xx": sum(r["fixed"]["non_2xx"] for r in rs), "failed_rounds": len(rs) - len(ok)})
for (p, b), rs in sorted(group("size", lambda r: (r["proxy"], r["bytes"])).items()):
    out["size"].append({"proxy": p, "bytes": b, "rps": [r["wrk"]["rps"] for r in rs], "p99_ms": [r["wrk"]["p99_ms"] for r in rs],
                        "errors": sum(r["wrk"]["non_2xx"] + r["wrk"]["socket_errors"] for r in rs)})
for c, rs in sorted(group("fanout", lambda r: r["calls"]).items()):
    entry = {"calls": c, "rps": [r["wrk"]["rps"] for r in rs], "p99_ms": [r["wrk"]["p99_ms"] for r in rs],
             "errors": sum(r["wrk"]["non_2xx"] + r["wrk"]["socket_errors"] for r in rs)}
    if c:
        out["fanout"].append(entry)
    else:
        out["fanout_plain_proxy"] = entry
print(f"\nidle connections held open: RSS growth and p99 at {sys.argv[4]} req/s, medians")
print(f"{'conns':>6} {'proxy':<8} {'MiB':>7} {'B/conn':>7} {'p99 ms':>7}")
for r in out["idle"]:
    if r["p99_ms"]:
        print(f"{r['connections']:>6} {r['proxy']:<8} {med(r['rss_growth_mib']):>7.1f} {med(r['bytes_per_connection']):>7.0f} {med(r['p99_ms']):>7.3f}")
print("\nresponse size: saturation req/s (wrk -c64), medians")
for r in out["size"]:
    print(f"{r['bytes']:>8} B {r['proxy']:<8} {med(r['rps']):>9.0f} req/s  p99 {med(r['p99_ms']):.2f} ms  errors {r['errors']}")
pp = out.get("fanout_plain_proxy")
if pp:
    print(f"\nfan-out (hopline): plain proxy route {med(pp['rps']):.0f} req/s")
for r in out["fanout"]:
    print(f"{r['calls']:>3} calls: {med(r['rps']):>8.0f} req/s ({med(r['rps']) * r['calls']:.0f} upstream exchanges/s)  p99 {med(r['p99_ms']):.2f} ms  errors {r['errors']}")
json.dump(out, open(sys.argv[2], "w"), indent=2)
print("saved", sys.argv[2])
PY
python3 bench/plot.py "$path" "$OUT"
