#!/usr/bin/env bash
# Proxy comparison on this machine: direct upstream, nginx, HAProxy and hopline, each as a
# one-worker reverse proxy in front of the same nginx upstream, with its access log on.
# Proxy + upstream pinned to cpu 0, load generator to cpu 1; interleaved rounds.
#
#   bench/run.sh                 # ROUNDS=3 DURATION=10s CONNS=64 by default
#
# Saturation: wrk -t1 -c$CONNS -d$DURATION --latency, with each proxy's CPU time (user +
# system) per request over the measured run. Fixed rate, open loop, with bench's
# fixed-rate (latency from the scheduled time), ROUNDS interleaved rounds too: 50 % and
# 90 % of nginx's median saturation rate, and 110 % of hopline's (overload: error share,
# p99 and the rate answers came back at, for every proxy).
# Then both with two workers and nothing pinned (hopline --threads 2, nginx
# worker_processes 2). Then hopline alone: access log on vs off, and an aggregate route (three parallel calls)
# vs the plain proxy route, interleaved the same way; and for every proxy the resident
# memory per idle keep-alive connection (bench's idle-conns: IDLE_CONNS connections, each
# after one request; 8,000 by default because HAProxy's maxconn must stay under this
# machine's 20,000 open files).
# Prints tables and writes bench/results/proxies-<unix time>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
FIXED_SECS=${FIXED_SECS:-10}
IDLE_CONNS=${IDLE_CONNS:-8000}

source bench/lib.sh
install_missing nginx:nginx-light haproxy:haproxy wrk:wrk
[ -n "${NO_BUILD:-}" ] || cargo build --profile dist --locked -p hopline -p hopline-bench --features hopline/jemalloc >/dev/null 2>&1
start_upstream

start_proxy() { # name port [hopline config] -> pid
  case "$1" in
    # Output goes to files: this runs inside $(...), which would otherwise wait for it.
    nginx) taskset -c 0 nginx -c "$(render proxy-nginx.conf "$2")" >"$DIR/nginx-proxy.out" 2>&1 & ;;
    haproxy) taskset -c 0 haproxy -f "$(render proxy-haproxy.cfg "$2")" >"$DIR/haproxy-access.log" 2>&1 & ;;
    hopline) taskset -c 0 ./target/dist/hopline serve --threads 1 -c "$(render "${3:-proxy-hopline.toml}" "$2")" >"$DIR/hopline.out" 2>"$DIR/hopline.err" & ;;
  esac
  echo $!
}

declare -A RPS P99 P50 CPU
TICK=$(getconf CLK_TCK)
# The load generator runs on cpu 1 unless PIN is set otherwise (PIN= : not pinned). With
# CPU_PID, the 4th field is that process's CPU time (user + system) per request in µs
# over the measured run ("-" otherwise): a cost per request that a noisy host's steal
# time moves much less than req/s.
run_wrk() { # port [path] -> "rps p50_ms p99_ms cpu_us"
  local pin=(${PIN-taskset -c 1})
  "${pin[@]}" wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$1${2:-/}" >/dev/null # warm-up
  local t0="" t1 cpu=-
  [ -z "${CPU_PID:-}" ] || t0=$(cpu_ticks "$CPU_PID")
  "${pin[@]}" wrk -t1 -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:$1${2:-/}" > "$DIR/wrk.out"
  if [ -n "$t0" ]; then
    t1=$(cpu_ticks "$CPU_PID")
    cpu=$(python3 -c "import sys; t,tick,n=map(float,sys.argv[1:]); print(f'{t/tick*1e6/n:.2f}')" \
      "$((t1 - t0))" "$TICK" "$(awk '/requests in/ {print $1}' "$DIR/wrk.out")")
  fi
  local rps p50 p99 non2xx
  rps=$(awk '/Requests\/sec/ {print $2}' "$DIR/wrk.out")
  p50=$(awk '$1=="50%" {print $2}' "$DIR/wrk.out")
  p99=$(awk '$1=="99%" {print $2}' "$DIR/wrk.out")
  non2xx=$(awk '/Non-2xx/ {print $4}' "$DIR/wrk.out")
  [ -z "$non2xx" ] || { echo "non-2xx responses: $non2xx" >&2; cat "$DIR/wrk.out" >&2; }
  echo "$rps $p50 $p99 $cpu"
}
ms() { # wrk latency "1.23ms" / "456.00us" / "1.2s" -> ms
  python3 -c "import sys,re; v=sys.argv[1]; m=re.match(r'([\d.]+)(us|ms|s)',v); n=float(m.group(1)); print(n/1000 if m.group(2)=='us' else n*1000 if m.group(2)=='s' else n)" "$1"
}

# The order rotates each round, so that a slow spell of this shared host falls on each
# proxy in turn rather than on whichever always runs last.
ORDER=(direct nginx haproxy hopline)
for round in $(seq "$ROUNDS"); do
  for i in 0 1 2 3; do
    name=${ORDER[$(((i + round - 1) % 4))]}
    if [ "$name" = direct ]; then port=$UP; pid=""; else port=$(free_port); pid=$(start_proxy "$name" "$port"); PIDS+=("$pid"); wait_port "$port"; fi
    worker=$pid; [ -z "$pid" ] || worker=$(pgrep -P "$pid" | head -1 || true); worker=${worker:-$pid}
    read -r rps p50 p99 cpu < <(CPU_PID=$worker run_wrk "$port")
    RPS[$name]+="$rps "; P50[$name]+="$(ms "$p50") "; P99[$name]+="$(ms "$p99") "; CPU[$name]+="$cpu "
    echo "round $round $name: $rps req/s, p50 $p50, p99 $p99, cpu $cpu us/req" >&2
    [ -n "$pid" ] && { kill "$pid"; wait "$pid" 2>/dev/null || true; }
  done
done

median() { python3 -c "import sys,statistics; print(statistics.median(float(x) for x in sys.argv[1:]))" $1; }
NGINX_RPS=$(median "${RPS[nginx]}")
HOPLINE_RPS=$(median "${RPS[hopline]}")
# Fixed-rate loads: 50 % and 90 % of nginx's median saturation rate, and 110 % of hopline's
# own (overload: what a proxy does past its limit — queueing, errors — reported for all).
declare -A LOAD_RATE FIX
LOADS="50 90 over110"
LOAD_RATE[50]=$(python3 -c "print(int($NGINX_RPS*0.5))")
LOAD_RATE[90]=$(python3 -c "print(int($NGINX_RPS*0.9))")
LOAD_RATE[over110]=$(python3 -c "print(int($HOPLINE_RPS*1.1))")
for load in $LOADS; do
  for round in $(seq "$ROUNDS"); do
    for name in nginx haproxy hopline; do
      port=$(free_port); pid=$(start_proxy "$name" "$port"); PIDS+=("$pid"); wait_port "$port"
      line=$(taskset -c 1 ./target/dist/fixed-rate "127.0.0.1:$port" "${LOAD_RATE[$load]}" "$FIXED_SECS")
      FIX[$load,$name]+="$line|"
      echo "round $round fixed $load (${LOAD_RATE[$load]} req/s) $name: $line" >&2
      kill "$pid"; wait "$pid" 2>/dev/null || true
    done
  done
done

declare -A XRPS XP50 XP99
for round in $(seq "$ROUNDS"); do
  for variant in log-on log-off aggregate; do
    case $variant in
      log-on) conf=proxy-hopline.toml; path=/ ;;
      log-off) conf=proxy-hopline-nolog.toml; path=/ ;;
      aggregate) conf=proxy-hopline.toml; path=/agg ;;
    esac
    port=$(free_port); pid=$(start_proxy hopline "$port" "$conf"); PIDS+=("$pid"); wait_port "$port"
    read -r rps p50 p99 _ < <(run_wrk "$port" "$path")
    XRPS[$variant]+="$rps "; XP50[$variant]+="$(ms "$p50") "; XP99[$variant]+="$(ms "$p99") "
    echo "round $round hopline $variant: $rps req/s, p50 $p50, p99 $p99" >&2
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done

# Two workers, nothing pinned: hopline --threads 2 against nginx with worker_processes 2
# (the load generator shares the two cores with them and with the upstream).
declare -A TRPS TP99
for round in $(seq "$ROUNDS"); do
  for name in nginx hopline; do
    port=$(free_port)
    case $name in
      nginx) sed 's/^worker_processes 1;/worker_processes 2;/' "$(render proxy-nginx.conf "$port")" >"$DIR/proxy-nginx-2.conf"
             nginx -c "$DIR/proxy-nginx-2.conf" >"$DIR/nginx-proxy.out" 2>&1 & ;;
      hopline) ./target/dist/hopline serve --threads 2 -c "$(render proxy-hopline.toml "$port")" >"$DIR/hopline.out" 2>"$DIR/hopline.err" & ;;
    esac
    pid=$!; PIDS+=("$pid"); wait_port "$port"
    read -r rps _ p99 _ < <(PIN= run_wrk "$port")
    TRPS[$name]+="$rps "; TP99[$name]+="$(ms "$p99") "
    echo "round $round two workers $name: $rps req/s, p99 $p99" >&2
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done

declare -A IDLE
for name in nginx haproxy hopline; do
  port=$(free_port); pid=$(start_proxy "$name" "$port"); PIDS+=("$pid"); wait_port "$port"
  worker=$pid
  # nginx serves from a worker process, a child of the master started here.
  [ "$name" = nginx ] && worker=$(pgrep -P "$pid" | head -1)
  IDLE[$name]=$(taskset -c 1 ./target/dist/idle-conns "127.0.0.1:$port" "$worker" "$IDLE_CONNS")
  echo "idle $name: ${IDLE[$name]}" >&2
  kill "$pid"; wait "$pid" 2>/dev/null || true
done

python3 - "$DIR" <<PY
import json, statistics, sys, time, platform, os
rps = {k: [float(x) for x in v.split()] for k, v in {"direct": "${RPS[direct]}", "nginx": "${RPS[nginx]}", "haproxy": "${RPS[haproxy]}", "hopline": "${RPS[hopline]}"}.items()}
p50 = {k: [float(x) for x in v.split()] for k, v in {"direct": "${P50[direct]}", "nginx": "${P50[nginx]}", "haproxy": "${P50[haproxy]}", "hopline": "${P50[hopline]}"}.items()}
p99 = {k: [float(x) for x in v.split()] for k, v in {"direct": "${P99[direct]}", "nginx": "${P99[nginx]}", "haproxy": "${P99[haproxy]}", "hopline": "${P99[hopline]}"}.items()}
loads = {"50": ${LOAD_RATE[50]}, "90": ${LOAD_RATE[90]}, "over110": ${LOAD_RATE[over110]}}
fixed_raw = {"50": {"nginx": '''${FIX[50,nginx]}''', "haproxy": '''${FIX[50,haproxy]}''', "hopline": '''${FIX[50,hopline]}'''},
             "90": {"nginx": '''${FIX[90,nginx]}''', "haproxy": '''${FIX[90,haproxy]}''', "hopline": '''${FIX[90,hopline]}'''},
             "over110": {"nginx": '''${FIX[over110,nginx]}''', "haproxy": '''${FIX[over110,haproxy]}''', "hopline": '''${FIX[over110,hopline]}'''}}
fixed = {}
for load, by in fixed_raw.items():
    fixed[load] = {"rate": loads[load]}
    for k, v in by.items():
        runs = [json.loads(x) for x in v.split("|") if x.strip()]
        fixed[load][k] = {"latency": {"p50_ms": statistics.median(r["latency"]["p50_ms"] for r in runs),
                                      "p99_ms": statistics.median(r["latency"]["p99_ms"] for r in runs),
                                      "max_ms": max(r["latency"]["max_ms"] for r in runs)},
                          "error_share": statistics.median(r["error_share"] for r in runs),
                          "achieved_rate": statistics.median(r["achieved_rate"] for r in runs),
                          "non_2xx": sum(r["non_2xx"] for r in runs), "runs": runs}
med = lambda xs: statistics.median(xs)
print(f"\nsaturation: wrk -t1 -c${CONNS} -d${DURATION}, ${ROUNDS} interleaved rounds, medians")
print(f"{'proxy':<10} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'spread':>7}")
for k in ["direct", "nginx", "haproxy", "hopline"]:
    spread = (max(rps[k]) - min(rps[k])) / med(rps[k]) * 100
    print(f"{k:<10} {med(rps[k]):>10.0f} {med(p50[k]):>8.2f} {med(p99[k]):>8.2f} {spread:>6.1f}%")
print(f"hopline/nginx {med(rps['hopline'])/med(rps['nginx']):.2f}x   hopline/haproxy {med(rps['hopline'])/med(rps['haproxy']):.2f}x")
cpu = {k: [float(x) for x in v.split() if x != "-"] for k, v in {"nginx": "${CPU[nginx]}", "haproxy": "${CPU[haproxy]}", "hopline": "${CPU[hopline]}"}.items()}
print("proxy CPU time per request (user + system, the serving process), medians (range):")
for k in ["nginx", "haproxy", "hopline"]:
    if cpu[k]:
        print(f"{k:<10} {med(cpu[k]):>6.2f} us ({min(cpu[k]):.2f}-{max(cpu[k]):.2f})")
if cpu["nginx"] and cpu["hopline"]:
    print(f"nginx / hopline CPU per request: {med(cpu['nginx'])/med(cpu['hopline']):.2f}x")
names_load = {"50": "50 % of nginx's saturation", "90": "90 % of nginx's saturation", "over110": "110 % of hopline's saturation (overload)"}
for load in ["50", "90", "over110"]:
    print(f"\nfixed rate {fixed[load]['rate']} req/s ({names_load[load]}), open loop, {os.environ.get('FIXED_SECS','10')} s, ${ROUNDS} interleaved rounds: medians, worst max")
    print(f"{'proxy':<10} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>7} {'answered/s':>10}")
    for k in ["nginx", "haproxy", "hopline"]:
        f = fixed[load][k]; l = f["latency"]
        print(f"{k:<10} {l['p50_ms']:>8.3f} {l['p99_ms']:>8.3f} {l['max_ms']:>8.1f} {f['error_share']*100:>6.2f}% {f['achieved_rate']:>10.0f}")
    if load != "over110":
        print(f"hopline p99 / nginx p99: {fixed[load]['hopline']['latency']['p99_ms'] / fixed[load]['nginx']['latency']['p99_ms']:.2f}")
xr = {k: [float(x) for x in v.split()] for k, v in {"log-on": "${XRPS[log-on]}", "log-off": "${XRPS[log-off]}", "aggregate": "${XRPS[aggregate]}"}.items()}
x50 = {k: [float(x) for x in v.split()] for k, v in {"log-on": "${XP50[log-on]}", "log-off": "${XP50[log-off]}", "aggregate": "${XP50[aggregate]}"}.items()}
x99 = {k: [float(x) for x in v.split()] for k, v in {"log-on": "${XP99[log-on]}", "log-off": "${XP99[log-off]}", "aggregate": "${XP99[aggregate]}"}.items()}
print(f"\nhopline variants: saturation, same wrk settings, ${ROUNDS} interleaved rounds, medians")
print(f"{'variant':<28} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
names = {"log-on": "proxy route, log on", "log-off": "proxy route, log off", "aggregate": "aggregate (3 calls), log on"}
for k in ["log-on", "log-off", "aggregate"]:
    print(f"{names[k]:<28} {med(xr[k]):>10.0f} {med(x50[k]):>8.2f} {med(x99[k]):>8.2f}")
print(f"access log costs {(1 - med(xr['log-on'])/med(xr['log-off']))*100:.1f}% of saturation throughput")
tr = {k: [float(x) for x in v.split()] for k, v in {"nginx": "${TRPS[nginx]}", "hopline": "${TRPS[hopline]}"}.items()}
t99 = {k: [float(x) for x in v.split()] for k, v in {"nginx": "${TP99[nginx]}", "hopline": "${TP99[hopline]}"}.items()}
print(f"\ntwo workers, nothing pinned (hopline --threads 2, nginx worker_processes 2): saturation, medians")
for k in ["nginx", "hopline"]:
    print(f"{k:<10} {med(tr[k]):>10.0f} req/s  p99 {med(t99[k]):.2f} ms  (range {min(tr[k]):.0f}-{max(tr[k]):.0f})")
print(f"hopline/nginx {med(tr['hopline'])/med(tr['nginx']):.2f}x")
idle = {k: json.loads(v) for k, v in {"nginx": '''${IDLE[nginx]}''', "haproxy": '''${IDLE[haproxy]}''', "hopline": '''${IDLE[hopline]}'''}.items()}
print(f"\nidle keep-alive connections: ${IDLE_CONNS} open, each after one request; RSS of the serving process")
print(f"{'proxy':<10} {'baseline KiB':>13} {'after KiB':>10} {'bytes/conn':>11}")
for k in ["nginx", "haproxy", "hopline"]:
    print(f"{k:<10} {idle[k]['baseline_kib']:>13} {idle[k]['after_kib']:>10} {idle[k]['bytes_per_connection']:>11.0f}")
out = {"date": time.strftime("%Y-%m-%d"), "machine": platform.node(), "cpus": os.cpu_count(), "rounds": ${ROUNDS}, "conns": ${CONNS}, "duration": "${DURATION}",
       "saturation": {k: {"rps": rps[k], "p50_ms": p50[k], "p99_ms": p99[k], "cpu_us_per_request": cpu.get(k, [])} for k in rps}, "fixed_rate": fixed,
       "hopline_variants": {k: {"rps": xr[k], "p50_ms": x50[k], "p99_ms": x99[k]} for k in xr},
       "two_workers": {k: {"rps": tr[k], "p99_ms": t99[k]} for k in tr},
       "idle_connections": idle}
path = f"bench/results/proxies-{int(time.time())}.json"
json.dump(out, open(path, "w"), indent=2)
print("saved", path)
PY
