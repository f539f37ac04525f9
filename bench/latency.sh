#!/usr/bin/env bash
# Tail latency at fixed fractions of nginx's saturation, with the saturation measured in
# the same round: on a shared host whose speed drifts over minutes, "90 % of the rate
# measured ten minutes ago" can be past both proxies' limits (bench/run.sh's fixed-rate
# loads use its saturation phase's medians).
#
#   bench/latency.sh            # ROUNDS=5 FRACTIONS="50 90" FIXED_SECS=10 by default
#
# Each round: nginx's saturation (wrk -t1 -c64, SAT_DURATION), then for each fraction
# nginx and hopline (order alternating by round) under bench's fixed-rate (64 keep-alive
# connections, open loop, latency from each request's scheduled time) at that fraction
# of the round's rate, with each proxy's CPU time per request (user + system of the
# serving process, from /proc). Same setup as bench/run.sh: one-worker proxies with
# access logs on, proxy + upstream pinned to cpu 0, load generator to cpu 1.
# Prints per-round results and medians, and writes bench/results/latency-<unix time>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
FRACTIONS=${FRACTIONS:-50 90}
FIXED_SECS=${FIXED_SECS:-10}
SAT_DURATION=${SAT_DURATION:-5s}

source bench/lib.sh
install_missing nginx:nginx-light wrk:wrk
[ -n "${NO_BUILD:-}" ] || cargo build --profile dist --locked -p hopline -p hopline-bench --features hopline/jemalloc >/dev/null 2>&1
start_upstream

start_proxy() { # name port -> pid
  case "$1" in
    nginx) taskset -c 0 nginx -c "$(render proxy-nginx.conf "$2")" >"$DIR/nginx-proxy.out" 2>&1 & ;;
    hopline) taskset -c 0 ./target/dist/hopline serve --threads 1 -c "$(render proxy-hopline.toml "$2")" >"$DIR/hopline.out" 2>"$DIR/hopline.err" & ;;
  esac
  echo $!
}
TICK=$(getconf CLK_TCK)

LINES=()
for round in $(seq "$ROUNDS"); do
  port=$(free_port); pid=$(start_proxy nginx "$port"); PIDS+=("$pid"); wait_port "$port"
  taskset -c 1 wrk -t1 -c64 -d2s "http://127.0.0.1:$port/" >/dev/null
  sat=$(taskset -c 1 wrk -t1 -c64 -d"$SAT_DURATION" "http://127.0.0.1:$port/" | awk '/Requests\/sec/ {print int($2)}')
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "round $round: nginx saturation $sat req/s" >&2
  names=(nginx hopline)
  [ $((round % 2)) -eq 0 ] && names=(hopline nginx)
  for fraction in $FRACTIONS; do
    rate=$((sat * fraction / 100))
    for name in "${names[@]}"; do
      port=$(free_port); pid=$(start_proxy "$name" "$port"); PIDS+=("$pid"); wait_port "$port"
      worker=$(serving_pid "$name" "$pid")
      t0=$(cpu_ticks "$worker")
      line=$(taskset -c 1 ./target/dist/fixed-rate "127.0.0.1:$port" "$rate" "$FIXED_SECS")
      t1=$(cpu_ticks "$worker")
      kill "$pid"; wait "$pid" 2>/dev/null || true
      LINES+=("{\"round\":$round,\"saturation\":$sat,\"fraction\":$fraction,\"proxy\":\"$name\",\"cpu_ticks\":$((t1 - t0)),\"result\":$line}")
      echo "round $round ${fraction}% ($rate req/s) $name: $line" >&2
    done
  done
done

printf '%s\n' "${LINES[@]}" > "$DIR/runs.jsonl"
python3 - "$TICK" "$FIXED_SECS" "$DIR/runs.jsonl" <<'PY'
import json, statistics, sys, time, platform, os
tick, secs = float(sys.argv[1]), sys.argv[2]
runs = [json.loads(l) for l in open(sys.argv[3]) if l.strip()]
med = statistics.median
out = {"date": time.strftime("%Y-%m-%d"), "machine": platform.node(), "cpus": os.cpu_count(),
       "fixed_secs": int(secs), "runs": runs, "fractions": {}}
for fraction in sorted({r["fraction"] for r in runs}):
    print(f"\n{fraction} % of nginx's saturation in the same round, {secs} s per proxy per round")
    print(f"{'round':>5} {'rate':>7} {'nginx p99':>10} {'hopline p99':>12} {'ratio':>6} {'nginx us/req':>13} {'hopline us/req':>15}")
    ratios, by = [], {"nginx": [], "hopline": []}
    for rnd in sorted({r["round"] for r in runs}):
        x = {r["proxy"]: r for r in runs if r["round"] == rnd and r["fraction"] == fraction}
        if set(x) != {"nginx", "hopline"}:
            continue
        p = {k: x[k]["result"]["latency"]["p99_ms"] for k in x}
        cpu = {k: x[k]["cpu_ticks"] / tick * 1e6 / max(1, x[k]["result"]["requests"]) for k in x}
        for k in by:
            by[k].append({"p99_ms": p[k], "cpu_us": cpu[k], "errors": x[k]["result"]["error_share"]})
        ratios.append(p["hopline"] / p["nginx"])
        print(f"{rnd:>5} {x['nginx']['result']['rate']:>7.0f} {p['nginx']:>10.3f} {p['hopline']:>12.3f} {ratios[-1]:>6.2f} {cpu['nginx']:>13.1f} {cpu['hopline']:>15.1f}")
    summary = {"ratio_median": med(ratios), "ratio_range": [min(ratios), max(ratios)]}
    for k, v in by.items():
        summary[k] = {"p99_ms_median": med(a["p99_ms"] for a in v), "cpu_us_median": med(a["cpu_us"] for a in v),
                      "error_share_max": max(a["errors"] for a in v)}
    out["fractions"][str(fraction)] = summary
    print(f"medians: p99 nginx {summary['nginx']['p99_ms_median']:.3f} ms, hopline {summary['hopline']['p99_ms_median']:.3f} ms; "
          f"hopline/nginx per round {summary['ratio_median']:.2f} ({summary['ratio_range'][0]:.2f}-{summary['ratio_range'][1]:.2f}); "
          f"CPU per request nginx {summary['nginx']['cpu_us_median']:.1f} us, hopline {summary['hopline']['cpu_us_median']:.1f} us")
path = f"bench/results/latency-{int(time.time())}.json"
json.dump(out, open(path, "w"), indent=2)
print("saved", path)
PY
