#!/usr/bin/env python3
"""Line charts (SVG, standard library only) for bench/growth.sh's results.

    bench/plot.py bench/results/growth-<time>.json docs/bench

writes growth-idle-rss.svg, growth-idle-p99.svg, growth-size.svg and growth-fanout.svg:
medians of the rounds in the JSON, one line per proxy, and a caption naming the run.
"""
import json
import math
import statistics
import sys
from html import escape

W, H = 660, 360
LEFT, RIGHT, TOP, BOTTOM = 72, 140, 40, 56
COLORS = {"nginx": "#1f77b4", "hopline": "#d62728", "upstream calls": "#7f7f7f"}


def nice_ticks(lo, hi, n=5):
    """Round tick values covering [lo, hi] on a linear axis."""
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    start = math.floor(lo / step) * step
    ticks, t = [start], start
    while t < hi - step * 0.001:
        t += step
        ticks.append(round(t, 10))
    return ticks


def log_ticks(lo, hi):
    """Powers of ten (and 2x, 5x when the range is short) covering [lo, hi]."""
    ticks = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in ((1,) if hi / lo > 1000 else (1, 2, 5)):
            v = m * 10**e
            if lo / 1.0001 <= v <= hi * 1.0001:
                ticks.append(v)
    if len(ticks) < 3:  # a range shorter than one decade: plain round numbers
        ticks = [t for t in nice_ticks(lo, hi) if t > 0]
    return ticks


def fmt(v, unit=""):
    if unit == "B":
        for div, suffix in ((1 << 20, " MiB"), (1 << 10, " KiB")):
            if v >= div:
                return f"{v / div:g}{suffix}"
        return f"{v:g} B"
    if abs(v) >= 1000 and float(v).is_integer():
        return f"{int(v):,}"
    return f"{v:g}"


def chart(path, title, xlabel, ylabel, series, caption, xlog=False, ylog=False, xunit=""):
    xs = [x for _, pts in series for x, _ in pts]
    ys = [y for _, pts in series for _, y in pts]
    xlo, xhi = min(xs), max(xs)
    if ylog:
        ylo, yhi = min(ys) / 1.3, max(ys) * 1.3
        yt = log_ticks(ylo, yhi)
        ylo, yhi = min(yt + [ylo]), max(yt + [yhi])
    else:
        yt = nice_ticks(0, max(ys) * 1.1)
        ylo, yhi = yt[0], yt[-1]
    if xlog:
        xt = [x for x in sorted(set(xs))]
    else:
        xt = nice_ticks(0, xhi)
        xlo, xhi = xt[0], xt[-1]
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def px(x):
        f = (math.log(x) - math.log(xlo)) / (math.log(xhi) - math.log(xlo)) if xlog else (x - xlo) / (xhi - xlo)
        return LEFT + f * pw

    def py(y):
        f = (math.log(y) - math.log(ylo)) / (math.log(yhi) - math.log(ylo)) if ylog else (y - ylo) / (yhi - ylo)
        return TOP + ph - f * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{LEFT}" y="22" font-size="14" font-weight="bold">{escape(title)}</text>']
    for t in yt:
        y = py(t)
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + pw}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(fmt(t))}</text>')
    for t in xt:
        x = px(t)
        out.append(f'<line x1="{x:.1f}" y1="{TOP + ph}" x2="{x:.1f}" y2="{TOP + ph + 4}" stroke="#333"/>')
        out.append(f'<text x="{x:.1f}" y="{TOP + ph + 18}" text-anchor="middle">{escape(fmt(t, xunit))}</text>')
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
    out.append(f'<text x="{LEFT + pw / 2}" y="{H - 22}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text transform="translate(16 {TOP + ph / 2}) rotate(-90)" text-anchor="middle">{escape(ylabel)}</text>')
    out.append(f'<text x="{LEFT}" y="{H - 6}" font-size="10" fill="#555">{escape(caption)}</text>')
    for i, (name, pts) in enumerate(series):
        color = COLORS.get(name, "#2ca02c")
        pts = sorted(pts)
        d = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="2"/>')
        for x, y in pts:
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}"><title>{escape(name)}: {escape(fmt(round(y, 3)))}</title></circle>')
        ly = TOP + 14 + 18 * i
        out.append(f'<line x1="{LEFT + pw + 12}" y1="{ly - 4}" x2="{LEFT + pw + 32}" y2="{ly - 4}" stroke="{color}" stroke-width="2"/>')
        out.append(f'<text x="{LEFT + pw + 38}" y="{ly}">{escape(name)}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    print("wrote", path)


def main():
    data = json.load(open(sys.argv[1]))
    outdir = sys.argv[2]
    med = statistics.median
    cap = f"bench/growth.sh, {data['date']}, {data['cpus']} cores, one worker each, {data['rounds']} rounds (medians)"
    proxies = data["proxies"]

    if data["idle"]:
        plot_idle(data, outdir, cap)
    if data["size"]:
        size = [(p, [(r["bytes"], med(r["rps"])) for r in data["size"] if r["proxy"] == p]) for p in proxies]
        chart(f"{outdir}/growth-size.svg", "Saturation throughput vs response size",
              "response body size", "requests/s (log)", size, cap, xlog=True, ylog=True, xunit="B")
    fan = data["fanout"]
    if fan:
        series = [("hopline", [(r["calls"], med(r["rps"])) for r in fan]),
                  ("upstream calls", [(r["calls"], med(r["rps"]) * r["calls"]) for r in fan])]
        chart(f"{outdir}/growth-fanout.svg", "Aggregate route: client requests/s vs fan-out width",
              "parallel upstream calls per client request", "per second", series, cap)


def plot_idle(data, outdir, cap):
    med = statistics.median
    idle, proxies = data["idle"], data["proxies"]
    rss = [(p, [(r["connections"], med(r["rss_growth_mib"])) for r in idle if r["proxy"] == p]) for p in proxies]
    chart(f"{outdir}/growth-idle-rss.svg", "Resident memory vs idle keep-alive connections",
          "idle connections (each after one request)", "RSS growth, MiB", rss, cap)
    p99 = [(p, [(r["connections"], med(r["p99_ms"])) for r in idle if r["proxy"] == p]) for p in proxies]
    chart(f"{outdir}/growth-idle-p99.svg", f"p99 at {data['idle_rate']:,} req/s vs idle connections held open",
          "idle connections held open", "p99 latency, ms (from schedule)", p99, cap)


if __name__ == "__main__":
    main()
