//! `hopline diagnose` on logs with a known story: synthetic logs with background noise and
//! a known onset, and the logs a drill records at test time.

mod common;

use std::fmt::Write as _;
use std::process::Command;

use common::*;
use serde_json::Value;

fn ts(secs: f64) -> String {
    // 2026-11-28T14:00:00Z plus `secs`.
    let base = 1_795_874_400.0;
    let t = base + secs;
    let whole = t.floor() as i64;
    let ms = ((t - t.floor()) * 1000.0).round() as i64;
    let (h, m, s) = (whole % 86_400 / 3600, whole % 3600 / 60, whole % 60);
    format!("2026-11-28T{h:02}:{m:02}:{s:02}.{ms:03}Z")
}

fn diagnose(logs: &[&std::path::Path], extra: &[&str]) -> (Option<i32>, Value, String) {
    let mut cmd = Command::new(bin());
    cmd.arg("diagnose")
        .args(logs)
        .args(["--format", "json"])
        .args(extra);
    let o = cmd.output().expect("diagnose");
    let v = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    (
        o.status.code(),
        v,
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// 60 s at 50 req/s over two instances: a steady 4 % of 404s throughout; from 30 s the
/// coupon upstream (egress) fails to connect for 40 % of requests, and from 33 s clients
/// leave (499) while waiting on coin's response headers.
fn synthetic() -> (std::path::PathBuf, std::path::PathBuf) {
    let (mut a, mut b) = (String::new(), String::new());
    for i in 0..3000u32 {
        let t = f64::from(i) / 50.0;
        let out = if i % 2 == 0 { &mut a } else { &mut b };
        let line = if i % 25 == 0 {
            // Background: a client asking for what does not exist.
            format!(
                r#"{{"ts":"{}","route":"(none)","status":404,"flags":["NR"],"cause":"no route for path","upstream":null,"zone":null,"phase":null,"duration_ms":0.1,"degraded":[]}}"#,
                ts(t)
            )
        } else if t >= 30.0 && i % 5 < 2 {
            format!(
                r#"{{"ts":"{}","route":"pay","status":502,"flags":["UF"],"cause":"upstream coupon 10.0.0.7:{} (egress): connect timed out after 200ms (connect_timeout)","upstream":"coupon","zone":"egress","phase":"connect","duration_ms":200.4,"degraded":[]}}"#,
                ts(t),
                40000 + i
            )
        } else if t >= 33.0 && i % 5 == 2 {
            format!(
                r#"{{"ts":"{}","route":"pay","status":499,"flags":["DC"],"cause":"client closed the connection after 5s while waiting on upstream coin 10.0.0.8:80 (internal) response headers","upstream":"coin","zone":"internal","phase":"response_headers","duration_ms":5000.2,"degraded":[]}}"#,
                ts(t)
            )
        } else {
            format!(
                r#"{{"ts":"{}","route":"pay","status":200,"flags":[],"cause":null,"upstream":"coupon","zone":"egress","phase":null,"duration_ms":3.5,"degraded":[]}}"#,
                ts(t)
            )
        };
        let _ = writeln!(out, "{line}");
    }
    // An event line and a line of something else: skipped, not fatal.
    let _ = writeln!(
        a,
        r#"{{"ts":"{}","event":"endpoint","upstream":"coupon","endpoint":"10.0.0.7:443","state":"ejected","detail":"x"}}"#,
        ts(31.0)
    );
    let _ = writeln!(b, "GET / 200 nothing like JSON");
    (temp_file("gw-a.log", &a), temp_file("gw-b.log", &b))
}

#[test]
fn a_known_onset_is_found_through_background_noise_across_instances() {
    let (a, b) = synthetic();
    let (code, v, err) = diagnose(&[&a, &b], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(v["lines"], 3000, "{v:#}");
    assert_eq!(v["skipped"], 2);
    assert!(err.contains("2 line(s) were not access records"), "{err}");
    // When: the pay route, within 2 s of 30 s; the 4 % of 404s (route "(none)") is not one.
    let pay = v["routes"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["route"] == "pay"))
        .expect("pay");
    assert_eq!(pay["onset"]["metric"], "non-2xx share", "{pay:#}");
    let onset = pay["onset"]["at"].as_str().expect("at");
    assert!(
        ["14:00:30", "14:00:31", "14:00:32"]
            .iter()
            .any(|s| onset.contains(s)),
        "{onset}"
    );
    let none = v["routes"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["route"] == "(none)"))
        .expect("(none)");
    assert!(none["onset"].is_null(), "{none:#}");
    // Where first: coupon, egress, connect — 3 s before the 499s.
    assert_eq!(
        (
            &v["sites"][0]["upstream"],
            &v["sites"][0]["zone"],
            &v["sites"][0]["phase"]
        ),
        (
            &Value::from("coupon"),
            &Value::from("egress"),
            &Value::from("connect")
        ),
        "{v:#}"
    );
    assert!(v["sites"][0]["began"]
        .as_str()
        .is_some_and(|b| b.contains("14:00:30")));
    assert!(
        v["first_499"]
            .as_str()
            .is_some_and(|b| b.contains("14:00:33")),
        "{v:#}"
    );
    // What: the connect timeouts, ports folded; what the 499s waited on.
    assert!(v["causes"][0]["cause"]
        .as_str()
        .is_some_and(|c| c.contains("10.0.0.7:* (egress): connect timed out")));
    assert_eq!(v["waits"][0]["upstream"], "coin");
    assert_eq!(v["waits"][0]["phase"], "response_headers");
    // Who: the 499s pinned at 5 s were cut by the client (or a front), not by hopline.
    assert!(
        (pay["ceiling"]["at_ms"].as_f64().unwrap_or(0.0) - 5000.0).abs() <= 10.0,
        "{pay:#}"
    );
    assert!(pay["ceiling"]["cut_by_client"].as_u64().unwrap_or(0) > 0);
    // The text summary says the same in a few lines.
    let o = Command::new(bin())
        .args(["diagnose"])
        .arg(&a)
        .arg(&b)
        .output()
        .expect("text");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("WHERE  first: coupon (egress) connect"),
        "{text}"
    );
    assert!(
        text.contains("cut by the client or something in front"),
        "{text}"
    );
    // --format html: the findings and every route's timeline, with its onset marked.
    let dir = a.with_file_name("diagnose-html");
    let o = Command::new(bin())
        .args(["diagnose", "--format", "html", "--out"])
        .arg(&dir)
        .arg(&a)
        .arg(&b)
        .output()
        .expect("html");
    assert!(o.status.success());
    let page = std::fs::read_to_string(dir.join("index.html")).expect("index.html");
    assert_eq!(page.matches("<svg").count(), 4, "two charts per route");
    assert!(page.contains("onset: non-2xx share") && page.contains("WHERE  first"));
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("diagnosis.json")).expect("json"))
            .expect("diagnosis.json");
    assert_eq!(saved["lines"], 3000);
    // --since / --until narrow the window: before the fault, nothing departs.
    let (_, early, _) = diagnose(&[&a, &b], &["--until", "2026-11-28T14:00:29Z"]);
    assert!(
        early["routes"]
            .as_array()
            .is_some_and(|r| r.iter().all(|r| r["onset"].is_null())),
        "{early:#}"
    );
}

#[test]
fn a_drill_log_is_diagnosed_to_its_fault() {
    // 14 s at 100 req/s; from 7 s the path to the egress service is 400 ms slow, past
    // the 150 ms attempt timeout.
    let text = r#"name = "diag"
duration = "14s"
[[services]]
name = "svc"
kind = "mock"
args = ["--quiet"]
[[services]]
name = "nat"
kind = "chaos"
config = """
[[proxies]]
name = "p"
listen = "{addr:svc_nat}"
upstream = "{addr:svc}"
"""
[[services]]
name = "gw"
kind = "hopline"
config = """
[server]
listen = "{addr:gw}"
[log]
access = "stdout"
[upstreams.svc]
endpoints = ["{addr:svc_nat}"]
zone = "egress"
timeout = "150ms"
[[routes]]
name = "r"
path_prefix = "/"
upstream = "svc"
timeout = "200ms"
"""
[load]
target = "gw"
path = "/x"
schedule = [{ at = "0s", rate = 100 }]
[[faults]]
at = "7s"
service = "nat"
proxy = "p"
toxic = { type = "latency", attributes = { latency = 400 } }
"#;
    let path = temp_file("diag.drill.toml", text);
    let out = path.with_file_name("report");
    let o = Command::new(bin())
        .args(["drill", path.to_str().expect("utf8"), "--out"])
        .arg(&out)
        .output()
        .expect("drill");
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let data: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("diag/data.json")).expect("data.json"),
    )
    .expect("json");
    let (code, v, err) = diagnose(&[&out.join("diag/gw.log")], &[]);
    assert_eq!(code, Some(0), "{err}");
    // The fault began 7 s into the run; the log's first line is the run's start.
    let start = v["from"].as_str().expect("from").to_string();
    let onset = v["routes"][0]["onset"]["at"]
        .as_str()
        .expect("an onset")
        .to_string();
    let secs = |s: &str| {
        let t = s.split('T').nth(1).unwrap_or("");
        let p: Vec<f64> = t
            .trim_end_matches('Z')
            .split(':')
            .filter_map(|x| x.parse().ok())
            .collect();
        p[0] * 3600.0 + p[1] * 60.0 + p[2]
    };
    let after = secs(&onset) - secs(&start);
    assert!(
        (5.0..=9.0).contains(&after),
        "onset {after:.1} s into the run: {v:#}\n{data}"
    );
    assert_eq!(v["sites"][0]["upstream"], "svc", "{v:#}");
    assert_eq!(v["sites"][0]["zone"], "egress");
    assert_eq!(v["sites"][0]["phase"], "response_headers");
}

#[test]
fn resets_on_pooled_connections_after_an_idle_gap_are_a_keep_alive_mismatch() {
    let mut log = String::new();
    for i in 0..200u32 {
        let t = f64::from(i) / 10.0;
        // Every 10th request reuses a connection idle for a minute and more: closed under it.
        let line = if i % 10 == 0 {
            format!(
                r#"{{"ts":"{}","route":"r","status":502,"flags":["UC"],"cause":"upstream coin 10.0.0.8:80 (internal): connection closed by the upstream before the response headers","upstream":"coin","zone":"internal","phase":"response_headers","upstream_reused":true,"upstream_idle_ms":{},"duration_ms":0.4,"degraded":[]}}"#,
                ts(t),
                61_000 + i * 10
            )
        } else {
            format!(
                r#"{{"ts":"{}","route":"r","status":200,"flags":[],"cause":null,"upstream":"coin","zone":"internal","phase":null,"upstream_reused":true,"upstream_idle_ms":120.0,"duration_ms":2.0,"degraded":[]}}"#,
                ts(t)
            )
        };
        let _ = writeln!(log, "{line}");
    }
    let path = temp_file("idle.log", &log);
    let (code, v, err) = diagnose(&[&path], &[]);
    assert_eq!(code, Some(0), "{err}");
    let m = &v["idle_mismatches"][0];
    assert_eq!(
        (m["upstream"].as_str(), m["resets"].as_u64()),
        (Some("coin"), Some(20)),
        "{v:#}"
    );
    assert!(m["min_idle_ms"].as_f64().unwrap_or(0.0) >= 61_000.0, "{m}");
    let o = Command::new(bin())
        .arg("diagnose")
        .arg(&path)
        .output()
        .expect("text");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("a keep-alive idle mismatch: set upstreams.coin.pool_idle_timeout"),
        "{text}"
    );
}
