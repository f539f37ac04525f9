#!/usr/bin/env bash
# Upload throughput: POST bodies of 1 MiB (100 in a row on one keep-alive connection) and
# 100 MiB (5 in a row) through nginx and hopline, each with request buffering off
# (streamed: nginx `proxy_request_buffering off`, hopline's default) and on (nginx
# `proxy_request_buffering on`, hopline `request_buffering = true`), in front of the nginx
# `return 200` upstream (which reads and drops the body). Proxy and upstream on cpu 0,
# curl on cpu 1; ROUNDS rounds; MiB/s of body moved, medians and ranges.
#
#   bench/upload.sh                 # ROUNDS=3
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
HOPLINE=${HOPLINE:-./target/dist/hopline}

source bench/lib.sh
install_missing nginx:nginx-light curl:curl
[ -n "${NO_BUILD:-}" ] || cargo build --profile dist --locked -p hopline >/dev/null 2>&1
start_upstream
head -c $((1 << 20)) /dev/zero >"$DIR/1m"
head -c $((100 << 20)) /dev/zero >"$DIR/100m"

start_proxy() { # name buffering port -> pid
  local conf
  case "$1" in
    nginx) conf=$(render proxy-nginx-upload.conf "$3"); sed -i "s#__BUFFERING__#$2#" "$conf"
      taskset -c 0 nginx -c "$conf" >"$DIR/nginx-proxy.out" 2>&1 & ;;
    hopline) conf=$(render proxy-hopline-upload.toml "$3")
      sed -i "s#__BUFFERING__#$([ "$2" = on ] && echo true || echo false)#" "$conf"
      taskset -c 0 "$HOPLINE" serve --threads 1 -c "$conf" >"$DIR/hopline.out" 2>"$DIR/hopline.err" & ;;
  esac
  echo $!
}

# post PORT FILE COUNT -> seconds for COUNT uploads of FILE on one connection
post() {
  local args=() i start end
  for i in $(seq "$3"); do
    [ "$i" -gt 1 ] && args+=(--next)
    args+=(-s -o /dev/null -H 'Expect:' --fail --data-binary "@$2" "http://127.0.0.1:$1/up")
  done
  start=$(date +%s.%N)
  taskset -c 1 curl "${args[@]}"
  end=$(date +%s.%N)
  awk -v a="$start" -v b="$end" 'BEGIN { printf "%.4f", b - a }'
}

RESULTS="$DIR/upload.jsonl"
for round in $(seq "$ROUNDS"); do
  for name in nginx hopline; do
    for buffering in off on; do
      port=$(free_port); pid=$(start_proxy "$name" "$buffering" "$port"); PIDS+=("$pid"); wait_port "$port"
      for size in 1m 100m; do
        count=100; mib=1
        [ "$size" = 100m ] && { count=5; mib=100; }
        secs=$(post "$port" "$DIR/$size" "$count")
        echo "{\"proxy\":\"$name\",\"buffering\":\"$buffering\",\"size\":\"$size\",\"round\":$round,\"seconds\":$secs,\"mib\":$((count * mib))}" >>"$RESULTS"
        echo "round $round $name buffering $buffering $size: $(awk -v m=$((count * mib)) -v s="$secs" 'BEGIN { printf "%.0f", m / s }') MiB/s" >&2
      done
      kill "$pid"; wait "$pid" 2>/dev/null || true
    done
  done
done

python3 - "$RESULTS" <<'PY'
import json, statistics, sys, time
rows = [json.loads(l) for l in open(sys.argv[1])]
out = {}
for r in rows:
    out.setdefault((r["proxy"], r["buffering"], r["size"]), []).append(r["mib"] / r["seconds"])
print("| proxy | request buffering | 1 MiB bodies, MiB/s | 100 MiB bodies, MiB/s |")
print("|---|---|---|---|")
for proxy in ("nginx", "hopline"):
    for b in ("off", "on"):
        cells = []
        for size in ("1m", "100m"):
            v = out.get((proxy, b, size), [])
            cells.append(f"{statistics.median(v):.0f} ({min(v):.0f}–{max(v):.0f})" if v else "—")
        print(f"| {proxy} | {b} | {cells[0]} | {cells[1]} |")
name = f"bench/results/upload-{int(time.time())}.jsonl"
open(name, "w").write(open(sys.argv[1]).read())
print(f"raw: {name}")
PY
