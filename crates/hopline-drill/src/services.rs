//! Starting and stopping the processes of a topology, on loopback ports the runner picks.

use std::collections::HashMap;
use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::scenario::{placeholders, Kind, Scenario};

/// Why a topology could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A process could not be spawned.
    #[error("cannot start service {service} ({program})")]
    Spawn {
        /// Service.
        service: String,
        /// Program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// A service did not accept connections in time.
    #[error("service {service} not ready on {addr} within {secs} s (see {log})")]
    NotReady {
        /// Service.
        service: String,
        /// Its address.
        addr: SocketAddr,
        /// Wait.
        secs: u64,
        /// Its stderr file.
        log: String,
    },
    /// A service exited during start-up (e.g. its port was taken).
    #[error("service {service} exited during start-up ({status}); see {log}")]
    Exited {
        /// Service.
        service: String,
        /// How it ended.
        status: std::process::ExitStatus,
        /// Its stderr file.
        log: String,
    },
    /// The kernel network could not be built.
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
    /// The run's throw-away TLS certificates could not be made.
    #[error(transparent)]
    Certificates(#[from] crate::tls::PkiError),
    /// Files in the output folder.
    #[error("cannot write {path}")]
    Io {
        /// Path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Running processes, killed when dropped.
#[derive(Debug)]
pub struct Topology {
    children: Vec<(String, Child)>,
    /// Address of every placeholder name.
    pub addrs: HashMap<String, SocketAddr>,
    /// Stdout log file of every service.
    pub logs: HashMap<String, PathBuf>,
    /// The kernel network the services run in (`network = "kernel"`); torn down after
    /// they have stopped.
    pub network: Option<std::sync::Arc<crate::network::Network>>,
}

/// The command that starts `program argv`: through `setpriv --pdeathsig KILL` where
/// util-linux has it, so a service dies with the drill even when the drill is killed with
/// SIGKILL. The death signal follows the thread that spawned the child: services are
/// spawned from the thread that runs the drill, which lives as long as it does.
fn command(program: &Path, argv: &[String], ns: Option<&str>) -> Command {
    static SETPRIV: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let setpriv = SETPRIV.get_or_init(|| {
        ["/usr/bin/setpriv", "/bin/setpriv"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    });
    let mut line: Vec<std::ffi::OsString> = Vec::new();
    // In a kernel-network drill, inside the host's namespace (`ip netns exec` execs, so
    // the process keeps its id and its parent).
    if let Some(ns) = ns {
        line.extend(["ip", "netns", "exec", ns].map(Into::into));
    }
    if let Some(sp) = setpriv {
        line.push(sp.into());
        line.extend(["--pdeathsig", "KILL", "--"].map(Into::into));
    }
    line.push(program.into());
    line.extend(argv.iter().map(Into::into));
    let mut c = Command::new(&line[0]);
    c.args(&line[1..]);
    c
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Topology {
    /// The process id of service `name`.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.children
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.id())
    }

    /// Stops every process: SIGTERM (so logs flush), then kill after 3 s.
    pub fn stop(&mut self) {
        for (_, c) in &mut self.children {
            if let Ok(Some(_)) = c.try_wait() {
                continue;
            }
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
        }
        let end = Instant::now() + Duration::from_secs(3);
        for (_, c) in &mut self.children {
            while Instant::now() < end {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
    }
}

/// `n` distinct free loopback addresses. Their listeners are all held until every address
/// is picked (a released port can be handed out again at once), then released for the
/// services to bind.
fn free_addrs(n: usize) -> std::io::Result<Vec<SocketAddr>> {
    let held = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    held.iter().map(TcpListener::local_addr).collect()
}

/// What a hopline process prints on stderr once it listens on `addr`; `None` for programs
/// whose readiness is only their port accepting.
fn ready_line(kind: Kind, addr: SocketAddr) -> Option<String> {
    match kind {
        Kind::Hopline => Some(format!("hopline serve: listening on {addr}")),
        Kind::Mock => Some(format!("hopline mock: listening on {addr}")),
        Kind::Chaos => Some(format!("hopline chaos: api listening on {addr}")),
        Kind::LegacyGateway | Kind::Command => None,
    }
}

/// Replaces `{addr:NAME}` and `{port:NAME}`.
pub fn fill(text: &str, addrs: &HashMap<String, SocketAddr>) -> String {
    let mut out = text.to_string();
    for (name, a) in addrs {
        out = out.replace(&format!("{{addr:{name}}}"), &a.to_string());
        out = out.replace(&format!("{{port:{name}}}"), &a.port().to_string());
    }
    out
}

/// Starts every service in order, waiting for each to accept connections.
pub fn start(
    s: &Scenario,
    hopline: &Path,
    legacy: &Path,
    out: &Path,
) -> Result<Topology, StartError> {
    let mut names: Vec<String> = s.services.iter().map(|x| x.name.clone()).collect();
    for svc in &s.services {
        for text in svc.args.iter().chain(svc.config.iter()) {
            for n in placeholders(text) {
                if !names.contains(&n) {
                    names.push(n);
                }
            }
        }
    }
    let network = match s.network {
        crate::scenario::NetworkMode::Loopback => None,
        crate::scenario::NetworkMode::Kernel => {
            let mut hosts = s.hosts.clone();
            if s.services.iter().any(|x| x.host.is_none())
                && !hosts.iter().any(|h| h.name == "main")
            {
                hosts.push(crate::scenario::Host {
                    name: "main".into(),
                    outside: false,
                });
            }
            Some(std::sync::Arc::new(crate::network::Network::build(
                &hosts,
                s.nat_ports,
            )?))
        }
    };
    let addrs: HashMap<String, SocketAddr> = match &network {
        None => {
            let picked = free_addrs(names.len()).map_err(|source| StartError::Io {
                path: "127.0.0.1:0".into(),
                source,
            })?;
            names.into_iter().zip(picked).collect()
        }
        // Each name on its service's host (a name that is not a service, like a chaos
        // proxy's listen address, on the host of the first service that mentions it).
        Some(net) => names
            .into_iter()
            .enumerate()
            .map(|(i, n)| {
                let svc = s.services.iter().find(|x| x.name == n).or_else(|| {
                    s.services.iter().find(|x| {
                        x.args
                            .iter()
                            .chain(x.config.iter())
                            .any(|t| placeholders(t).contains(&n))
                    })
                });
                let host = svc.and_then(|x| x.host.as_deref()).unwrap_or("main");
                let ip = net
                    .host(host)
                    .map_or(std::net::Ipv4Addr::LOCALHOST, |h| h.ip);
                (n, SocketAddr::from((ip, 20_000 + i as u16)))
            })
            .collect(),
    };
    let out = &std::path::absolute(out).unwrap_or_else(|_| out.to_path_buf());
    // Certificates only for scenarios that use them.
    let uses_tls = s.services.iter().any(|svc| {
        svc.args
            .iter()
            .chain(svc.config.iter())
            .chain(svc.env.iter().map(|(_, v)| v))
            .any(|t| t.contains("{tls:"))
    });
    let pki = if uses_tls {
        Some(crate::tls::generate(&out.join("tls"))?)
    } else {
        None
    };
    let fill = |text: &str, addrs: &HashMap<String, SocketAddr>| {
        let text = fill(text, addrs);
        match &pki {
            Some(p) => crate::tls::fill(&text, p),
            None => text,
        }
    };
    let mut topo = Topology {
        children: Vec::new(),
        addrs,
        logs: HashMap::new(),
        network,
    };
    for svc in &s.services {
        let addr = topo.addrs[&svc.name];
        let args: Vec<String> = svc.args.iter().map(|a| fill(a, &topo.addrs)).collect();
        let write = |suffix: &str, text: &str| -> Result<PathBuf, StartError> {
            let p = out.join(format!("{}.{suffix}", svc.name));
            std::fs::write(&p, text).map_err(|source| StartError::Io {
                path: p.display().to_string(),
                source,
            })?;
            Ok(p)
        };
        let (program, argv): (PathBuf, Vec<String>) = match svc.kind {
            Kind::Mock => {
                let mut v = vec!["mock".into(), "--listen".into(), addr.to_string()];
                v.extend(args);
                (hopline.to_path_buf(), v)
            }
            Kind::Chaos => {
                let cfg = write(
                    "chaos.toml",
                    &fill(svc.config.as_deref().unwrap_or(""), &topo.addrs),
                )?;
                (
                    hopline.to_path_buf(),
                    vec![
                        "chaos".into(),
                        "-c".into(),
                        cfg.display().to_string(),
                        "--api".into(),
                        addr.to_string(),
                        "--seed".into(),
                        s.seed.to_string(),
                        // Its counters (connections, NAT stalls) for `scrape` expectations.
                        "--proxy-metrics".into(),
                    ],
                )
            }
            Kind::Hopline => {
                let cfg = write(
                    "hopline.toml",
                    &fill(svc.config.as_deref().unwrap_or(""), &topo.addrs),
                )?;
                (
                    hopline.to_path_buf(),
                    vec!["serve".into(), "-c".into(), cfg.display().to_string()],
                )
            }
            Kind::LegacyGateway => {
                let mut v = vec!["--listen".into(), addr.to_string()];
                v.extend(args);
                (legacy.to_path_buf(), v)
            }
            Kind::Command => {
                let args: Vec<String> = match &svc.config {
                    Some(text) => {
                        let cfg = write(
                            "conf",
                            &fill(text, &topo.addrs).replace("{dir}", &out.display().to_string()),
                        )?;
                        args.iter()
                            .map(|a| a.replace("{config}", &cfg.display().to_string()))
                            .collect()
                    }
                    None => args,
                };
                let args: Vec<String> = args
                    .iter()
                    .map(|a| a.replace("{dir}", &out.display().to_string()))
                    .collect();
                (PathBuf::from(&args[0]), args[1..].to_vec())
            }
        };
        let log = out.join(format!("{}.log", svc.name));
        let err = out.join(format!("{}.stderr", svc.name));
        let io = |p: &Path| {
            File::create(p).map_err(|source| StartError::Io {
                path: p.display().to_string(),
                source,
            })
        };
        let env: Vec<(String, String)> = svc
            .env
            .iter()
            .map(|(k, v)| (k.clone(), fill(v, &topo.addrs)))
            .collect();
        let ns = topo.network.as_ref().and_then(|net| {
            net.host(svc.host.as_deref().unwrap_or("main"))
                .map(|h| h.ns.clone())
        });
        let child = command(&program, &argv, ns.as_deref())
            .envs(env)
            .stdin(Stdio::null())
            .stdout(io(&log)?)
            .stderr(io(&err)?)
            .spawn()
            .map_err(|source| StartError::Spawn {
                service: svc.name.clone(),
                program: program.display().to_string(),
                source,
            })?;
        topo.children.push((svc.name.clone(), child));
        topo.logs.insert(svc.name.clone(), log);
        // Ready: its own "listening on ADDR" line where it prints one (a port accepting
        // could be someone else's), and the port accepting; exiting first is an error.
        let said = ready_line(svc.kind, addr);
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some((_, c)) = topo.children.last_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(StartError::Exited {
                        service: svc.name.clone(),
                        status,
                        log: err.display().to_string(),
                    });
                }
            }
            let printed = said.as_ref().is_none_or(|line| {
                std::fs::read_to_string(&err).is_ok_and(|text| text.contains(line.as_str()))
            });
            if printed && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if Instant::now() > end {
                return Err(StartError::NotReady {
                    service: svc.name.clone(),
                    addr,
                    secs: 15,
                    log: err.display().to_string(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(topo)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::parse;

    #[test]
    fn picked_addresses_are_distinct() {
        let addrs = free_addrs(300).expect("ports");
        let mut ports: Vec<u16> = addrs.iter().map(SocketAddr::port).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 300);
    }

    #[test]
    fn a_service_that_exits_during_start_up_is_an_error_not_a_ready_port() {
        // `sh -c 'exit 3'` never listens; before this check, a port some other process
        // happened to hold would have passed for it.
        let text = "duration = \"1s\"\n\
                    [[services]]\nname = \"gone\"\nkind = \"command\"\nargv = [\"sh\", \"-c\", \"exit 3\"]\n\
                    [load]\ntarget = \"gone\"\npath = \"/\"\nschedule = [{ at = \"0s\", rate = 1 }]\n";
        let s = parse(text, "exits.toml").expect("scenario");
        let out = std::env::temp_dir().join(format!("hopline-drill-exits-{}", std::process::id()));
        std::fs::create_dir_all(&out).expect("dir");
        let started = Instant::now();
        let e = start(&s, Path::new("hopline"), Path::new("legacy"), &out).expect_err("exits");
        assert!(
            matches!(&e, StartError::Exited { service, .. } if service == "gone"),
            "{e}"
        );
        assert!(started.elapsed() < Duration::from_secs(10), "{e}");
        let _ = std::fs::remove_dir_all(&out);
    }
}
