//! Drill scenarios (TOML): services, load schedule, fault timeline, alerts, expectations.

use std::ops::Range;
use std::time::Duration;

use hopline_config::audit::locate;
use hopline_config::json::table_json;
use hopline_config::{parse_duration, Location};
use serde_json::Value;
use toml_edit::ImDocument;

use crate::load::Step;

/// What runs a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `hopline mock --listen {addr:NAME} ARGS`.
    Mock,
    /// `hopline chaos -c CONFIG --api {addr:NAME}`.
    Chaos,
    /// `hopline serve -c CONFIG` (the config sets `listen = "{addr:NAME}"`).
    Hopline,
    /// `legacy-gateway --listen {addr:NAME} ARGS`.
    LegacyGateway,
    /// Any command (`argv`), ready when `{addr:NAME}` accepts connections. Its `config`,
    /// if any, is written to a file whose path replaces `{config}` in `argv`; `{dir}` is the
    /// run's output folder.
    Command,
}

/// One process of the topology.
#[derive(Debug, Clone)]
pub struct Service {
    /// Name (also the placeholder name of its address).
    pub name: String,
    /// Kind.
    pub kind: Kind,
    /// Extra arguments (mock, legacy-gateway) or the whole argv (command).
    pub args: Vec<String>,
    /// Config text (chaos, hopline, command), with placeholders.
    pub config: Option<String>,
    /// Extra environment variables (values may use placeholders).
    pub env: Vec<(String, String)>,
}

/// `[load]`.
#[derive(Debug, Clone)]
pub struct Load {
    /// Target service.
    pub target: String,
    /// Paths, round robin.
    pub paths: Vec<String>,
    /// Schedule.
    pub schedule: Vec<Step>,
    /// Client timeout.
    pub client_timeout: Duration,
    /// Outstanding requests at most.
    pub max_in_flight: usize,
}

/// `[[faults]]`: a toxic on a chaos proxy from `at` until `until`.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Start.
    pub at: Duration,
    /// End (the end of the run when absent).
    pub until: Option<Duration>,
    /// The chaos service.
    pub service: String,
    /// The proxy on it.
    pub proxy: String,
    /// The toxic, in Toxiproxy's JSON shape.
    pub toxic: Value,
}

/// What an alert watches (on the load generator's view).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Non-2xx (and abandoned, failed) share of requests.
    Non2xxRatio,
    /// Share of 200s carrying `x-hopline-degraded`.
    DegradedRatio,
    /// 99th percentile latency in ms.
    P99Ms,
}

/// `[[alerts]]`: fires while `metric` over the last `window` is above `above` with at
/// least `min_requests` requests (the incident's rule: non-2xx > 5 %).
#[derive(Debug, Clone)]
pub struct Alert {
    /// Name.
    pub name: String,
    /// Metric.
    pub metric: Metric,
    /// Threshold.
    pub above: f64,
    /// Window.
    pub window: Duration,
    /// Minimum requests in the window.
    pub min_requests: u64,
}

/// The part of the run an expectation looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The whole run.
    All,
    /// While any fault is active.
    Fault,
}

/// One `[[expect]]`.
#[derive(Debug, Clone)]
pub enum Expect {
    /// `metric` in `phase` below / above a bound.
    Bound {
        /// Phase.
        phase: Phase,
        /// Metric.
        metric: Metric,
        /// Upper bound.
        below: Option<f64>,
        /// Lower bound.
        above: Option<f64>,
    },
    /// Alert `name` fired (or not).
    Alert {
        /// Alert name.
        name: String,
        /// Expected.
        fired: bool,
    },
    /// The most frequent cause logged by service `hop` during faults contains `contains`.
    TopCause {
        /// Service whose log is read.
        hop: String,
        /// Substring.
        contains: String,
    },
}

/// A parsed scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Name.
    pub name: String,
    /// Run time.
    pub duration: Duration,
    /// Seed for chaos.
    pub seed: u64,
    /// Services, started in order.
    pub services: Vec<Service>,
    /// Load.
    pub load: Load,
    /// Faults.
    pub faults: Vec<Fault>,
    /// Alerts.
    pub alerts: Vec<Alert>,
    /// Expectations.
    pub expect: Vec<Expect>,
}

/// A scenario that cannot be used: every problem as `line:col: key `k`: what`.
#[derive(Debug, thiserror::Error)]
#[error("invalid scenario {name}:{}", problems.iter().map(|p| format!("\n  {name}:{p}")).collect::<String>())]
pub struct ScenarioError {
    /// File name.
    pub name: String,
    /// Problems.
    pub problems: Vec<String>,
}

struct Cx<'a> {
    text: &'a str,
    problems: Vec<String>,
}

impl Cx<'_> {
    fn fail(&mut self, path: &[&str], msg: impl std::fmt::Display) {
        let span: Option<Range<usize>> = locate(self.text, path);
        let l = Location::of(self.text, span.map_or(0, |s| s.start));
        let key = path.iter().fold(String::new(), |acc, p| {
            if p.parse::<usize>().is_ok() {
                format!("{acc}[{p}]")
            } else if acc.is_empty() {
                p.to_string()
            } else {
                format!("{acc}.{p}")
            }
        });
        self.problems
            .push(format!("{}:{}: key `{key}`: {msg}", l.line, l.column));
    }

    fn duration(&mut self, v: &Value, path: &[&str]) -> Option<Duration> {
        match v.as_str().map(parse_duration) {
            Some(Ok(d)) => Some(d),
            Some(Err(e)) => {
                self.fail(path, e);
                None
            }
            None => {
                self.fail(path, "expected a duration string like \"10s\"");
                None
            }
        }
    }
}

fn known(cx: &mut Cx, obj: &Value, path: &[&str], keys: &[&str]) {
    if let Some(o) = obj.as_object() {
        for k in o.keys() {
            if !keys.contains(&k.as_str()) {
                let mut p = path.to_vec();
                p.push(k);
                cx.fail(&p, "unknown key");
            }
        }
    }
}

fn metric(cx: &mut Cx, v: &Value, path: &[&str]) -> Option<Metric> {
    match v.as_str() {
        Some("non_2xx_ratio") => Some(Metric::Non2xxRatio),
        Some("degraded_ratio") => Some(Metric::DegradedRatio),
        Some("p99_ms") => Some(Metric::P99Ms),
        _ => {
            cx.fail(
                path,
                "expected \"non_2xx_ratio\", \"degraded_ratio\" or \"p99_ms\"",
            );
            None
        }
    }
}

/// The elements of a JSON array with their index as text (for key paths).
fn entries(v: &Value) -> Vec<(String, Value)> {
    v.as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, x)| (i.to_string(), x.clone()))
        .collect()
}

/// Parses scenario text; `name` is used in messages.
pub fn parse(text: &str, name: &str) -> Result<Scenario, ScenarioError> {
    let err = |problems| ScenarioError {
        name: name.to_string(),
        problems,
    };
    let doc = ImDocument::parse(text.to_string()).map_err(|e| {
        let l = Location::of(text, e.span().map_or(0, |s| s.start));
        err(vec![format!(
            "{}:{}: TOML syntax: {}",
            l.line,
            l.column,
            e.message().trim()
        )])
    })?;
    let root = table_json(doc.as_table());
    let mut cx = Cx {
        text,
        problems: Vec::new(),
    };
    known(
        &mut cx,
        &root,
        &[],
        &[
            "name", "duration", "seed", "services", "load", "faults", "alerts", "expect",
        ],
    );
    let sname = root["name"].as_str().unwrap_or(name).to_string();
    let duration = cx
        .duration(&root["duration"], &["duration"])
        .unwrap_or(Duration::from_secs(30));
    let seed = root["seed"].as_u64().unwrap_or(1);

    let mut services = Vec::new();
    for (idx, s) in entries(&root["services"]) {
        let s = &s;
        let p = ["services", idx.as_str()];
        known(
            &mut cx,
            s,
            &p,
            &["name", "kind", "args", "argv", "config", "env"],
        );
        let Some(sn) = s["name"].as_str() else {
            cx.fail(&p, "missing name");
            continue;
        };
        let kind = match s["kind"].as_str() {
            Some("mock") => Kind::Mock,
            Some("chaos") => Kind::Chaos,
            Some("hopline") => Kind::Hopline,
            Some("legacy-gateway") => Kind::LegacyGateway,
            Some("command") => Kind::Command,
            _ => {
                cx.fail(
                    &["services", &idx, "kind"],
                    "expected mock, chaos, hopline, legacy-gateway or command",
                );
                continue;
            }
        };
        let list = if kind == Kind::Command {
            &s["argv"]
        } else {
            &s["args"]
        };
        let args: Vec<String> = list
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let config = s["config"].as_str().map(String::from);
        if matches!(kind, Kind::Chaos | Kind::Hopline) && config.is_none() {
            cx.fail(&p, "chaos and hopline services need `config`");
        }
        if kind == Kind::Command && args.is_empty() {
            cx.fail(&p, "command services need `argv`");
        }
        let env = s["env"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        services.push(Service {
            name: sn.to_string(),
            kind,
            args,
            config,
            env,
        });
    }
    let names: Vec<String> = services.iter().map(|s| s.name.clone()).collect();

    let l = &root["load"];
    known(
        &mut cx,
        l,
        &["load"],
        &[
            "target",
            "path",
            "paths",
            "schedule",
            "client_timeout",
            "max_in_flight",
        ],
    );
    let target = l["target"].as_str().unwrap_or_default().to_string();
    if !names.contains(&target) {
        cx.fail(&["load", "target"], format!("no service named {target:?}"));
    }
    let mut paths: Vec<String> = l["paths"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if let Some(p) = l["path"].as_str() {
        paths.push(p.to_string());
    }
    if paths.is_empty() {
        cx.fail(&["load"], "set `path` or `paths`");
    }
    let mut schedule = Vec::new();
    for (idx, st) in entries(&l["schedule"]) {
        let st = &st;
        let at = cx
            .duration(&st["at"], &["load", "schedule", &idx])
            .unwrap_or_default();
        let rate = st["rate"].as_f64().filter(|r| *r >= 0.0);
        if rate.is_none() {
            cx.fail(
                &["load", "schedule", &idx],
                "rate must be a non-negative number",
            );
        }
        schedule.push(Step {
            at,
            rate: rate.unwrap_or(0.0),
            ramp: st["ramp"].as_bool().unwrap_or(false),
        });
    }
    if schedule.is_empty() {
        cx.fail(
            &["load", "schedule"],
            "needs at least one { at, rate } step",
        );
    }
    let client_timeout = match &l["client_timeout"] {
        Value::Null => Duration::from_secs(10),
        v => cx
            .duration(v, &["load", "client_timeout"])
            .unwrap_or(Duration::from_secs(10)),
    };
    let load = Load {
        target,
        paths,
        schedule,
        client_timeout,
        max_in_flight: l["max_in_flight"].as_u64().unwrap_or(10_000) as usize,
    };

    let mut faults = Vec::new();
    for (idx, f) in entries(&root["faults"]) {
        let f = &f;
        known(
            &mut cx,
            f,
            &["faults", &idx],
            &["at", "until", "service", "proxy", "toxic"],
        );
        let at = cx
            .duration(&f["at"], &["faults", &idx, "at"])
            .unwrap_or_default();
        let until = match &f["until"] {
            Value::Null => None,
            v => cx.duration(v, &["faults", &idx, "until"]),
        };
        let service = f["service"].as_str().unwrap_or_default().to_string();
        if !services
            .iter()
            .any(|s| s.name == service && s.kind == Kind::Chaos)
        {
            cx.fail(
                &["faults", &idx, "service"],
                format!("no chaos service named {service:?}"),
            );
        }
        if let Err(e) = hopline_chaos_toxic_check(&f["toxic"]) {
            cx.fail(&["faults", &idx, "toxic"], e);
        }
        faults.push(Fault {
            at,
            until,
            service,
            proxy: f["proxy"].as_str().unwrap_or_default().to_string(),
            toxic: f["toxic"].clone(),
        });
    }

    let mut alerts = Vec::new();
    for (idx, a) in entries(&root["alerts"]) {
        let a = &a;
        known(
            &mut cx,
            a,
            &["alerts", &idx],
            &["name", "metric", "above", "window", "min_requests"],
        );
        let m = metric(&mut cx, &a["metric"], &["alerts", &idx, "metric"]);
        let window = cx
            .duration(&a["window"], &["alerts", &idx, "window"])
            .unwrap_or(Duration::from_secs(10));
        if let Some(metric) = m {
            alerts.push(Alert {
                name: a["name"].as_str().unwrap_or("alert").to_string(),
                metric,
                above: a["above"].as_f64().unwrap_or(0.05),
                window,
                min_requests: a["min_requests"].as_u64().unwrap_or(1),
            });
        }
    }

    let mut expect = Vec::new();
    for (idx, e) in entries(&root["expect"]) {
        let e = &e;
        known(
            &mut cx,
            e,
            &["expect", &idx],
            &[
                "phase",
                "metric",
                "below",
                "above",
                "alert",
                "fired",
                "top_cause_of",
                "contains",
            ],
        );
        let phase = match e["phase"].as_str() {
            None | Some("all") => Phase::All,
            Some("fault") => Phase::Fault,
            Some(_) => {
                cx.fail(&["expect", &idx, "phase"], "expected \"all\" or \"fault\"");
                Phase::All
            }
        };
        if let Some(name) = e["alert"].as_str() {
            if !alerts.iter().any(|a| a.name == name) {
                cx.fail(
                    &["expect", &idx, "alert"],
                    format!("no alert named {name:?}"),
                );
            }
            expect.push(Expect::Alert {
                name: name.to_string(),
                fired: e["fired"].as_bool().unwrap_or(true),
            });
        } else if let Some(hop) = e["top_cause_of"].as_str() {
            if !names.iter().any(|n| n == hop) {
                cx.fail(
                    &["expect", &idx, "top_cause_of"],
                    format!("no service named {hop:?}"),
                );
            }
            expect.push(Expect::TopCause {
                hop: hop.to_string(),
                contains: e["contains"].as_str().unwrap_or_default().to_string(),
            });
        } else if let Some(m) = metric(&mut cx, &e["metric"], &["expect", &idx, "metric"]) {
            expect.push(Expect::Bound {
                phase,
                metric: m,
                below: e["below"].as_f64(),
                above: e["above"].as_f64(),
            });
        }
    }

    if !cx.problems.is_empty() {
        return Err(err(cx.problems));
    }
    Ok(Scenario {
        name: sname,
        duration,
        seed,
        services,
        load,
        faults,
        alerts,
        expect,
    })
}

/// A toxic must at least name its type; the chaos API validates the rest at run time.
fn hopline_chaos_toxic_check(v: &Value) -> Result<(), &'static str> {
    match v.get("type").and_then(Value::as_str) {
        Some(_) => Ok(()),
        None => Err(
            "toxic needs a `type` (e.g. { type = \"latency\", attributes = { latency = 100 } })",
        ),
    }
}

/// Every `{addr:NAME}` / `{port:NAME}` name in `text`.
pub fn placeholders(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for kind in ["{addr:", "{port:"] {
        let mut rest = text;
        while let Some(i) = rest.find(kind) {
            let after = &rest[i + kind.len()..];
            if let Some(end) = after.find('}') {
                let name = after[..end].to_string();
                if !out.contains(&name) {
                    out.push(name);
                }
                rest = &after[end..];
            } else {
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_found() {
        assert_eq!(
            placeholders("a {addr:x} b {port:y} {addr:x}"),
            vec!["x".to_string(), "y".to_string()]
        );
    }

    #[test]
    fn errors_name_line_and_key() {
        let e = parse("duration = \"5\"\n[load]\ntarget = \"nope\"\npath = \"/\"\nschedule = [{ at = \"0s\", rate = 10 }]\n[[faults]]\nat = \"1s\"\nservice = \"x\"\ntoxic = { name = \"t\" }\n", "s.toml")
            .expect_err("invalid");
        let text = e.to_string();
        assert!(
            text.contains("s.toml:1:1: key `duration`: missing unit"),
            "{text}"
        );
        assert!(
            text.contains("key `load.target`: no service named \"nope\""),
            "{text}"
        );
        assert!(
            text.contains("key `faults[0].service`: no chaos service"),
            "{text}"
        );
        assert!(
            text.contains("key `faults[0].toxic`: toxic needs a `type`"),
            "{text}"
        );
    }
}
