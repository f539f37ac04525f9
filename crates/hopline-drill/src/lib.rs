//! Fault drills: runs a topology of real processes under open-loop load and a fault
//! timeline, records every hop, checks expectations, writes a report.
//!
//! The drill never links the gateway: it drives real `hopline`, `hopline mock`,
//! `hopline chaos` and `legacy-gateway` processes on loopback ports it allocates, applies
//! faults through the chaos API, and reads each process's own log afterwards.

pub mod load;
pub mod network;
pub mod record;
pub mod report;
pub mod scenario;
pub mod services;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::Value;

pub use scenario::{parse, Scenario, ScenarioError};

/// The embedded incident drill, legacy gateway variant.
pub const INCIDENT_LEGACY: &str = include_str!("../../../examples/incident-legacy.drill.toml");
/// The embedded incident drill, hopline variant.
pub const INCIDENT_HOPLINE: &str = include_str!("../../../examples/incident-hopline.drill.toml");
/// The embedded incident on a real kernel network (`--network kernel`), legacy gateway.
pub const INCIDENT_LEGACY_KERNEL: &str =
    include_str!("../../../examples/incident-legacy-kernel.drill.toml");
/// The embedded incident on a real kernel network (`--network kernel`), hopline.
pub const INCIDENT_HOPLINE_KERNEL: &str =
    include_str!("../../../examples/incident-hopline-kernel.drill.toml");

/// Why a drill could not run.
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// The topology did not start.
    #[error(transparent)]
    Start(#[from] services::StartError),
    /// Output files.
    #[error("cannot write {path}")]
    Io {
        /// Path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A fault could not be applied.
    #[error("fault on {service}/{proxy}: {detail}")]
    Fault {
        /// Chaos service.
        service: String,
        /// Proxy.
        proxy: String,
        /// What the API said.
        detail: String,
    },
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// Scenario name.
    pub name: String,
    /// Terminal summary.
    pub summary: String,
    /// `data.json`.
    pub data: Value,
    /// Every expectation held (and the run was not interrupted).
    pub passed: bool,
    /// Stopped early by SIGTERM/SIGINT: the report covers only the time before.
    pub interrupted: bool,
    /// Output folder.
    pub out: PathBuf,
}

/// Where a running drill is, reported about once a second.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Seconds of load done.
    pub elapsed: u64,
    /// Seconds of load in all.
    pub total: u64,
    /// Requests sent so far.
    pub sent: usize,
}

/// The programs a drill runs.
#[derive(Debug, Clone)]
pub struct Programs {
    /// `hopline`.
    pub hopline: PathBuf,
    /// `legacy-gateway`.
    pub legacy: PathBuf,
}

/// One call to a chaos API: the status and the body.
async fn chaos_call(
    api: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), String> {
    http_call(api, method, path, body, 64 * 1024).await
}

/// One HTTP/1.1 exchange with a service's API: the status and the body (at most `max` bytes).
async fn http_call(
    api: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    max: usize,
) -> Result<(u16, String), String> {
    let mut s = tokio::net::TcpStream::connect(api)
        .await
        .map_err(|e| e.to_string())?;
    let mut req = bytes::BytesMut::new();
    // The address, as curl would name it: the APIs answer IP literals (never a name
    // they were not told about).
    let host = api.to_string();
    let fields = [
        ("host", host.as_str()),
        ("connection", "close"),
        ("content-type", "application/json"),
    ];
    hopline_h1::write::put_request(
        &mut req,
        method.as_bytes(),
        path.as_bytes(),
        fields,
        body.as_bytes(),
    );
    let mut buf = bytes::BytesMut::new();
    let r = hopline_h1::client::exchange(&mut s, &mut buf, &req, 64 * 1024, max)
        .await
        .map_err(|e| hopline_core::error::cause_chain(&e))?;
    Ok((r.head.status, String::from_utf8_lossy(&r.body).into_owned()))
}

/// Starts (`on`) or ends a fault that is not a chaos toxic: a kernel-network fault at the
/// NAT, or stopping / continuing a service.
fn other_fault(
    f: &scenario::Fault,
    on: bool,
    target: Option<(std::net::Ipv4Addr, u16)>,
    pids: &HashMap<String, u32>,
    network: Option<&network::Network>,
    undo: &mut Option<network::Undo>,
) -> Result<(), String> {
    if f.kind == scenario::FaultKind::Stop {
        let pid = pids
            .get(&f.service)
            .ok_or_else(|| format!("no process for {}", f.service))?;
        let sig = if on { "-STOP" } else { "-CONT" };
        let ok = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        return if ok {
            Ok(())
        } else {
            Err(format!("kill {sig} {pid} failed"))
        };
    }
    let net = network.ok_or("this fault needs network = \"kernel\"")?;
    if on {
        *undo = Some(net.apply(f.kind, target).map_err(|e| e.to_string())?);
        Ok(())
    } else {
        match undo.take() {
            Some(u) => net.undo(u).map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }
}

/// The `/metrics` of every address a `scrape` expectation names, as the load ends (an
/// address that does not answer is left out, and its expectation fails saying so).
async fn scrape(
    expect: &[scenario::Expect],
    addrs: &HashMap<String, std::net::SocketAddr>,
) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for e in expect {
        let scenario::Expect::Scrape { at, .. } = e else {
            continue;
        };
        for name in at {
            if out.contains_key(name) {
                continue;
            }
            let Some(addr) = addrs.get(name) else {
                continue;
            };
            let call = http_call(*addr, "GET", "/metrics", "", 8 << 20);
            // A stopped service does not answer: its expectation says it was not scraped.
            if let Ok(Ok((200, body))) = tokio::time::timeout(Duration::from_secs(5), call).await {
                out.insert(name.clone(), body);
            }
        }
    }
    out
}

/// Runs one scenario, writing `index.html`, `data.json` and every service's log to `out`.
pub async fn run(
    s: &Scenario,
    programs: &Programs,
    out: &Path,
    mut progress: impl FnMut(Progress),
) -> Result<RunResult, DrillError> {
    std::fs::create_dir_all(out).map_err(|source| DrillError::Io {
        path: out.display().to_string(),
        source,
    })?;
    let stop = hopline_signal::termination();
    let mut topo = services::start(s, &programs.hopline, &programs.legacy, out)?;
    let plan = load::LoadPlan {
        target: topo.addrs[&s.load.target],
        paths: s
            .load
            .paths
            .iter()
            .map(|p| services::fill(p, &topo.addrs))
            .collect(),
        schedule: s.load.schedule.clone(),
        duration: s.duration,
        client_timeout: s.load.client_timeout,
        protocol: s.load.protocol,
        max_in_flight: s.load.max_in_flight,
    };
    let start_epoch = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    // The fault timeline runs beside the load, in the same task set.
    let mut timeline: Vec<(Duration, bool, usize)> = Vec::new();
    for (i, f) in s.faults.iter().enumerate() {
        timeline.push((f.at, true, i));
        if let Some(u) = f.until {
            timeline.push((u, false, i));
        }
    }
    timeline.sort_by_key(|t| t.0);
    let faults = s.faults.clone();
    let addrs = topo.addrs.clone();
    let network = topo.network.clone();
    let pids: HashMap<String, u32> = s
        .services
        .iter()
        .filter_map(|x| topo.pid(&x.name).map(|p| (x.name.clone(), p)))
        .collect();
    let t0 = tokio::time::Instant::now();
    let fault_task = tokio::spawn(async move {
        let mut names = vec![String::new(); faults.len()];
        let mut undos: Vec<Option<network::Undo>> = faults.iter().map(|_| None).collect();
        for (at, on, i) in timeline {
            tokio::time::sleep_until(t0 + at).await;
            let f = &faults[i];
            if f.kind != scenario::FaultKind::Toxic {
                let target = addrs.get(&f.service).and_then(|a| match a.ip() {
                    std::net::IpAddr::V4(ip) => Some((ip, a.port())),
                    std::net::IpAddr::V6(_) => None,
                });
                let result = other_fault(f, on, target, &pids, network.as_deref(), &mut undos[i]);
                if let Err(detail) = result {
                    return Err(DrillError::Fault {
                        service: f.service.clone(),
                        proxy: f.kind.as_str().into(),
                        detail,
                    });
                }
                continue;
            }
            let api = addrs[&f.service];
            let result = if on {
                chaos_call(
                    api,
                    "POST",
                    &format!("/proxies/{}/toxics", f.proxy),
                    &f.toxic.to_string(),
                )
                .await
                .and_then(|(st, body)| {
                    let name = serde_json::from_str::<Value>(body.trim())
                        .ok()
                        .and_then(|v| v["name"].as_str().map(String::from));
                    match (st, name) {
                        (200, Some(n)) => {
                            names[i] = n;
                            Ok(())
                        }
                        _ => Err(body),
                    }
                })
            } else {
                chaos_call(
                    api,
                    "DELETE",
                    &format!("/proxies/{}/toxics/{}", f.proxy, names[i]),
                    "",
                )
                .await
                .map(|_| ())
            };
            if let Err(detail) = result {
                return Err(DrillError::Fault {
                    service: f.service.clone(),
                    proxy: f.proxy.clone(),
                    detail,
                });
            }
        }
        Ok(())
    });
    let total = s.duration.as_secs();
    let (samples, interrupted) = load::run(
        &plan,
        |at, sent| {
            progress(Progress {
                elapsed: at.as_secs(),
                total,
                sent,
            })
        },
        stop,
    )
    .await;
    // Told to stop: the services are stopped and the report written from what there is.
    let fault_result = if interrupted.is_some() {
        fault_task.abort();
        Ok(())
    } else {
        fault_task.await.unwrap_or(Ok(()))
    };
    let scrapes = match interrupted {
        Some(_) => HashMap::new(),
        None => scrape(&s.expect, &topo.addrs).await,
    };
    topo.stop();
    fault_result?;

    let fw = record::fault_windows(s);
    let secs = record::seconds(&samples, s.duration);
    let hops: Vec<record::Hop> = s
        .services
        .iter()
        .filter(|svc| svc.kind != scenario::Kind::Chaos)
        .filter_map(|svc| {
            topo.logs.get(&svc.name).map(|p| {
                let mut hop = record::hop(&svc.name, p, start_epoch, secs.len(), &fw);
                // hopline's own logs get diagnosed as an operator would after the fact.
                if svc.kind == scenario::Kind::Hopline && hop.lines > 0 {
                    let opts = hopline_diagnose::Options::default();
                    hop.diagnosis = hopline_diagnose::diagnose(std::slice::from_ref(p), &opts)
                        .ok()
                        .map(|r| (r, start_epoch));
                }
                hop
            })
        })
        .collect();
    let events = record::alerts(&s.alerts, &secs);
    let checks = record::check(&s.expect, &samples, &fw, &events, &hops, &scrapes);
    let stats = (
        record::phase_stats(&samples, scenario::Phase::All, &fw),
        record::phase_stats(&samples, scenario::Phase::Fault, &fw),
    );
    let data = record::data_json(s, &secs, &hops, &events, &checks, stats);
    let html = report::html(
        &s.name,
        s.seed,
        s.duration.as_secs_f64(),
        &secs,
        &hops,
        &fw,
        &events,
        &checks,
        stats,
    );
    let write = |name: &str, text: &str| {
        let p = out.join(name);
        std::fs::write(&p, text).map_err(|source| DrillError::Io {
            path: p.display().to_string(),
            source,
        })
    };
    write(
        "data.json",
        &serde_json::to_string_pretty(&data).unwrap_or_default(),
    )?;
    write("index.html", &html)?;
    let mut summary = report::summary(&s.name, stats, &events, &hops, &checks);
    if let Some(at) = interrupted {
        summary.push_str(&format!(
            "  INTERRUPTED at {:.1}s of {}s (SIGTERM/SIGINT): services stopped, partial report\n",
            at.as_secs_f64(),
            total
        ));
    }
    Ok(RunResult {
        name: s.name.clone(),
        summary,
        passed: interrupted.is_none() && checks.iter().all(|c| c.1),
        interrupted: interrupted.is_some(),
        data,
        out: out.to_path_buf(),
    })
}
