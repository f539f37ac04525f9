#!/usr/bin/env bash
# Runs the embedded incident drill and renders both reports in headless Chromium
# (Debian's `chromium` package), writing docs/drill-legacy.png and docs/drill-hopline.png.
# Fails if a page does not render or has no chart.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-wqy-zenhei >/dev/null; }
cargo build --release --locked
out=$(mktemp -d)
./target/release/hopline drill --out "$out" || true   # exit 1 only means an expectation failed
for v in legacy hopline; do
  page="$out/incident-$v/index.html"
  grep -q "<svg" "$page" || { echo "no chart in $page" >&2; exit 1; }
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$out/chromium-$v" --window-size=960,1450 \
    --screenshot="docs/drill-$v.png" "file://$page" >/dev/null 2>&1
  test -s "docs/drill-$v.png" || { echo "chromium rendered nothing for $page" >&2; exit 1; }
  echo "docs/drill-$v.png"
done
