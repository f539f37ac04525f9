//! The hopline command: drill, serve, check, diagnose, mock and chaos.
//!
//! Thin by design: parse arguments, load and validate config, call the library crates.
//! Exit codes: 0 success, 1 failure at run time, 2 unusable input (bad config or flags).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};

mod output;

use output::{emit, emit_line};

/// hopline: an HTTP gateway in which every hop knows its deadline and every failure names
/// its real cause.
#[derive(Debug, Parser)]
#[command(name = "hopline", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Config file (TOML).
        #[arg(short, long, default_value = "hopline.toml")]
        config: PathBuf,
        /// Worker threads, 1 or more (default: one per core).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        threads: Option<u16>,
        /// Refuse to start when `hopline check` finds errors.
        #[arg(long)]
        strict: bool,
        /// Also print the audit's notes (errors and warnings are always printed).
        #[arg(long)]
        verbose: bool,
    },
    /// Audit a config's timeout budget and the chain in front of it.
    Check {
        /// Config file (TOML).
        #[arg(short, long, default_value = "hopline.toml")]
        config: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Run a configurable upstream for tests and drills.
    Mock {
        /// Address to listen on (port 0 picks a free port; the address is printed).
        #[arg(long, default_value = "127.0.0.1:9001")]
        listen: SocketAddr,
        /// Wait this long before answering, e.g. `200ms`.
        #[arg(long, value_parser = duration, default_value = "0s")]
        latency: Duration,
        /// Status code to answer with (100–599).
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(100..=599))]
        status: u16,
        /// Response body.
        #[arg(long, default_value = "{\"ok\":true}")]
        body: String,
        /// Extra response header, `NAME:VALUE` (repeatable).
        #[arg(long = "header", value_parser = hopline_mock::parse_header)]
        headers: Vec<(String, String)>,
        /// Close keep-alive connections idle this long.
        #[arg(long, value_parser = duration, default_value = "60s")]
        idle_timeout: Duration,
        /// Do not log requests.
        #[arg(long)]
        quiet: bool,
        /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The private key (PEM) of --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Require client certificates issued by this CA (PEM): mutual TLS.
        #[arg(long, requires = "tls_cert")]
        tls_client_ca: Option<PathBuf>,
        /// Speak HTTP/2 (h2c with prior knowledge; ALPN h2 with TLS) and answer every
        /// request as a gRPC call: the body as its one message, then this grpc-status.
        #[arg(long, value_parser = clap::value_parser!(u16).range(0..=16))]
        grpc: Option<u16>,
    },
    /// Read access logs and say when it started, where first, what, and who cut requests.
    Diagnose {
        /// hopline JSON access logs (several files and instances; merged by time).
        #[arg(required = true)]
        logs: Vec<PathBuf>,
        /// Only lines from this time on (RFC 3339 UTC, e.g. 2026-11-28T14:02:00Z).
        #[arg(long)]
        since: Option<String>,
        /// Only lines before this time (RFC 3339 UTC).
        #[arg(long)]
        until: Option<String>,
        /// Output: a summary to read, JSON for tools, or an HTML page with timelines
        /// (written to --out).
        #[arg(long, default_value = "text", value_parser = ["text", "json", "html"])]
        format: String,
        /// Folder for `--format html` (index.html and diagnosis.json).
        #[arg(long, default_value = "diagnose-report")]
        out: PathBuf,
    },
    /// Run fault drills: the embedded incident (legacy gateway, then hopline) or scenario files.
    Drill {
        /// Scenario files (TOML). None: the embedded incident scenario, run with the legacy
        /// gateway and then with hopline, side by side.
        scenarios: Vec<PathBuf>,
        /// Output folder (one subfolder per scenario with index.html and data.json).
        #[arg(long, default_value = "drill-report")]
        out: PathBuf,
        /// Where the services run: `loopback`, or `kernel` (network namespaces joined
        /// through a real NAT; needs root, `ip` and `nft`). Default: each scenario's own.
        #[arg(long, value_parser = ["loopback", "kernel"])]
        network: Option<String>,
    },
    /// Run the fault-injection proxy (Toxiproxy-compatible API, NAT model, HTTP faults).
    Chaos {
        /// Proxies and toxics to start with (TOML).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// API listen address (default 127.0.0.1:8474, or `api` from the file).
        #[arg(long)]
        api: Option<SocketAddr>,
        /// Seed for every random draw (default: from the clock; always printed).
        #[arg(long)]
        seed: Option<u64>,
        /// Serve /metrics: bytes per proxy and direction (Toxiproxy's proxy metrics),
        /// connections, and what the NAT model stalled or reset.
        #[arg(long)]
        proxy_metrics: bool,
        /// A host name the API answers to beyond IP literals and `localhost` (repeatable);
        /// a request naming another in `Host` is answered 403 (DNS rebinding).
        #[arg(long = "api-allowed-host", value_name = "NAME")]
        api_allowed_hosts: Vec<String>,
    },
    /// Print a shell completion script, e.g. `hopline completions bash > /etc/bash_completion.d/hopline`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `hopline man > /usr/local/share/man/man1/hopline.1`.
    Man,
    /// Print a JSON Schema of the config file, for editors (`#:schema` in a TOML file).
    Schema,
}

/// Output format of `check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// Compiler-style diagnostics with snippets.
    Text,
    /// A JSON array, for CI.
    Json,
}

fn duration(s: &str) -> Result<Duration, String> {
    hopline_config::parse_duration(s).map_err(|e| e.to_string())
}

/// jemalloc, whose background thread returns freed pages to the system within about half
/// a second (`background_thread:true,dirty_decay_ms:500`, set at build time in
/// `.cargo/config.toml`): the memory a burst of requests used is given back even when the
/// process is idle afterwards, which glibc's malloc never does.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Completions { shell } => {
            // Into a buffer first: clap_complete panics on a failed write.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "hopline", &mut script);
            emit(script)
                .map(|()| ExitCode::SUCCESS)
                .map_err(anyhow::Error::from)
        }
        Command::Schema => emit_line(format_args!("{:#}", hopline_config::schema::schema()))
            .map(|()| ExitCode::SUCCESS)
            .map_err(anyhow::Error::from),
        Command::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut page)
                .and_then(|()| emit(page))
                .map(|()| ExitCode::SUCCESS)
                .map_err(anyhow::Error::from)
        }
        Command::Serve {
            config,
            threads,
            strict,
            verbose,
        } => serve(&config, threads.map(usize::from), strict, verbose),
        Command::Check { config, format } => Ok(check(&config, format)),
        Command::Mock {
            listen,
            latency,
            status,
            body,
            headers,
            idle_timeout,
            quiet,
            tls_cert,
            tls_key,
            tls_client_ca,
            grpc,
        } => {
            let tls = match (&tls_cert, &tls_key) {
                (Some(cert), Some(key)) => {
                    match hopline_tls::server::single_cert_config(
                        cert,
                        key,
                        tls_client_ca.as_deref(),
                    ) {
                        Ok(c) => Some(c),
                        Err(e) => {
                            eprintln!("hopline mock: {}", hopline_core::error::cause_chain(&e));
                            return ExitCode::from(2);
                        }
                    }
                }
                _ => None,
            };
            // A gRPC mock offers h2 by ALPN.
            let tls = match (tls, grpc) {
                (Some(t), Some(_)) => {
                    let mut c = (*t).clone();
                    c.alpn_protocols = vec![b"h2".to_vec()];
                    Some(std::sync::Arc::new(c))
                }
                (t, _) => t,
            };
            let mut cfg = hopline_mock::MockConfig {
                latency,
                status,
                body,
                idle_timeout,
                log: !quiet,
                tls,
                grpc,
                ..hopline_mock::MockConfig::default()
            };
            // A --header replaces a default header of the same name instead of adding a
            // second one.
            for (name, value) in headers {
                cfg.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
                cfg.headers.push((name, value));
            }
            mock(listen, cfg)
        }
        Command::Chaos {
            config,
            api,
            seed,
            proxy_metrics,
            api_allowed_hosts,
        } => chaos(
            config.as_deref(),
            api,
            seed,
            hopline_chaos::Options {
                proxy_metrics,
                allowed_hosts: api_allowed_hosts,
            },
        ),
        Command::Diagnose {
            logs,
            since,
            until,
            format,
            out,
        } => diagnose(&logs, (since.as_deref(), until.as_deref()), &format, &out),
        Command::Drill {
            scenarios,
            out,
            network,
        } => drill(&scenarios, &out, network.as_deref()),
    };
    match result {
        Ok(code) => code,
        // `| head` read what it wanted: not a failure.
        Err(e) if output::reader_gone(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hopline: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn runtime(threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    // One thread: a current-thread runtime, with no work-stealing machinery to pay for.
    let mut b = match threads {
        Some(0 | 1) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if let Some(n) = threads.filter(|n| *n > 1) {
        b.worker_threads(n);
    }
    b.enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// How long `check` waits for one name to resolve.
const RESOLVE_LIMIT: Duration = Duration::from_secs(2);

/// For a config file that is not there: what `-c` defaults to and a file to start from.
fn missing_hint(e: &hopline_config::LoadError) -> String {
    match e {
        hopline_config::LoadError::Read { path, source }
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            let here = std::env::current_dir()
                .map(|d| format!(" in {}", d.display()))
                .unwrap_or_default();
            format!(
                "\n  no {}{here}{}; give a config with -c, e.g. `hopline serve -c examples/gateway.toml` \
                 (every key, with its default) in a clone of the repository",
                path.display(),
                if path.as_os_str() == "hopline.toml" { " (the default of -c)" } else { "" }
            )
        }
        _ => String::new(),
    }
}

fn check(path: &std::path::Path, format: Format) -> ExitCode {
    let config = match hopline_config::load(path) {
        Ok(c) => c,
        Err(e) => {
            let message = hopline_core::error::cause_chain(&e);
            if format == Format::Json {
                // Scripts get JSON whatever happened: the problems, each with its place.
                let name = path.display().to_string();
                let _ = emit_line(hopline_config::audit::render_load_error_json(&e, &name));
            } else {
                eprintln!("hopline: {message}{}", missing_hint(&e));
            }
            return ExitCode::from(2);
        }
    };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let resolver = hopline_config::audit::system_resolver(RESOLVE_LIMIT);
    let findings = hopline_config::audit::audit(&config, &text, &resolver);
    let name = path.display().to_string();
    // The exit code says what was found whether or not the reader stayed to the end.
    let _ = match format {
        Format::Text => emit(hopline_config::audit::render_text(&findings, &name, &text)),
        Format::Json => emit_line(hopline_config::audit::render_json(&findings, &name, &text)),
    };
    if findings
        .iter()
        .any(|f| f.severity == hopline_config::audit::Severity::Error)
    {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs the audit of `hopline check` on a loaded config and prints one line per finding,
/// each starting with `prefix`.
fn print_audit(
    path: &std::path::Path,
    config: &hopline_core::config::Config,
    prefix: &str,
    notes: bool,
) -> Vec<hopline_config::audit::Finding> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let resolver = hopline_config::audit::system_resolver(RESOLVE_LIMIT);
    let findings = hopline_config::audit::audit(config, &text, &resolver);
    let shown = findings
        .iter()
        .filter(|f| notes || f.severity != hopline_config::audit::Severity::Note);
    for f in shown {
        let at = f
            .span
            .as_ref()
            .map(|s| hopline_config::Location::of(&text, s.start))
            .map(|l| format!("{}:{}:{}", path.display(), l.line, l.column))
            .unwrap_or_else(|| path.display().to_string());
        eprintln!(
            "{prefix} {}[{}] {at}: {}",
            f.severity.as_str(),
            f.rule,
            f.message
        );
    }
    findings
}

fn serve(
    path: &std::path::Path,
    threads: Option<usize>,
    strict: bool,
    verbose: bool,
) -> anyhow::Result<ExitCode> {
    let config = match hopline_config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "hopline: {}{}",
                hopline_core::error::cause_chain(&e),
                missing_hint(&e)
            );
            return Ok(ExitCode::from(2));
        }
    };
    let findings = print_audit(path, &config, "hopline serve: check", verbose);
    if strict
        && findings
            .iter()
            .any(|f| f.severity == hopline_config::audit::Severity::Error)
    {
        eprintln!(
            "hopline serve: --strict: not starting with config errors (run `hopline check -c {}`)",
            path.display()
        );
        return Ok(ExitCode::from(1));
    }
    let rt = runtime(threads)?;
    rt.block_on(async {
        let backlog = config.server.backlog;
        let mut listeners: Vec<_> = bind_all(&config.server.listen, "server.listen", backlog)
            .await?
            .into_iter()
            .map(hopline_gateway::Listener::plain)
            .collect();
        if let Some(tls) = &config.server.tls {
            let bound = bind_all(&tls.listen, "server.tls.listen", backlog).await?;
            listeners.extend(bound.into_iter().map(hopline_gateway::Listener::tls));
        }
        let admin = match &config.admin {
            Some(a) => bind_all(&a.listen, "admin.listen", 1024).await?,
            None => Vec::new(),
        };
        let gw = hopline_gateway::Gateway::new(config).context("cannot start the gateway")?;
        // Endpoint names get one chance to resolve before the first request; one that
        // does not is answered 503 UH and keeps being resolved.
        gw.settled(gw.config.dns.timeout + Duration::from_secs(1))
            .await;
        let current = hopline_gateway::Current::new(gw);
        // Signals are watched before the first "listening" line: a SIGHUP or SIGTERM sent
        // as soon as that line appears must reload or drain, not kill the process.
        let stop = hopline_signal::termination();
        let hup = hopline_signal::hangups().context("cannot watch SIGHUP")?;
        for l in &listeners {
            let addr = l.tcp.local_addr()?;
            if l.tls {
                eprintln!("hopline serve: TLS on {addr}");
            } else {
                eprintln!("hopline serve: listening on {addr}");
            }
        }
        for a in &admin {
            eprintln!("hopline serve: admin on {}", a.local_addr()?);
        }
        let reloader = tokio::spawn(reload_on_sighup(
            hup,
            path.to_path_buf(),
            current.clone(),
            verbose,
        ));
        hopline_gateway::run(listeners, admin, current, async {
            stop.await;
            eprintln!("hopline serve: draining");
        })
        .await;
        reloader.abort();
        eprintln!("hopline serve: stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// Binds `addr`: the address itself, or every address its host name resolves to. An
/// address the machine does not have (say `::1` with IPv6 off) is skipped with a warning
/// when another one was bound; any other failure is an error.
async fn bind_all(
    addr: &hopline_core::config::ListenAddr,
    key: &str,
    backlog: u32,
) -> anyhow::Result<Vec<tokio::net::TcpListener>> {
    let mut addrs: Vec<SocketAddr> = match addr.ip() {
        Some(a) => vec![a],
        None => tokio::net::lookup_host((addr.host.as_str(), addr.port))
            .await
            .with_context(|| format!("{key} = \"{addr}\": cannot resolve {}", addr.host))?
            .collect(),
    };
    addrs.sort();
    addrs.dedup();
    let mut bound = Vec::new();
    let mut skipped = Vec::new();
    for a in &addrs {
        match listen(*a, backlog) {
            Ok(l) => bound.push(l),
            Err(e)
                if addrs.len() > 1
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::AddrNotAvailable | std::io::ErrorKind::Unsupported
                    ) =>
            {
                skipped.push(format!("{a} ({e})"));
            }
            Err(e) => {
                // The address once, the host name's address only when it differs.
                let target = match addr.ip() {
                    Some(_) => format!("{key} = \"{addr}\""),
                    None => format!("{key} = \"{addr}\" ({a})"),
                };
                let hint = match e.kind() {
                    std::io::ErrorKind::AddrInUse => format!(
                        "; another process listens there (`ss -ltnp 'sport = :{}'` shows which): stop it or choose another port",
                        a.port()
                    ),
                    std::io::ErrorKind::PermissionDenied => {
                        "; ports below 1024 need root or CAP_NET_BIND_SERVICE".to_string()
                    }
                    _ => String::new(),
                };
                anyhow::bail!("cannot listen on {target}: {e}{hint}");
            }
        }
    }
    if bound.is_empty() {
        anyhow::bail!(
            "cannot listen: {key} = \"{addr}\" resolves to no address this machine has ({})",
            skipped.join(", ")
        );
    }
    for s in skipped {
        eprintln!("hopline serve: warning: {key} = \"{addr}\": skipping {s}");
    }
    Ok(bound)
}

/// A listening socket on `addr` with `SO_REUSEADDR` (a restart can bind while old
/// connections are in TIME_WAIT) and a queue of `backlog` completed connections (the
/// kernel caps it at `net.core.somaxconn`).
fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// On SIGHUP, re-reads the config: a valid one is put in force for new requests; an
/// invalid one is reported (file:line:key) and the old one stays.
async fn reload_on_sighup(
    mut hup: hopline_signal::Hangups,
    path: PathBuf,
    current: std::sync::Arc<hopline_gateway::Current>,
    notes: bool,
) {
    while hup.recv().await.is_some() {
        let old = current.load();
        let result = match hopline_config::load(&path) {
            Ok(config) => {
                // The audit may resolve names (bounded by RESOLVE_LIMIT): off the runtime.
                let (p, c) = (path.clone(), config.clone());
                let _ = tokio::task::spawn_blocking(move || {
                    print_audit(&p, &c, "hopline serve: reload: check", notes)
                })
                .await;
                old.reloaded(config).map_err(anyhow::Error::from)
            }
            Err(e) => Err(anyhow::Error::from(e)),
        };
        if let Ok((gw, _)) = &result {
            gw.settled(gw.config.dns.timeout + Duration::from_secs(1))
                .await;
        }
        match result {
            Ok((gw, not_applied)) => {
                for n in &not_applied {
                    eprintln!(
                        "hopline serve: reload: {} changed to {} — not applied, needs a restart; still {}",
                        n.key, n.wanted, n.in_force
                    );
                }
                current.store(gw);
                old.metrics.reload(true);
                eprintln!("hopline serve: reloaded {}", path.display());
            }
            Err(e) => {
                old.metrics.reload(false);
                eprintln!("hopline serve: reload failed, old config stays in force: {e:#}");
            }
        }
    }
}

fn mock(listen: SocketAddr, config: hopline_mock::MockConfig) -> anyhow::Result<ExitCode> {
    let rt = runtime(None)?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let stop = hopline_signal::termination();
        eprintln!("hopline mock: listening on {}", listener.local_addr()?);
        hopline_mock::run(listener, config, stop).await;
        Ok(ExitCode::SUCCESS)
    })
}

fn chaos(
    file: Option<&std::path::Path>,
    api: Option<SocketAddr>,
    seed: Option<u64>,
    options: hopline_chaos::Options,
) -> anyhow::Result<ExitCode> {
    let parsed = match file.map(hopline_chaos::load).transpose() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("hopline: {}", hopline_core::error::cause_chain(&e));
            return Ok(ExitCode::from(2));
        }
    };
    let seed = seed
        .or(parsed.as_ref().and_then(|f| f.seed))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    let api = api
        .or(parsed.as_ref().and_then(|f| f.api))
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8474)));
    let rt = runtime(None)?;
    rt.block_on(async {
        let stop = hopline_signal::termination();
        let registry = std::sync::Arc::new(hopline_chaos::Registry::new(seed));
        let listener = tokio::net::TcpListener::bind(api)
            .await
            .with_context(|| format!("cannot listen on {api}"))?;
        eprintln!("hopline chaos: seed {seed}");
        eprintln!("hopline chaos: api listening on {}", listener.local_addr()?);
        for (spec, toxics) in parsed.map(|f| f.proxies).unwrap_or_default() {
            let name = spec.name.clone();
            let p = registry
                .create(spec, toxics)
                .await
                .map_err(|e| anyhow::anyhow!("proxy {name}: {e}"))?;
            let n = p["toxics"].as_array().map_or(0, Vec::len);
            eprintln!(
                "hopline chaos: proxy {name} on {} -> {} ({n} toxic{})",
                p["listen"].as_str().unwrap_or(""),
                p["upstream"].as_str().unwrap_or(""),
                if n == 1 { "" } else { "s" }
            );
        }
        hopline_chaos::serve(listener, registry, options, stop).await;
        Ok(ExitCode::SUCCESS)
    })
}

fn diagnose(
    logs: &[PathBuf],
    (since, until): (Option<&str>, Option<&str>),
    format: &str,
    out: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    let time = |what: &str, v: Option<&str>| -> anyhow::Result<Option<f64>> {
        v.map(|t| {
            hopline_diagnose::input::epoch(t).with_context(|| {
                format!("--{what} {t:?}: expected an RFC 3339 UTC time, e.g. 2026-11-28T14:02:00Z")
            })
        })
        .transpose()
    };
    let opts = hopline_diagnose::Options {
        since: time("since", since)?,
        until: time("until", until)?,
    };
    let report = hopline_diagnose::diagnose(logs, &opts)?;
    if report.skipped > 0 {
        eprintln!(
            "hopline diagnose: warning: {} line(s) were not access records and were skipped",
            report.skipped
        );
    }
    match format {
        "json" => emit_line(format_args!("{:#}", report.to_json()))?,
        "html" => {
            std::fs::create_dir_all(out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            let page = out.join("index.html");
            std::fs::write(&page, hopline_drill::report::diagnose_page(&report))
                .with_context(|| format!("cannot write {}", page.display()))?;
            let json = out.join("diagnosis.json");
            std::fs::write(&json, format!("{:#}\n", report.to_json()))
                .with_context(|| format!("cannot write {}", json.display()))?;
            emit(format!("{}report: {}\n", report.text(), page.display()))?;
        }
        _ => emit(report.text())?,
    }
    Ok(ExitCode::SUCCESS)
}

fn drill(
    files: &[PathBuf],
    out: &std::path::Path,
    network: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let mut scenarios = Vec::new();
    if files.is_empty() {
        // The embedded incident; on a kernel network, its variant behind a real NAT.
        let embedded = if network == Some("kernel") {
            [
                (
                    "incident-legacy-kernel (embedded)",
                    hopline_drill::INCIDENT_LEGACY_KERNEL,
                ),
                (
                    "incident-hopline-kernel (embedded)",
                    hopline_drill::INCIDENT_HOPLINE_KERNEL,
                ),
            ]
        } else {
            [
                ("incident-legacy (embedded)", hopline_drill::INCIDENT_LEGACY),
                (
                    "incident-hopline (embedded)",
                    hopline_drill::INCIDENT_HOPLINE,
                ),
            ]
        };
        for (name, text) in embedded {
            scenarios.push(hopline_drill::parse(text, name)?);
        }
    }
    for f in files {
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("hopline: cannot read scenario file {}: {e}", f.display());
                return Ok(ExitCode::from(2));
            }
        };
        match hopline_drill::parse(&text, &f.display().to_string()) {
            Ok(s) => scenarios.push(s),
            Err(e) => {
                eprintln!("hopline: {}", hopline_core::error::cause_chain(&e));
                return Ok(ExitCode::from(2));
            }
        }
    }
    if let Some(n) = network {
        let mode = if n == "kernel" {
            hopline_drill::scenario::NetworkMode::Kernel
        } else {
            hopline_drill::scenario::NetworkMode::Loopback
        };
        for s in &mut scenarios {
            s.network = mode;
        }
    }
    if scenarios
        .iter()
        .any(|s| s.network == hopline_drill::scenario::NetworkMode::Kernel)
    {
        if let Err(e) = hopline_drill::network::available() {
            eprintln!("hopline drill: {e}; nothing was started");
            return Ok(ExitCode::from(2));
        }
    }
    let exe = std::env::current_exe().context("cannot find the hopline executable")?;
    let programs = hopline_drill::Programs {
        legacy: exe.with_file_name("legacy-gateway"),
        hopline: exe,
    };
    if scenarios.iter().any(|s| {
        s.services
            .iter()
            .any(|x| x.kind == hopline_drill::scenario::Kind::LegacyGateway)
    }) && !programs.legacy.exists()
    {
        anyhow::bail!(
            "{} not found: build it next to hopline with `cargo build --release -p hopline -p legacy-gateway` (or `cargo install --locked --path examples/legacy-gateway`)",
            programs.legacy.display()
        );
    }
    let rt = runtime(None)?;
    let mut results = Vec::new();
    for s in &scenarios {
        let dir = out.join(&s.name);
        eprintln!(
            "hopline drill: running {} ({} s, seed {})",
            s.name,
            s.duration.as_secs(),
            s.seed
        );
        let r = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            let bar = indicatif::ProgressBar::new(s.duration.as_secs());
            bar.set_style(
                indicatif::ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} s {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_prefix(s.name.clone());
            let r = rt.block_on(hopline_drill::run(s, &programs, &dir, |p| {
                bar.set_position(p.elapsed);
                bar.set_message(format!("{} requests", p.sent));
            }));
            bar.finish_and_clear();
            r?
        } else {
            rt.block_on(hopline_drill::run(s, &programs, &dir, |p| {
                if p.elapsed % 5 == 0 {
                    eprintln!(
                        "hopline drill: {}: {}/{} s, {} requests sent",
                        s.name, p.elapsed, p.total, p.sent
                    );
                }
            }))?
        };
        emit(format!(
            "{}  report: {}\n",
            r.summary,
            dir.join("index.html").display()
        ))?;
        let interrupted = r.interrupted;
        results.push(r);
        if interrupted {
            // Told to stop: no further scenarios.
            break;
        }
    }
    if results.len() > 1 {
        emit_line(hopline_drill::report::side_by_side(&results))?;
    }
    Ok(if results.iter().all(|r| r.passed) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
