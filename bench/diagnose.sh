#!/usr/bin/env bash
# `hopline diagnose` speed: LINES access-log lines (default 1,000,000; a mix of 200s, an
# egress connect failure with a per-line port, 499s and aggregate lines with calls, like
# the drills write) in one file, read once to warm the page cache, then timed ROUNDS times
# on one core (taskset -c 0) with peak memory (GNU time's maximum resident set size).
#
#   bench/diagnose.sh            # LINES=1000000 ROUNDS=3
set -euo pipefail
cd "$(dirname "$0")/.."
LINES=${LINES:-1000000}
ROUNDS=${ROUNDS:-3}
cargo build --profile dist --locked -p hopline --features hopline/jemalloc >/dev/null 2>&1
LOG=$(mktemp -d)/access.log
trap 'rm -rf "$(dirname "$LOG")"' EXIT
python3 - "$LOG" "$LINES" <<'PY'
import sys
path, n = sys.argv[1], int(sys.argv[2])
base = 1795874400
with open(path, "w") as f:
    for i in range(n):
        t = base + i / 2000.0
        s, ms = int(t), int((t - int(t)) * 1000)
        ts = "2026-11-28T%02d:%02d:%02d.%03dZ" % (s % 86400 // 3600, s % 3600 // 60, s % 60, ms)
        if i % 10 == 3:
            f.write('{"ts":"%s","request_id":"r%d","route":"pay","status":502,"flags":["UF"],"cause":"upstream coupon 10.0.0.7:%d (egress): connect timed out after 200ms (connect_timeout)","upstream":"coupon","endpoint":"10.0.0.7:443","zone":"egress","phase":"connect","attempts":1,"duration_ms":200.412,"deadline_ms":1000,"degraded":[],"bytes_sent":0}\n' % (ts, i, 40000 + i % 20000))
        elif i % 10 == 7:
            f.write('{"ts":"%s","request_id":"r%d","route":"benefits","status":200,"flags":["DG"],"cause":null,"upstream":null,"endpoint":null,"zone":null,"phase":null,"attempts":0,"duration_ms":301.2,"deadline_ms":1000,"degraded":["coupons"],"bytes_sent":82,"calls":[{"name":"coupons","upstream":"coupon","zone":"egress","status":null,"cause":"upstream coupon 10.0.0.7:443 (egress): response headers timed out after 300ms (call timeout)","phase":"response_headers","fallback":true,"attempts":1,"duration_ms":300.1},{"name":"coin","upstream":"coin","zone":"internal","status":200,"cause":null,"phase":null,"fallback":false,"attempts":1,"duration_ms":6.1}]}\n' % (ts, i))
        elif i % 50 == 9:
            f.write('{"ts":"%s","request_id":"r%d","route":"pay","status":499,"flags":["DC"],"cause":"client closed the connection after 5s while waiting on upstream coin 10.0.0.8:80 (internal) response headers","upstream":"coin","endpoint":"10.0.0.8:80","zone":"internal","phase":"response_headers","attempts":1,"duration_ms":5000.2,"deadline_ms":20000,"degraded":[],"bytes_sent":0}\n' % (ts, i))
        else:
            f.write('{"ts":"%s","request_id":"r%d","client_request_id":null,"client":"10.1.2.3:5555","protocol":"HTTP/1.1","method":"GET","path":"/pay/42","route":"pay","status":200,"upstream_status":200,"flags":[],"cause":null,"upstream":"coupon","endpoint":"10.0.0.7:443","zone":"egress","phase":null,"attempts":1,"duration_ms":3.512,"deadline_ms":1000,"degraded":[],"bytes_sent":120}\n' % (ts, i))
PY
echo "$LINES lines, $(du -m "$LOG" | cut -f1) MB"
cat "$LOG" >/dev/null
for r in $(seq 1 "$ROUNDS"); do
  /usr/bin/time -f "round $r: %e s elapsed, %M KB max resident" taskset -c 0 ./target/dist/hopline diagnose "$LOG" >/dev/null
done
