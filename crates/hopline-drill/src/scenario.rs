//! Drill scenarios (TOML): services, load schedule, fault timeline, alerts, expectations.

use std::time::Duration;

use hopline_config::walk::{Cx, Tbl};
use hopline_config::{Problem, ProblemKind};
use serde_json::Value;

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
    /// The host it runs on (`network = "kernel"`; ignored on loopback).
    pub host: Option<String>,
}

/// `network`: where the services run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetworkMode {
    /// `"loopback"`: every service on 127.0.0.1 (default).
    #[default]
    Loopback,
    /// `"kernel"`: every host a network namespace, joined by veth pairs through a router
    /// that is the NAT gateway for the `outside` hosts (needs root, `ip` and `nft`).
    Kernel,
}

/// `[[hosts]]`: a machine of a kernel-network drill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Name (services say `host = NAME`).
    pub name: String,
    /// Behind the NAT from the others' view: connections to it are masqueraded.
    pub outside: bool,
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
    /// What the load generator speaks: `http/1.1` (default), `h2` or `grpc`.
    pub protocol: crate::load::Protocol,
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
    /// What the fault does: a chaos toxic, or a kernel-network fault.
    pub kind: FaultKind,
}

/// `[[faults]] kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FaultKind {
    /// A toxic on a chaos proxy (`service`, `proxy`, `toxic`).
    #[default]
    Toxic,
    /// `"syn_rate_limit"`: new connections to `service` over `rate` per second have their
    /// SYNs dropped at the NAT (connect timeouts).
    SynRateLimit {
        /// Connections per second let through.
        rate: u32,
    },
    /// `"loss"`: `percent` of the packets to and from `service` dropped at the NAT.
    Loss {
        /// Share dropped.
        percent: u8,
    },
    /// `"blackhole"`: every packet to and from `service` dropped at the NAT.
    Blackhole,
    /// `"snat_ports"`: the NAT's source port range shrunk to `from..=to` (port exhaustion).
    SnatPorts {
        /// First port.
        from: u16,
        /// Last port.
        to: u16,
    },
    /// `"conntrack_expiry"`: established connections forgotten by the NAT after `seconds`
    /// idle; their late packets meet a reset.
    ConntrackExpiry {
        /// Idle seconds.
        seconds: u32,
    },
    /// `"stop"`: `service` stopped (SIGSTOP) at `at`, continued (SIGCONT) at `until`.
    Stop,
}

impl FaultKind {
    /// Needs `network = "kernel"`.
    pub fn kernel(self) -> bool {
        !matches!(self, FaultKind::Toxic | FaultKind::Stop)
    }

    /// As written in a scenario.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Toxic => "toxic",
            FaultKind::SynRateLimit { .. } => "syn_rate_limit",
            FaultKind::Loss { .. } => "loss",
            FaultKind::Blackhole => "blackhole",
            FaultKind::SnatPorts { .. } => "snat_ports",
            FaultKind::ConntrackExpiry { .. } => "conntrack_expiry",
            FaultKind::Stop => "stop",
        }
    }
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
    /// Service `hop` logged an event `state` (an endpoint's `ejected`, `returned`, ...; a
    /// shared egress scope's `local`, `shared`): within `within` of its first failure in a
    /// fault window (or of the first fault's start, `from = "fault_start"`), or after the
    /// faults end.
    Event {
        /// Service whose log is read.
        hop: String,
        /// The event's state.
        state: String,
        /// At most this long after the hop's first failure in a fault window.
        within: Option<Duration>,
        /// `within` counts from the first fault's start instead.
        from_fault_start: bool,
        /// After the last fault ended.
        after_fault: bool,
    },
    /// The sum of a Prometheus series over the `/metrics` of addresses `at` (a chaos
    /// service's API, a gateway's admin listener), scraped when the load ends.
    Scrape {
        /// Address names (`{addr:NAME}`).
        at: Vec<String>,
        /// The series: a name, optionally with the start of its labels as printed.
        series: String,
        /// Upper bound.
        below: Option<f64>,
        /// Lower bound.
        above: Option<f64>,
    },
    /// `hopline diagnose` on service `hop`'s log names `upstream` (and `phase`, if given)
    /// as where failures began first.
    DiagnoseFirst {
        /// Service whose log is read.
        hop: String,
        /// The upstream expected first.
        upstream: String,
        /// The phase expected (`connect`, `tls`, `response_headers`, ...).
        phase: Option<String>,
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
    /// Where the services run.
    pub network: NetworkMode,
    /// Hosts (kernel network).
    pub hosts: Vec<Host>,
    /// The NAT's source port range (kernel network). Default 1024-65535.
    pub nat_ports: (u16, u16),
}

/// A scenario that cannot be used: every problem with its line, column and key.
#[derive(Debug, thiserror::Error)]
#[error("invalid scenario {name}:{}", problems.iter().map(|p| format!("\n  {name}:{p}")).collect::<String>())]
pub struct ScenarioError {
    /// File name.
    pub name: String,
    /// Problems, in file order.
    pub problems: Vec<Problem>,
}

/// Parses scenario text; `name` is used in messages. Read with the same walker as the
/// gateway config: unknown keys, missing keys, wrong types and bad durations are all
/// reported at once, each with its line, column and key.
pub fn parse(text: &str, name: &str) -> Result<Scenario, ScenarioError> {
    let mut cx = Cx::new(text);
    let scenario = cx.parse(text).map(|doc| {
        let mut root = Tbl::root(&doc);
        let s = scenario(&mut cx, &mut root, name, text);
        root.finish(&mut cx);
        s
    });
    match (cx.finish(), scenario) {
        (Ok(()), Some(s)) => Ok(s),
        (r, _) => Err(ScenarioError {
            name: name.to_string(),
            problems: r.err().unwrap_or_default(),
        }),
    }
}

fn scenario(cx: &mut Cx, root: &mut Tbl, name: &str, text: &str) -> Scenario {
    let sname = root.str(cx, "name").map_or(name, |(s, _)| s).to_string();
    let duration = root.duration(cx, "duration", Duration::from_secs(30));
    let seed = root.uint(cx, "seed", 1, 0, i64::MAX as u64);
    let services: Vec<Service> = root
        .array(cx, "services")
        .into_iter()
        .filter_map(|t| service(cx, t, text))
        .collect();
    let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
    let load = match root.sub(cx, "load") {
        Some(t) => load(cx, t, &names),
        None => {
            cx.report(root.span(), "load".into(), ProblemKind::Missing);
            Load {
                target: String::new(),
                paths: Vec::new(),
                schedule: Vec::new(),
                client_timeout: Duration::ZERO,
                max_in_flight: 0,
                protocol: crate::load::Protocol::Http1,
            }
        }
    };
    let network = root.choice(
        cx,
        "network",
        ("loopback", NetworkMode::Loopback),
        &[("kernel", NetworkMode::Kernel)],
    );
    let hosts: Vec<Host> = root
        .array(cx, "hosts")
        .into_iter()
        .filter_map(|mut t| {
            let name = t.req_str(cx, "name").map(|(n, _)| n.to_string());
            let outside = t.choice(cx, "side", ("inside", false), &[("outside", true)]);
            t.finish(cx);
            Some(Host {
                name: name?,
                outside,
            })
        })
        .collect();
    for svc in &services {
        if let Some(h) = &svc.host {
            if !hosts.iter().any(|x| &x.name == h) {
                let what = format!(
                    "service {} is on host {h:?}, which is not in [[hosts]]",
                    svc.name
                );
                cx.report(
                    root.value_span("hosts"),
                    "hosts".into(),
                    ProblemKind::Invalid(what),
                );
            }
        }
    }
    let nat_ports = root
        .sub(cx, "nat")
        .and_then(|mut t| {
            let r = t
                .str(cx, "ports")
                .and_then(|(p, span)| match port_range(p) {
                    Some(r) => Some(r),
                    None => {
                        cx.report(
                            span,
                            t.key_path("ports"),
                            ProblemKind::Invalid(
                                "expected \"FROM-TO\", e.g. \"40000-40999\"".into(),
                            ),
                        );
                        None
                    }
                });
            t.finish(cx);
            r
        })
        .unwrap_or((1024, 65535));
    let faults = root
        .array(cx, "faults")
        .into_iter()
        .filter_map(|t| fault(cx, t, &services, network))
        .collect();
    let alerts: Vec<Alert> = root
        .array(cx, "alerts")
        .into_iter()
        .filter_map(|t| alert(cx, t))
        .collect();
    // Every address a scenario names: its services' and its placeholders'.
    let mut addr_names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    for svc in &services {
        for text in svc.args.iter().chain(svc.config.iter()) {
            for n in placeholders(text) {
                if !addr_names.contains(&n) {
                    addr_names.push(n);
                }
            }
        }
    }
    let expect = root
        .array(cx, "expect")
        .into_iter()
        .filter_map(|t| expectation(cx, t, &alerts, &names, &addr_names))
        .collect();
    Scenario {
        name: sname,
        duration,
        seed,
        services,
        load,
        faults,
        alerts,
        expect,
        network,
        hosts,
        nat_ports,
    }
}

/// `[[services]]`.
fn service(cx: &mut Cx, mut t: Tbl, text: &str) -> Option<Service> {
    let name = t.req_str(cx, "name");
    let kind = t.req_str(cx, "kind").and_then(|(k, span)| {
        let kind = match k {
            "mock" => Kind::Mock,
            "chaos" => Kind::Chaos,
            "hopline" => Kind::Hopline,
            "legacy-gateway" => Kind::LegacyGateway,
            "command" => Kind::Command,
            _ => {
                let what = "expected mock, chaos, hopline, legacy-gateway or command";
                cx.report(span, t.key_path("kind"), ProblemKind::Invalid(what.into()));
                return None;
            }
        };
        Some(kind)
    });
    let args = t.str_list(cx, "args");
    let argv = t.str_list(cx, "argv");
    let host = t.str(cx, "host").map(|(h, _)| h.to_string());
    let config_span = t.str(cx, "config");
    let config = config_span.as_ref().map(|(c, _)| c.to_string());
    let env = t
        .str_map(cx, "env")
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let kind = kind?;
    if let (Kind::Hopline, Some((config, Some(span)))) = (kind, &config_span) {
        check_hopline_config(cx, &t, text, config, span.start);
    }
    let (list, key, other) = if kind == Kind::Command {
        (argv, "argv", args.is_some().then_some("args"))
    } else {
        (args, "args", argv.is_some().then_some("argv"))
    };
    if let Some(other) = other {
        let what = format!("this kind of service takes `{key}`, not `{other}`");
        cx.report(
            t.value_span(other),
            t.key_path(other),
            ProblemKind::Invalid(what),
        );
    }
    let args: Vec<String> = list
        .unwrap_or_default()
        .into_iter()
        .map(|(a, _)| a.to_string())
        .collect();
    if matches!(kind, Kind::Chaos | Kind::Hopline) && config.is_none() {
        let what = "chaos and hopline services need `config`";
        cx.report(
            t.span(),
            t.key_path("config"),
            ProblemKind::Invalid(what.into()),
        );
    }
    if kind == Kind::Command && args.is_empty() {
        let what = "command services need `argv`";
        cx.report(
            t.span(),
            t.key_path("argv"),
            ProblemKind::Invalid(what.into()),
        );
    }
    t.finish(cx);
    Some(Service {
        name: name?.0.to_string(),
        kind,
        args,
        config,
        env,
        host,
    })
}

/// `[load]`.
fn load(cx: &mut Cx, mut t: Tbl, services: &[&str]) -> Load {
    let target = t.req_str(cx, "target").map_or("", |(s, span)| {
        if !services.contains(&s) {
            let what = format!("no service named {s:?}");
            cx.report(span, t.key_path("target"), ProblemKind::Invalid(what));
        }
        s
    });
    let mut paths: Vec<String> = t
        .str_list(cx, "paths")
        .unwrap_or_default()
        .into_iter()
        .map(|(p, _)| p.to_string())
        .collect();
    if let Some((p, _)) = t.str(cx, "path") {
        paths.push(p.to_string());
    }
    if paths.is_empty() {
        cx.report(
            t.span(),
            t.key_path("path"),
            ProblemKind::Invalid("set `path` or `paths`".into()),
        );
    }
    let mut schedule = Vec::new();
    let steps = t.array(cx, "schedule");
    let no_steps = steps.is_empty();
    for mut st in steps {
        let at = st.req_offset(cx, "at");
        let rate = st.opt_float(cx, "rate", 0.0, 1e9);
        if rate.is_none() && !st.has("rate") {
            cx.report(st.span(), st.key_path("rate"), ProblemKind::Missing);
        }
        let ramp = st.bool(cx, "ramp", false);
        st.finish(cx);
        if let (Some(at), Some(rate)) = (at, rate) {
            schedule.push(Step { at, rate, ramp });
        }
    }
    if !t.has("schedule") {
        cx.report(t.span(), t.key_path("schedule"), ProblemKind::Missing);
    } else if no_steps {
        let what = "needs at least one { at, rate } step";
        cx.report(
            t.value_span("schedule"),
            t.key_path("schedule"),
            ProblemKind::Invalid(what.into()),
        );
    }
    let load = Load {
        target: target.to_string(),
        paths,
        schedule,
        client_timeout: t.duration(cx, "client_timeout", Duration::from_secs(10)),
        max_in_flight: t.uint(cx, "max_in_flight", 10_000, 1, 10_000_000) as usize,
        protocol: t.choice(
            cx,
            "protocol",
            ("http/1.1", crate::load::Protocol::Http1),
            &[
                ("h2", crate::load::Protocol::H2),
                ("grpc", crate::load::Protocol::Grpc),
            ],
        ),
    };
    t.finish(cx);
    load
}

/// `[[faults]]`.
/// `"FROM-TO"` ports.
fn port_range(p: &str) -> Option<(u16, u16)> {
    let (a, b) = p.split_once('-')?;
    let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a > 0 && a <= b).then_some((a, b))
}

fn fault(cx: &mut Cx, mut t: Tbl, services: &[Service], network: NetworkMode) -> Option<Fault> {
    let at = t.req_offset(cx, "at");
    let until = t.opt_offset(cx, "until");
    let kind_span = t.value_span("kind");
    let kind = match t.str(cx, "kind") {
        None | Some(("toxic", _)) => FaultKind::Toxic,
        Some(("syn_rate_limit", _)) => FaultKind::SynRateLimit {
            rate: t.uint(cx, "rate", 1, 0, 1_000_000) as u32,
        },
        Some(("loss", _)) => FaultKind::Loss {
            percent: t.uint(cx, "percent", 10, 1, 100) as u8,
        },
        Some(("blackhole", _)) => FaultKind::Blackhole,
        Some(("snat_ports", _)) => {
            let (from, to) = t
                .str(cx, "ports")
                .and_then(|(p, span)| {
                    let r = port_range(p);
                    if r.is_none() {
                        cx.report(
                            span,
                            t.key_path("ports"),
                            ProblemKind::Invalid("expected \"FROM-TO\"".into()),
                        );
                    }
                    r
                })
                .unwrap_or((40000, 40000));
            FaultKind::SnatPorts { from, to }
        }
        Some(("conntrack_expiry", _)) => FaultKind::ConntrackExpiry {
            seconds: t.uint(cx, "seconds", 1, 1, 86_400) as u32,
        },
        Some(("stop", _)) => FaultKind::Stop,
        Some((_, span)) => {
            let what = "expected toxic, syn_rate_limit, loss, blackhole, snat_ports, conntrack_expiry or stop";
            cx.report(span, t.key_path("kind"), ProblemKind::Invalid(what.into()));
            return None;
        }
    };
    if kind.kernel() && network != NetworkMode::Kernel {
        let what = format!("fault kind {} needs network = \"kernel\"", kind.as_str());
        cx.report(kind_span, t.key_path("kind"), ProblemKind::Invalid(what));
    }
    let needs_service = !matches!(
        kind,
        FaultKind::SnatPorts { .. } | FaultKind::ConntrackExpiry { .. }
    );
    let service = if needs_service {
        t.req_str(cx, "service").map(|(s, span)| {
            let ok = services
                .iter()
                .any(|x| x.name == s && (kind != FaultKind::Toxic || x.kind == Kind::Chaos));
            if !ok {
                let what = if kind == FaultKind::Toxic {
                    format!("no chaos service named {s:?}")
                } else {
                    format!("no service named {s:?}")
                };
                cx.report(span, t.key_path("service"), ProblemKind::Invalid(what));
            }
            s.to_string()
        })
    } else {
        Some(String::new())
    };
    let (proxy, toxic) = if kind == FaultKind::Toxic {
        let proxy = t.req_str(cx, "proxy").map(|(p, _)| p.to_string());
        let toxic = t.json_value("toxic");
        match &toxic {
            None => cx.report(t.span(), t.key_path("toxic"), ProblemKind::Missing),
            Some(v) => {
                if let Err(e) = hopline_chaos_toxic_check(v) {
                    cx.report(
                        t.value_span("toxic"),
                        t.key_path("toxic"),
                        ProblemKind::Invalid(e.into()),
                    );
                }
            }
        }
        (proxy, toxic)
    } else {
        (Some(String::new()), Some(Value::Null))
    };
    t.finish(cx);
    Some(Fault {
        at: at?,
        until,
        service: service?,
        proxy: proxy?,
        toxic: toxic?,
        kind,
    })
}

/// A `metric` key.
fn metric(cx: &mut Cx, t: &mut Tbl) -> Option<Metric> {
    let (m, span) = t.req_str(cx, "metric")?;
    match m {
        "non_2xx_ratio" => Some(Metric::Non2xxRatio),
        "degraded_ratio" => Some(Metric::DegradedRatio),
        "p99_ms" => Some(Metric::P99Ms),
        _ => {
            let what = "expected \"non_2xx_ratio\", \"degraded_ratio\" or \"p99_ms\"";
            cx.report(
                span,
                t.key_path("metric"),
                ProblemKind::Invalid(what.into()),
            );
            None
        }
    }
}

/// `[[alerts]]`.
fn alert(cx: &mut Cx, mut t: Tbl) -> Option<Alert> {
    let name = t.str(cx, "name").map_or("alert", |(n, _)| n).to_string();
    let metric = metric(cx, &mut t);
    let alert = Alert {
        name,
        metric: metric.unwrap_or(Metric::Non2xxRatio),
        above: t.float(cx, "above", 0.05, 0.0, 1e12),
        window: t.duration(cx, "window", Duration::from_secs(10)),
        min_requests: t.uint(cx, "min_requests", 1, 0, u64::from(u32::MAX)),
    };
    t.finish(cx);
    metric.map(|_| alert)
}

/// `[[expect]]`: a bound on a metric, an alert that fires (or not), or a top cause.
fn expectation(
    cx: &mut Cx,
    mut t: Tbl,
    alerts: &[Alert],
    services: &[&str],
    addrs: &[String],
) -> Option<Expect> {
    // `diagnose_first` expectations use `phase` for the upstream exchange's phase.
    let diagnosing = t.has("diagnose_first");
    let phase = match if diagnosing { None } else { t.str(cx, "phase") } {
        None | Some(("all", _)) => Phase::All,
        Some(("fault", _)) => Phase::Fault,
        Some((_, span)) => {
            let what = "expected \"all\" or \"fault\"";
            cx.report(span, t.key_path("phase"), ProblemKind::Invalid(what.into()));
            Phase::All
        }
    };
    let e = if let Some((name, span)) = t.str(cx, "alert") {
        if !alerts.iter().any(|a| a.name == name) {
            let what = format!("no alert named {name:?}");
            cx.report(span, t.key_path("alert"), ProblemKind::Invalid(what));
        }
        Some(Expect::Alert {
            name: name.to_string(),
            fired: t.bool(cx, "fired", true),
        })
    } else if let Some((state, _)) = t.str(cx, "event") {
        let hop = of_service(cx, &mut t, services);
        let from_fault_start = match t.str(cx, "from") {
            None | Some(("first_failure", _)) => false,
            Some(("fault_start", _)) => true,
            Some((_, span)) => {
                let what = "expected \"first_failure\" or \"fault_start\"";
                cx.report(span, t.key_path("from"), ProblemKind::Invalid(what.into()));
                false
            }
        };
        Some(Expect::Event {
            hop: hop.to_string(),
            state: state.to_string(),
            within: t.opt_duration(cx, "within"),
            from_fault_start,
            after_fault: t.bool(cx, "after_fault", false),
        })
    } else if t.has("scrape") {
        let at: Vec<String> = t
            .str_list(cx, "scrape")
            .unwrap_or_default()
            .into_iter()
            .map(|(name, span)| {
                if !addrs.iter().any(|a| a == name) {
                    let what = format!("no service or {{addr:{name}}} placeholder named {name:?}");
                    cx.report(span, t.key_path("scrape"), ProblemKind::Invalid(what));
                }
                name.to_string()
            })
            .collect();
        let series = t.req_str(cx, "series").map_or("", |(s, _)| s).to_string();
        Some(Expect::Scrape {
            at,
            series,
            below: t.opt_float(cx, "below", f64::MIN, f64::MAX),
            above: t.opt_float(cx, "above", f64::MIN, f64::MAX),
        })
    } else if let Some((upstream, _)) = t.str(cx, "diagnose_first") {
        let hop = of_service(cx, &mut t, services);
        Some(Expect::DiagnoseFirst {
            hop: hop.to_string(),
            upstream: upstream.to_string(),
            phase: t.str(cx, "phase").map(|(p, _)| p.to_string()),
        })
    } else if let Some((hop, span)) = t.str(cx, "top_cause_of") {
        if !services.contains(&hop) {
            let what = format!("no service named {hop:?}");
            cx.report(span, t.key_path("top_cause_of"), ProblemKind::Invalid(what));
        }
        Some(Expect::TopCause {
            hop: hop.to_string(),
            contains: t.str(cx, "contains").map_or("", |(c, _)| c).to_string(),
        })
    } else {
        metric(cx, &mut t).map(|metric| Expect::Bound {
            phase,
            metric,
            below: t.opt_float(cx, "below", f64::MIN, f64::MAX),
            above: t.opt_float(cx, "above", f64::MIN, f64::MAX),
        })
    };
    t.finish(cx);
    e
}

/// A `kind = "hopline"` service's config is read as `hopline serve` would read it (with
/// placeholders filled by stand-ins), so a problem in it is reported here — at the line of
/// the scenario file it is on — instead of by the gateway failing to start.
fn check_hopline_config(cx: &mut Cx, t: &Tbl, text: &str, config: &str, at: usize) {
    let mut filled = config.to_string();
    for name in placeholders(config) {
        filled = filled
            .replace(&format!("{{addr:{name}}}"), "127.0.0.1:9")
            .replace(&format!("{{port:{name}}}"), "9");
    }
    for (k, v) in [
        ("{tls:ca}", "ca.pem"),
        ("{tls:cert}", "cert.pem"),
        ("{tls:key}", "key.pem"),
        ("{dir}", "."),
    ] {
        filled = filled.replace(k, v);
    }
    let Err(e) = hopline_config::parse(&filled, std::path::Path::new("config")) else {
        return;
    };
    // The value starts at `at` (its opening quotes); a multi-line string's first line break
    // is not part of it, so the config's line N is N line breaks after `at`.
    let multi = text[at..].starts_with("\"\"\"") || text[at..].starts_with("'''");
    for p in e.problems {
        let breaks = p.location.line - usize::from(!multi);
        let line_start = text[at..]
            .match_indices('\n')
            .nth(breaks.saturating_sub(1))
            .map_or(at, |(i, _)| at + i + 1);
        let start = if breaks == 0 { at } else { line_start };
        let end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        cx.report(
            Some(start..end.max(start + 1).min(text.len())),
            format!("{}: `{}`", t.key_path("config"), p.key),
            ProblemKind::Invalid(p.kind.to_string()),
        );
    }
}

/// The required `of = SERVICE` of an expectation about one service's log.
fn of_service<'a>(cx: &mut Cx, t: &mut Tbl<'a>, services: &[&str]) -> &'a str {
    let hop = t.req_str(cx, "of").map_or("", |(h, _)| h);
    if !hop.is_empty() && !services.contains(&hop) {
        let what = format!("no service named {hop:?}");
        cx.report(
            t.value_span("of"),
            t.key_path("of"),
            ProblemKind::Invalid(what),
        );
    }
    hop
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
    fn scrape_and_event_expectations_are_read_and_checked() {
        let base = "[[services]]\nname = \"m\"\nkind = \"mock\"\n[[services]]\nname = \"g\"\nkind = \"hopline\"\nconfig = \"[server]\\nlisten = '{addr:g}'\\n[admin]\\nlisten = '{addr:g_admin}'\\n\"\n[load]\ntarget = \"g\"\npath = \"/\"\nschedule = [{ at = \"0s\", rate = 1 }]\n";
        let ok = parse(
            &format!("{base}[[expect]]\nscrape = [\"g_admin\", \"m\"]\nseries = \"hopline_x\"\nbelow = 1\n[[expect]]\nevent = \"local\"\nof = \"g\"\nwithin = \"1s\"\nfrom = \"fault_start\"\n"),
            "s.toml",
        )
        .expect("valid");
        assert!(
            matches!(&ok.expect[0], Expect::Scrape { at, series, below: Some(b), .. }
            if at == &["g_admin", "m"] && series == "hopline_x" && *b == 1.0)
        );
        assert!(matches!(
            &ok.expect[1],
            Expect::Event {
                from_fault_start: true,
                ..
            }
        ));
        let e = parse(
            &format!("{base}[[expect]]\nscrape = [\"nowhere\"]\nseries = \"x\"\n[[expect]]\nevent = \"local\"\nof = \"g\"\nfrom = \"later\"\n"),
            "s.toml",
        )
        .expect_err("invalid");
        let text = e.to_string();
        assert!(
            text.contains("no service or {addr:nowhere} placeholder"),
            "{text}"
        );
        assert!(text.contains("key `expect[1].from`"), "{text}");
    }

    #[test]
    fn errors_name_line_and_key() {
        let e = parse("duration = \"5\"\n[load]\ntarget = \"nope\"\npath = \"/\"\nschedule = [{ at = \"0s\", rate = 10 }]\n[[faults]]\nat = \"1s\"\nservice = \"x\"\ntoxic = { name = \"t\" }\n", "s.toml")
            .expect_err("invalid");
        let text = e.to_string();
        assert!(
            text.contains("s.toml:1:12: key `duration`: missing unit"),
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

    #[test]
    fn wrong_types_unknown_and_missing_keys_are_all_reported() {
        let text = "seed = \"x\"\nspeed = 1\n[[services]]\nname = \"c\"\nkind = \"chaos\"\nconfig = \"\"\nargv = [\"a\"]\n[load]\ntarget = \"c\"\npath = \"/\"\nschedule = [{ at = \"0s\", rate = 1 }]\nmax_in_flight = \"many\"\n[[faults]]\nat = \"1s\"\nservice = \"c\"\ntoxic = { type = \"latency\" }\n[[alerts]]\nmetric = \"p99_ms\"\nabove = true\n";
        let e = parse(text, "s.toml").expect_err("invalid");
        let keys: Vec<(usize, &str, String)> = e
            .problems
            .iter()
            .map(|p| (p.location.line, p.key.as_str(), p.kind.to_string()))
            .collect();
        let want = [
            (1, "seed", "expected an integer"),
            (2, "speed", "unknown key; did you mean `seed`?"),
            (
                7,
                "services[0].argv",
                "this kind of service takes `args`, not `argv`",
            ),
            (12, "load.max_in_flight", "expected an integer"),
            (13, "faults[0].proxy", "missing required key"),
            (19, "alerts[0].above", "expected a number"),
        ];
        for (line, key, what) in want {
            assert!(
                keys.iter()
                    .any(|(l, k, w)| *l == line && *k == key && w == what),
                "{key} at line {line}: {what}\n{e}"
            );
        }
        assert_eq!(keys.len(), want.len(), "{e}");
    }

    #[test]
    fn the_embedded_scenarios_parse() {
        for (name, text) in [
            ("legacy", crate::INCIDENT_LEGACY),
            ("hopline", crate::INCIDENT_HOPLINE),
            ("legacy-kernel", crate::INCIDENT_LEGACY_KERNEL),
            ("hopline-kernel", crate::INCIDENT_HOPLINE_KERNEL),
        ] {
            let s = parse(text, name).unwrap_or_else(|e| panic!("{e}"));
            assert!(!s.faults.is_empty() && !s.expect.is_empty(), "{name}");
        }
    }

    #[test]
    fn a_bad_gateway_config_is_reported_at_its_line_in_the_scenario() {
        let text = "duration = \"1s\"\n[[services]]\nname = \"gw\"\nkind = \"hopline\"\nconfig = \"\"\"\n[server]\nlisten = \"{addr:gw}\"\n[upstreams.u]\nendpoints = 5\n\"\"\"\n[load]\ntarget = \"gw\"\npath = \"/\"\nschedule = [{ at = \"0s\", rate = 1 }]\n";
        let e = parse(text, "s.toml").expect_err("bad gateway config");
        let p = &e.problems[0];
        // `endpoints = 5` is line 9 of the scenario file.
        assert_eq!(p.location.line, 9, "{e}");
        assert!(p.key.contains("upstreams.u.endpoints"), "{e}");
    }
}
