#!/usr/bin/env bash
# The two build profiles side by side: how long a cold build of what README's first
# command builds (`-p hopline -p legacy-gateway`) takes with `--release` and with
# `--profile dist` (each in an empty target dir),
# and hopline's saturation throughput with each binary (nginx `return 200` upstream,
# proxy and upstream pinned to cpu 0, wrk -t1 -c64 on cpu 1, interleaved rounds, medians).
#
#   bench/profiles.sh            # ROUNDS=3 DURATION=10s
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}

source bench/lib.sh
install_missing nginx:nginx-light wrk:wrk

declare -A BUILD
for profile in release dist; do
  target=$(mktemp -d)
  start=$(date +%s.%N)
  CARGO_TARGET_DIR=$target cargo build --locked --profile "$profile" -p hopline -p legacy-gateway >/dev/null 2>&1
  BUILD[$profile]=$(python3 -c "print(round($(date +%s.%N) - $start))")
  cp "$target/$profile/hopline" "$DIR/hopline-$profile"
  rm -rf "$target"
  echo "cold cargo build --profile $profile -p hopline -p legacy-gateway: ${BUILD[$profile]} s"
done

start_upstream

declare -A RPS
for round in $(seq "$ROUNDS"); do
  for profile in release dist; do
    port=$(free_port)
    taskset -c 0 "$DIR/hopline-$profile" serve --threads 1 -c "$(render proxy-hopline.toml "$port")" >"$DIR/hopline.out" 2>"$DIR/hopline.err" &
    pid=$!
    wait_port "$port"
    rps=$(taskset -c 1 wrk -t1 -c64 -d"$DURATION" "http://127.0.0.1:$port/" | awk '/Requests\/sec/ {print $2}')
    kill "$pid"; wait "$pid" 2>/dev/null || true
    RPS[$profile]+="$rps "
    echo "round $round $profile: $rps req/s"
  done
done
python3 - "${RPS[release]}" "${RPS[dist]}" "${BUILD[release]}" "${BUILD[dist]}" <<'PY'
import statistics, sys
rel = [float(x) for x in sys.argv[1].split()]
dist = [float(x) for x in sys.argv[2].split()]
r, d = statistics.median(rel), statistics.median(dist)
print(f"\ncold build: release {sys.argv[3]} s, dist {sys.argv[4]} s")
print(f"saturation medians: release {r:,.0f} req/s, dist {d:,.0f} req/s, release/dist {r/d:.3f}")
PY
