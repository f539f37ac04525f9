# Shared by bench/run.sh and bench/profiles.sh (sourced from the repository root): Debian
# packages installed when missing, a temp dir whose processes are killed on exit, free
# ports, config templates from bench/conf/, and the nginx `return 200` upstream on cpu 0.

# install_missing CMD:PACKAGE ...
install_missing() {
  local need=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
  done
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
}

DIR=$(mktemp -d)
PIDS=()
# On exit: the processes started here are stopped and the temp dir (configs, access logs —
# gigabytes after a long run) removed, unless KEEP_TMP=1.
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
  [ -n "${KEEP_TMP:-}" ] || rm -rf "$DIR"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port)

render() { # template port -> file
  sed -e "s#__DIR__#$DIR#g" -e "s#__UPSTREAM_PORT__#$UP#g" -e "s#__PROXY_PORT__#$2#g" "bench/conf/$1" > "$DIR/$1"
  echo "$DIR/$1"
}
# wait_port PORT [TRIES]: up to TRIES connection attempts 0.05 s apart (200: 10 s).
wait_port() { for _ in $(seq "${2:-200}"); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 not ready" >&2; return 1; }

# The process that serves a proxy's connections: nginx's worker (a child of the master
# started here), the process itself for the others.
serving_pid() { if [ "$1" = nginx ]; then pgrep -P "$2" | head -1; else echo "$2"; fi; } # name pid
# A process's CPU time so far (user + system), in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

start_upstream() {
  taskset -c 0 nginx -c "$(render upstream-nginx.conf 0)" >"$DIR/upstream.out" 2>&1 &
  PIDS+=($!)
  wait_port "$UP"
}
