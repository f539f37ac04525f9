#!/usr/bin/env bash
# io_uring spike: the same minimal keep-alive proxy on epoll and on io_uring, next to
# nginx and hopline, each one worker pinned to cpu 0 with the nginx upstream, wrk on cpu 1
# (bench/run.sh's setup). Reports req/s and CPU time per request (user / kernel) from
# /proc/PID/stat, ROUNDS interleaved rounds.
#
#   spikes/uring/run.sh          # ROUNDS=3 DURATION=10s CONNS=64
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
source bench/lib.sh
install_missing nginx:nginx-light wrk:wrk
(cd spikes/uring && cargo build --release >/dev/null 2>&1)
[ -n "${NO_BUILD:-}" ] || cargo build --profile dist --locked -p hopline --features hopline/jemalloc >/dev/null 2>&1
SPIKE=spikes/uring/target/release/hopline-uring-spike
start_upstream
TICK=$(getconf CLK_TCK)

start() { # name port -> pid
  case "$1" in
    epoll|uring) taskset -c 0 "$SPIKE" "$1" "127.0.0.1:$2" "127.0.0.1:$UP" >"$DIR/$1.out" 2>&1 & ;;
    nginx) taskset -c 0 nginx -c "$(render proxy-nginx.conf "$2")" >"$DIR/nginx.out" 2>&1 & ;;
    hopline) taskset -c 0 ./target/dist/hopline serve --threads 1 -c "$(render proxy-hopline-nolog.toml "$2")" >"$DIR/hopline.out" 2>&1 & ;;
  esac
  echo $!
}
cpu() { awk '{print $14, $15}' "/proc/$1/stat"; } # utime stime, in ticks

for round in $(seq "$ROUNDS"); do
  for name in nginx hopline epoll uring; do
    port=$(free_port); pid=$(start "$name" "$port"); PIDS+=("$pid"); wait_port "$port"
    worker=$pid; [ "$name" = nginx ] && worker=$(pgrep -P "$pid" | head -1)
    taskset -c 1 wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$port/" >/dev/null
    read -r u0 s0 < <(cpu "$worker")
    taskset -c 1 wrk -t1 -c"$CONNS" -d"$DURATION" "http://127.0.0.1:$port/" >"$DIR/wrk.out"
    read -r u1 s1 < <(cpu "$worker")
    rps=$(awk '/Requests\/sec/ {print $2}' "$DIR/wrk.out")
    reqs=$(awk '/requests in/ {print $1}' "$DIR/wrk.out")
    python3 -c "import sys; name,rps,u,s,t,reqs=sys.argv[1:]; print(f'round $round {name:>8}: {float(rps):>9,.0f} req/s  user {int(u)/int(t)*1e6/int(reqs):5.2f} us  kernel {int(s)/int(t)*1e6/int(reqs):5.2f} us per request')" \
      "$name" "$rps" "$((u1-u0))" "$((s1-s0))" "$TICK" "$reqs"
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done
