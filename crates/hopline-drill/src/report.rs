//! The drill report: a self-contained `index.html` with inline SVG charts (no scripts, no
//! external files — readable offline) and a terminal summary.

use std::fmt::Write as _;

use crate::record::{AlertEvent, Hop, PhaseStats, Second};

/// A named, coloured line: (name, colour, points).
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

const W: f64 = 900.0;
const H: f64 = 220.0;
const PAD: f64 = 45.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A line chart: one polyline per series, shaded fault windows, alert marks.
fn chart(
    title: &str,
    unit: &str,
    x_max: f64,
    series: &[Series],
    faults: &[(f64, f64)],
    alerts: &[AlertEvent],
) -> String {
    let peak = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.1))
        .fold(1.0f64, f64::max)
        * 1.1;
    // Ticks at round values (1, 2 or 5 times a power of ten); the top one is the axis end.
    let y_step = nice_step(peak / 4.0);
    let y_max = (peak / y_step).ceil() * y_step;
    let x = |v: f64| PAD + v / x_max.max(1.0) * (W - 2.0 * PAD);
    let y = |v: f64| H - PAD + -(v / y_max) * (H - 2.0 * PAD);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<figure><figcaption>{}</figcaption><svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{}">"#,
        esc(title),
        esc(title)
    );
    for (a, b) in faults {
        let _ = write!(
            s,
            r##"<rect x="{:.1}" y="{PAD}" width="{:.1}" height="{:.1}" fill="#f8d7a8" opacity="0.6"><title>fault window {a}s-{b}s</title></rect>"##,
            x(*a),
            x(*b) - x(*a),
            H - 2.0 * PAD
        );
    }
    let _ = write!(
        s,
        r##"<line x1="{PAD}" y1="{0}" x2="{1}" y2="{0}" stroke="#333"/><line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{0}" stroke="#333"/>"##,
        H - PAD,
        W - PAD
    );
    let y_ticks = (y_max / y_step).round() as u32;
    for i in 0..=y_ticks {
        let v = y_step * f64::from(i);
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end">{}</text><line x1="{PAD}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            PAD - 4.0,
            y(v) + 3.0,
            tick_label(v, y_step),
            W - PAD,
            y(v),
            y(v)
        );
    }
    let step = nice_step(x_max / 10.0).max(1.0);
    let mut t = 0.0;
    while t <= x_max {
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle">{t:.0}s</text>"#,
            x(t),
            H - PAD + 14.0
        );
        t += step;
    }
    let _ = write!(
        s,
        r#"<text x="8" y="{:.1}" font-size="10">{}</text>"#,
        PAD - 8.0,
        esc(unit)
    );
    for a in alerts {
        let _ = write!(
            s,
            r##"<line x1="{0:.1}" x2="{0:.1}" y1="{PAD}" y2="{1:.1}" stroke="#c00" stroke-dasharray="4 3"><title>alert {2} fired at {3}s</title></line><text x="{0:.1}" y="{4:.1}" font-size="10" fill="#c00">&#9888; {2}</text>"##,
            x(a.fired),
            H - PAD,
            esc(&a.name),
            a.fired,
            PAD - 2.0
        );
        if let Some(r) = a.resolved {
            let _ = write!(
                s,
                r##"<line x1="{0:.1}" x2="{0:.1}" y1="{PAD}" y2="{1:.1}" stroke="#080" stroke-dasharray="2 3"><title>alert {2} resolved at {3}s</title></line>"##,
                x(r),
                H - PAD,
                esc(&a.name),
                r
            );
        }
    }
    for (i, (name, color, pts)) in series.iter().enumerate() {
        let path: Vec<String> = pts
            .iter()
            .map(|(a, b)| format!("{:.1},{:.1}", x(*a), y(*b)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{}"><title>{}</title></polyline>"#,
            path.join(" "),
            esc(name)
        );
        let _ = write!(
            s,
            r#"<rect x="{:.1}" y="{:.1}" width="10" height="10" fill="{color}"/><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"#,
            W - PAD - 150.0,
            PAD + 14.0 * i as f64,
            W - PAD - 135.0,
            PAD + 9.0 + 14.0 * i as f64,
            esc(name)
        );
    }
    // Every marker drawn is in the legend, below the series.
    let mut markers: Vec<(&str, &str)> = Vec::new();
    if !faults.is_empty() {
        markers.push(("fault window", r##"fill="#f8d7a8""##));
    }
    if !alerts.is_empty() {
        markers.push(("alert fired", r##"stroke="#c00" stroke-dasharray="4 3""##));
    }
    if alerts.iter().any(|a| a.resolved.is_some()) {
        markers.push((
            "alert resolved",
            r##"stroke="#080" stroke-dasharray="2 3""##,
        ));
    }
    let left = W - PAD - 150.0;
    for (i, (label, style)) in markers.into_iter().enumerate() {
        let top = PAD + 14.0 * (series.len() + i) as f64;
        if label == "fault window" {
            let _ = write!(
                s,
                r#"<rect x="{left:.1}" y="{top:.1}" width="10" height="10" {style}/>"#
            );
        } else {
            let (right, mid) = (left + 10.0, top + 5.0);
            let _ = write!(
                s,
                r#"<line x1="{left:.1}" x2="{right:.1}" y1="{mid:.1}" y2="{mid:.1}" {style}/>"#
            );
        }
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" font-size="11">{label}</text>"#,
            W - PAD - 135.0,
            top + 9.0
        );
    }
    s.push_str("</svg></figure>");
    s
}

/// The round step (1, 2 or 5 times a power of ten) at or above `raw`.
fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    let f = raw / magnitude;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

/// A tick label with as many decimals as the step needs (none for steps of 1 or more).
fn tick_label(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    format!("{v:.decimals$}")
}

const COLORS: [&str; 8] = [
    "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666",
];

/// The whole page.
#[allow(clippy::too_many_arguments)]
pub fn html(
    name: &str,
    seed: u64,
    duration: f64,
    secs: &[Second],
    hops: &[Hop],
    faults: &[(f64, f64)],
    alerts: &[AlertEvent],
    checks: &[(String, bool, String)],
    stats: (PhaseStats, PhaseStats),
) -> String {
    let mut classes: Vec<String> = secs
        .iter()
        .flat_map(|s| s.classes.keys().cloned())
        .collect();
    classes.sort();
    classes.dedup();
    let status_series: Vec<Series> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| {
            (
                c.as_str(),
                COLORS[i % COLORS.len()],
                secs.iter()
                    .map(|s| {
                        (
                            s.t as f64 + 0.5,
                            s.classes.get(c).copied().unwrap_or(0) as f64,
                        )
                    })
                    .collect(),
            )
        })
        .collect();
    let mut status_series = status_series;
    status_series.push((
        "degraded 200",
        "#999999",
        secs.iter()
            .map(|s| (s.t as f64 + 0.5, s.degraded as f64))
            .collect(),
    ));
    let lat: Vec<Series> = vec![
        (
            "p50",
            COLORS[0],
            secs.iter().map(|s| (s.t as f64 + 0.5, s.p50)).collect(),
        ),
        (
            "p99",
            COLORS[1],
            secs.iter().map(|s| (s.t as f64 + 0.5, s.p99)).collect(),
        ),
        (
            "max",
            COLORS[2],
            secs.iter().map(|s| (s.t as f64 + 0.5, s.max)).collect(),
        ),
    ];
    let mut page = String::new();
    let _ = write!(
        page,
        r#"<!doctype html><html><head><meta charset="utf-8"><title>hopline drill: {0}</title><style>body{{font-family:system-ui,sans-serif;margin:24px;max-width:960px}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px;text-align:left}}.ok{{color:#080}}.bad{{color:#c00;font-weight:bold}}figcaption{{font-weight:600;margin:12px 0 4px}}code{{font-size:12px}}</style></head><body><h1>hopline drill: {0}</h1><p>duration {1:.0} s · seed {2} · shaded: fault windows · dashed red: alert fired</p>"#,
        esc(name),
        duration,
        seed
    );
    page.push_str(
        "<h2>Expectations</h2><table><tr><th>expectation</th><th>measured</th><th>result</th></tr>",
    );
    for (d, ok, v) in checks {
        let _ = write!(
            page,
            r#"<tr><td>{}</td><td><code>{}</code></td><td class="{}">{}</td></tr>"#,
            esc(d),
            esc(v),
            if *ok { "ok" } else { "bad" },
            if *ok { "pass" } else { "FAIL" }
        );
    }
    page.push_str("</table><h2>Client's view</h2><table><tr><th>phase</th><th>requests</th><th>non-2xx</th><th>degraded</th><th>p50</th><th>p99</th><th>max</th></tr>");
    // No fault window row for a run without faults (it would show zeros as data).
    let phases = [("whole run", stats.0), ("fault window", stats.1)];
    for (label, p) in phases
        .into_iter()
        .filter(|(l, p)| *l == "whole run" || p.total > 0)
    {
        let _ = write!(page, "<tr><td>{label}</td><td>{}</td><td>{:.2} %</td><td>{:.2} %</td><td>{:.1} ms</td><td>{:.1} ms</td><td>{:.1} ms</td></tr>", p.total, p.non_2xx_ratio * 100.0, p.degraded_ratio * 100.0, p.p50_ms, p.p99_ms, p.max_ms);
    }
    page.push_str("</table>");
    page.push_str(&chart(
        "Responses per second by class (load generator)",
        "req/s",
        duration,
        &status_series,
        faults,
        alerts,
    ));
    page.push_str(&chart(
        "Latency from scheduled send time",
        "ms",
        duration,
        &lat,
        faults,
        alerts,
    ));
    for h in hops.iter().filter(|h| h.lines > 0) {
        let mut keys: Vec<String> = h.seconds.iter().flat_map(|m| m.keys().cloned()).collect();
        keys.sort();
        keys.dedup();
        let series: Vec<Series> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                (
                    k.as_str(),
                    COLORS[i % COLORS.len()],
                    h.seconds
                        .iter()
                        .enumerate()
                        .map(|(t, m)| (t as f64 + 0.5, m.get(k).copied().unwrap_or(0) as f64))
                        .collect(),
                )
            })
            .collect();
        page.push_str(&chart(
            &format!(
                "{}: statuses per second (its own log, {} lines)",
                h.name, h.lines
            ),
            "per s",
            duration,
            &series,
            faults,
            &endpoint_marks(h),
        ));
        if let Some((d, _)) = &h.diagnosis {
            let _ = write!(
                page,
                "<h3>hopline diagnose on {}'s log</h3><pre>{}</pre>",
                esc(&h.name),
                esc(&d.text())
            );
        }
        if !h.top_causes.is_empty() {
            let _ = write!(
                page,
                "<table><tr><th>top causes at {} during faults</th><th>count</th></tr>",
                esc(&h.name)
            );
            for (c, n) in &h.top_causes {
                let _ = write!(
                    page,
                    "<tr><td><code>{}</code></td><td>{n}</td></tr>",
                    esc(c)
                );
            }
            page.push_str("</table>");
        }
    }
    page.push_str("<p>Raw series: <a href=\"data.json\">data.json</a>.</p></body></html>\n");
    page
}

/// A hop's endpoint events as timeline marks (drawn like alerts).
fn endpoint_marks(h: &Hop) -> Vec<AlertEvent> {
    h.endpoint_events
        .iter()
        .map(|e| AlertEvent {
            name: format!("{} {}", e.endpoint, e.state),
            fired: e.t,
            resolved: None,
        })
        .collect()
}

/// `hopline diagnose --format html`: the findings, and per route its requests per second
/// (2xx, non-2xx, degraded) and p99 with the onset marked — the drill's charts.
pub fn diagnose_page(d: &hopline_diagnose::Report) -> String {
    let start = d.span.0.floor();
    let x_max = (d.span.1 - start).max(1.0) + 1.0;
    let mut page = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>hopline diagnose</title><style>body{font:14px system-ui,sans-serif;margin:24px;max-width:960px}pre{background:#f6f6f6;padding:12px;overflow-x:auto}</style></head><body><h1>hopline diagnose</h1>",
    );
    let _ = write!(page, "<pre>{}</pre>", esc(&d.text()));
    for r in &d.routes {
        let at = |t: i64| t as f64 - start + 0.5;
        let series = |f: &dyn Fn(&hopline_diagnose::RouteSecond) -> f64| -> Vec<(f64, f64)> {
            r.seconds.iter().map(|p| (at(p.t), f(p))).collect()
        };
        let marks: Vec<AlertEvent> = r
            .onset
            .iter()
            .map(|o| AlertEvent {
                name: format!("onset: {}", o.metric.as_str()),
                fired: o.first - start,
                resolved: None,
            })
            .collect();
        let counts: Vec<Series> = vec![
            (
                "2xx",
                COLORS[0],
                series(&|p| f64::from(p.requests - p.non_2xx)),
            ),
            ("non-2xx", COLORS[1], series(&|p| f64::from(p.non_2xx))),
            ("degraded", COLORS[2], series(&|p| f64::from(p.degraded))),
        ];
        page.push_str(&chart(
            &format!(
                "route {}: requests per second ({} in all)",
                r.route, r.requests
            ),
            "req/s",
            x_max,
            &counts,
            &[],
            &marks,
        ));
        let p99: Vec<Series> = vec![("p99", COLORS[3], series(&|p| p.p99_ms))];
        page.push_str(&chart(
            &format!("route {}: p99 latency", r.route),
            "ms",
            x_max,
            &p99,
            &[],
            &marks,
        ));
    }
    page.push_str("<p>Seconds from the first line. Raw findings: <a href=\"diagnosis.json\">diagnosis.json</a>.</p></body></html>\n");
    page
}

/// The terminal summary of one run.
pub fn summary(
    name: &str,
    stats: (PhaseStats, PhaseStats),
    alerts: &[AlertEvent],
    hops: &[Hop],
    checks: &[(String, bool, String)],
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "== {name}");
    let _ = writeln!(
        s,
        "  {:<14} {:>9} {:>9} {:>9} {:>10} {:>10}",
        "phase", "requests", "non-2xx", "degraded", "p99", "max"
    );
    // No fault window row for a run without faults (it would show zeros as data).
    let phases = [("whole run", stats.0), ("fault window", stats.1)];
    for (label, p) in phases
        .into_iter()
        .filter(|(l, p)| *l == "whole run" || p.total > 0)
    {
        let _ = writeln!(
            s,
            "  {label:<14} {:>9} {:>8.2}% {:>8.2}% {:>8.1}ms {:>8.1}ms",
            p.total,
            p.non_2xx_ratio * 100.0,
            p.degraded_ratio * 100.0,
            p.p99_ms,
            p.max_ms
        );
    }
    for a in alerts {
        let _ = writeln!(
            s,
            "  alert {:?} fired at {}s{}",
            a.name,
            a.fired,
            a.resolved
                .map(|r| format!(", resolved at {r}s"))
                .unwrap_or_else(|| ", still firing at the end".into())
        );
    }
    for h in hops {
        if let Some((c, n)) = h.top_causes.first() {
            let _ = writeln!(s, "  top cause at {}: {c} ({n}x)", h.name);
        }
        if let Some((d, start)) = &h.diagnosis {
            if let Some(x) = d.sites.iter().find(|x| x.began.is_some()) {
                let at = x.began.unwrap_or_default() - start;
                let onset = d
                    .routes
                    .iter()
                    .filter_map(|r| r.onset.as_ref().map(|o| (r, o)))
                    .min_by(|(_, a), (_, b)| a.first.total_cmp(&b.first))
                    .map(|(r, o)| {
                        format!(
                            "; route {} {} departed at {:.1}s",
                            r.route,
                            o.metric.as_str(),
                            o.first - start
                        )
                    })
                    .unwrap_or_default();
                let _ = writeln!(
                    s,
                    "  diagnose {}: failures began first at {} at {at:.1}s{onset}",
                    h.name, x.site
                );
            }
        }
        for e in &h.endpoint_events {
            // An egress scope's switch names its scope; anything else is an endpoint.
            let what = match e.subject {
                crate::record::EventSubject::EgressScope => "",
                crate::record::EventSubject::Endpoint => "endpoint ",
            };
            let _ = writeln!(
                s,
                "  {:.2}s {}: {what}{} {} {}",
                e.t, h.name, e.endpoint, e.state, e.detail
            );
        }
    }
    for (d, ok, v) in checks {
        let _ = writeln!(
            s,
            "  [{}] {d} (measured {v})",
            if *ok { "pass" } else { "FAIL" }
        );
    }
    s
}

/// Renders one cell of the side-by-side table from a run's data.
type Cell = fn(&serde_json::Value) -> String;

/// Several runs side by side: fault-window non-2xx, p99, alert, top cause at the gateway.
pub fn side_by_side(results: &[crate::RunResult]) -> String {
    let mut s = String::new();
    let rows: Vec<(&str, Cell)> = vec![
        (
            "non-2xx in fault window",
            (|d| {
                format!(
                    "{:.1} %",
                    d["fault_window"]["non_2xx_ratio"].as_f64().unwrap_or(0.0) * 100.0
                )
            }),
        ),
        (
            "degraded 200s in fault window",
            (|d| {
                format!(
                    "{:.1} %",
                    d["fault_window"]["degraded_ratio"].as_f64().unwrap_or(0.0) * 100.0
                )
            }),
        ),
        (
            "p99 in fault window",
            (|d| {
                format!(
                    "{:.0} ms",
                    d["fault_window"]["p99_ms"].as_f64().unwrap_or(0.0)
                )
            }),
        ),
        (
            "alert fired",
            (|d| {
                if d["alerts"].as_array().is_some_and(|a| !a.is_empty()) {
                    "yes".into()
                } else {
                    "no".into()
                }
            }),
        ),
        (
            "top cause at the gateway",
            (|d| {
                d["hops"]
                    .as_array()
                    .and_then(|h| h.iter().find(|x| x["name"] == "gateway"))
                    .and_then(|g| g["top_causes"][0][0].as_str())
                    .unwrap_or("-")
                    .to_string()
            }),
        ),
        (
            "expectations",
            (|d| {
                let e = d["expectations"].as_array().cloned().unwrap_or_default();
                format!(
                    "{}/{} pass",
                    e.iter().filter(|x| x["passed"] == true).count(),
                    e.len()
                )
            }),
        ),
    ];
    // Columns as wide as their widest cell (no cause is cut), measured in terminal
    // columns so CJK text lines up.
    let table: Vec<Vec<String>> = std::iter::once(
        std::iter::once(String::new())
            .chain(results.iter().map(|r| r.name.clone()))
            .collect(),
    )
    .chain(rows.iter().map(|(label, f)| {
        std::iter::once(label.to_string())
            .chain(results.iter().map(|r| f(&r.data)))
            .collect()
    }))
    .collect();
    let widths: Vec<usize> = (0..=results.len())
        .map(|c| {
            table
                .iter()
                .map(|row| display_width(&row[c]))
                .max()
                .unwrap_or(0)
        })
        .collect();
    s.push('\n');
    for row in &table {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c > 0 {
                line.push_str(" | ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', widths[c] - display_width(cell)));
        }
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}

/// Terminal columns `s` takes: East Asian wide characters take two.
pub fn display_width(s: &str) -> usize {
    s.chars()
        .map(|c| {
            let wide = matches!(
                u32::from(c),
                0x1100..=0x115F
                    | 0x2E80..=0xA4CF
                    | 0xAC00..=0xD7A3
                    | 0xF900..=0xFAFF
                    | 0xFE30..=0xFE4F
                    | 0xFF00..=0xFF60
                    | 0xFFE0..=0xFFE6
                    | 0x20000..=0x3FFFD
            );
            if wide {
                2
            } else {
                1
            }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(name: &str, cause: &str) -> crate::RunResult {
        crate::RunResult {
            name: name.into(),
            summary: String::new(),
            data: serde_json::json!({
                "fault_window": {"non_2xx_ratio": 0.5, "degraded_ratio": 0.0, "p99_ms": 5009.0},
                "alerts": [],
                "hops": [{"name": "gateway", "top_causes": [[cause, 10]]}],
                "expectations": [{"passed": true}],
            }),
            passed: true,
            interrupted: false,
            out: std::path::PathBuf::new(),
        }
    }

    #[test]
    fn chart_ticks_are_round_and_every_marker_is_in_the_legend() {
        assert_eq!(nice_step(60.75), 100.0);
        assert_eq!(nice_step(0.3), 0.5);
        assert_eq!(nice_step(3.6), 5.0);
        assert_eq!(tick_label(150.0, 50.0), "150");
        assert_eq!(tick_label(0.5, 0.5), "0.5");
        let series: Vec<Series> = vec![("2xx", COLORS[0], vec![(0.0, 10.0), (36.0, 221.0)])];
        let alert = AlertEvent {
            name: "non-2xx > 5%".into(),
            fired: 9.0,
            resolved: Some(30.0),
        };
        let svg = chart("t", "req/s", 36.0, &series, &[(8.0, 26.0)], &[alert]);
        // y: peak 243.1 -> step 100, axis 0..300; x: every 5 s.
        for label in [">0<", ">100<", ">200<", ">300<", ">5s<", ">35s<"] {
            assert!(svg.contains(label), "{label} missing");
        }
        assert!(!svg.contains(">60.8<"), "a tick at a non-round value");
        for entry in ["2xx", "fault window", "alert fired", "alert resolved"] {
            assert!(
                svg.contains(&format!(">{entry}</text>")),
                "{entry} not in the legend"
            );
        }
    }

    #[test]
    fn side_by_side_keeps_whole_causes_and_aligns_wide_text() {
        let long = "upstream coupon 127.0.0.1:* (egress): response headers timed out after 300ms (call timeout)";
        let table = side_by_side(&[run("legacy", "下游服务器超时"), run("hopline", long)]);
        assert!(table.contains(long), "{table}");
        assert_eq!(display_width("下游服务器超时"), 14);
        // Every row's column separators sit at the same terminal columns.
        let columns = |line: &str| -> Vec<usize> {
            let mut at = Vec::new();
            let mut w = 0;
            for c in line.chars() {
                if c == '|' {
                    at.push(w);
                }
                w += display_width(&c.to_string());
            }
            at
        };
        let rows: Vec<&str> = table.lines().filter(|l| l.contains('|')).collect();
        assert!(rows.len() >= 6, "{table}");
        let first = columns(rows[0]);
        for r in &rows {
            assert_eq!(columns(r)[..1], first[..1], "{table}");
        }
        let cause_row = rows
            .iter()
            .find(|r| r.starts_with("top cause"))
            .expect("row");
        assert_eq!(columns(cause_row), first, "{table}");
    }
}
