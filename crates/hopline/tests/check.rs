//! `hopline check`: one test per rule (a config that trips it, one that does not), the JSON
//! format, exit codes, diagnostics pointing at the right line, and the audit in `serve`.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;

fn check(path: &Path) -> (Option<i32>, Vec<Value>) {
    let out = Command::new(bin())
        .args([
            "check",
            "-c",
            path.to_str().expect("utf8"),
            "--format",
            "json",
        ])
        .output()
        .expect("run check");
    let findings = serde_json::from_slice::<Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default();
    (out.status.code(), findings)
}

fn rules(findings: &[Value]) -> Vec<String> {
    findings
        .iter()
        .map(|f| f["rule"].as_str().unwrap_or("").to_string())
        .collect()
}

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

const SERVER: &str = "[server]\nheader_read_timeout = \"5s\"\nbody_read_timeout = \"10s\"\nwrite_timeout = \"10s\"\nidle_timeout = \"75s\"\n";

fn with(extra: &str) -> String {
    format!("{SERVER}[upstreams.a]\nendpoints = [\"127.0.0.1:9001\"]\ntimeout = \"500ms\"\n{extra}")
}

#[test]
fn the_incident_config_trips_every_rule_it_broke() {
    let (code, findings) = check(&examples().join("incident.toml"));
    assert_eq!(code, Some(1));
    let r = rules(&findings);
    for rule in [
        "front-timeout",
        "front-idle",
        "upstream-idle",
        "sequential-budget",
        "internal-public-address",
        "egress-unlimited",
    ] {
        assert!(r.contains(&rule.to_string()), "{rule} missing from {r:?}");
    }
    let front = findings
        .iter()
        .find(|f| f["rule"] == "front-timeout")
        .expect("front-timeout");
    assert_eq!(
        (front["severity"].as_str(), front["line"].as_u64()),
        (Some("error"), Some(42))
    );
    assert!(front["message"]
        .as_str()
        .expect("msg")
        .contains("5.005s is not below front.timeout 5s"));
    let seq = findings
        .iter()
        .find(|f| f["rule"] == "sequential-budget")
        .expect("sequential");
    assert!(
        seq["message"]
            .as_str()
            .expect("msg")
            .contains("coupons 4s + coin 4s + sub_coin 4s = 12s > deadline 5s"),
        "{seq}"
    );
}

#[test]
fn the_benefits_example_passes_clean() {
    let (code, findings) = check(&examples().join("benefits.toml"));
    assert_eq!((code, findings.len()), (Some(0), 0), "{findings:?}");
}

#[test]
fn each_rule_trips_on_a_bad_config_and_not_on_a_good_one() {
    let route = |t: &str| {
        format!("[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"a\"\ntimeout = \"{t}\"\n")
    };
    let cases: Vec<(&str, String, String)> = vec![
        ("front-timeout", with(&format!("[front]\ntimeout = \"1s\"\n{}", route("1s"))), with(&format!("[front]\ntimeout = \"1s\"\n{}", route("900ms")))),
        ("front-idle", with("[front]\nidle_timeout = \"75s\"\n"), with("[front]\nidle_timeout = \"60s\"\n")),
        (
            "upstream-idle",
            with("[upstreams.b]\nendpoints = [\"127.0.0.1:1\"]\npool_idle_timeout = \"60s\"\nserver_idle_timeout = \"60s\"\n"),
            with("[upstreams.b]\nendpoints = [\"127.0.0.1:1\"]\npool_idle_timeout = \"30s\"\nserver_idle_timeout = \"60s\"\n"),
        ),
        ("timeout-cut-by-deadline", with(&route("400ms")), with(&route("2s"))),
        (
            "nat-idle",
            with("[egress]\nmax_in_flight = 10\nnat_idle_timeout = \"40s\"\n[upstreams.b]\nendpoints = [\"203.0.113.5:80\"]\nzone = \"egress\"\n"),
            with("[egress]\nmax_in_flight = 10\nnat_idle_timeout = \"350s\"\n[upstreams.b]\nendpoints = [\"203.0.113.5:80\"]\nzone = \"egress\"\n"),
        ),
        (
            "sequential-budget",
            with("[[routes]]\nname = \"s\"\npath = \"/s\"\ntimeout = \"1s\"\naggregate.mode = \"sequential\"\n[[routes.aggregate.calls]]\nname = \"x\"\nupstream = \"a\"\npath = \"/x\"\n[[routes.aggregate.calls]]\nname = \"y\"\nupstream = \"a\"\npath = \"/y\"\n"),
            with("[[routes]]\nname = \"s\"\npath = \"/s\"\ntimeout = \"1s\"\naggregate.mode = \"sequential\"\n[[routes.aggregate.calls]]\nname = \"x\"\nupstream = \"a\"\npath = \"/x\"\ntimeout = \"400ms\"\n[[routes.aggregate.calls]]\nname = \"y\"\nupstream = \"a\"\npath = \"/y\"\ntimeout = \"400ms\"\n"),
        ),
        ("server-timeout-absurd", with("").replace("header_read_timeout = \"5s\"", "header_read_timeout = \"2m\""), with("")),
        (
            "route-shadowed",
            with("[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"a\"\n[[routes]]\nname = \"x\"\npath = \"/x\"\nupstream = \"a\"\n"),
            with("[[routes]]\nname = \"x\"\npath = \"/x\"\nupstream = \"a\"\n[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"a\"\n"),
        ),
        (
            "resolve-failed",
            with("[egress]\nmax_in_flight = 10\n[upstreams.b]\nendpoints = [\"no-such-host.invalid:80\"]\nzone = \"egress\"\n"),
            with("[egress]\nmax_in_flight = 10\n[upstreams.b]\nendpoints = [\"127.0.0.1:80\"]\nzone = \"egress\"\n"),
        ),
        (
            "internal-public-address",
            with("[upstreams.b]\nendpoints = [\"198.51.100.7:80\"]\n"),
            with("[upstreams.b]\nendpoints = [\"10.1.2.3:80\", \"localhost:80\"]\n"),
        ),
        (
            "egress-unlimited",
            with("[upstreams.b]\nendpoints = [\"127.0.0.1:1\"]\nzone = \"egress\"\n"),
            with("[egress]\nmax_in_flight = 10\n[upstreams.b]\nendpoints = [\"127.0.0.1:1\"]\nzone = \"egress\"\n"),
        ),
        (
            "egress-single-endpoint",
            with("[egress]\nmax_in_flight = 10\n[upstreams.b]\nendpoints = [\"127.0.0.1:1\"]\nzone = \"egress\"\n"),
            with("[egress]\nmax_in_flight = 10\n[upstreams.b]\nendpoints = [\"127.0.0.1:1\"]\nzone = \"egress\"\n[upstreams.b.health]\npath = \"/healthz\"\n"),
        ),
        (
            "ejection-unbounded",
            with("[upstreams.b]\nendpoints = [\"127.0.0.1:1\"]\n[upstreams.b.outlier]\nmax_ejection_percent = 100\n"),
            with("[upstreams.b]\nendpoints = [\"127.0.0.1:1\"]\n[upstreams.b.outlier]\nmax_ejection_percent = 50\n"),
        ),
        (
            "health-timeout-not-below-interval",
            with("[upstreams.b]\nendpoints = [\"127.0.0.1:1\"]\n[upstreams.b.health]\npath = \"/h\"\ninterval = \"1s\"\ntimeout = \"1s\"\n"),
            with("[upstreams.b]\nendpoints = [\"127.0.0.1:1\"]\n[upstreams.b.health]\npath = \"/h\"\ninterval = \"1s\"\ntimeout = \"500ms\"\n"),
        ),
        (
            "shared-replicas-unset",
            with("[egress]\nmax_in_flight = 100\nshared = \"redis://127.0.0.1:6379\"\nscope = \"nat\"\n"),
            with("[egress]\nmax_in_flight = 100\nshared = \"redis://127.0.0.1:6379\"\nscope = \"nat\"\nexpected_replicas = 3\n"),
        ),
        (
            "shared-without-budget",
            with("[egress]\nshared = \"redis://127.0.0.1:6379\"\nscope = \"nat\"\nexpected_replicas = 3\n"),
            with("[egress]\nmax_new_connections_per_sec = 90\nshared = \"redis://127.0.0.1:6379\"\nscope = \"nat\"\nexpected_replicas = 3\n"),
        ),
        (
            "tls-file-invalid",
            with("[egress]\nmax_in_flight = 100\nshared = \"rediss://127.0.0.1:6380\"\nscope = \"nat\"\nexpected_replicas = 3\nca = \"/nonexistent/redis-ca.pem\"\n"),
            with("[egress]\nmax_in_flight = 100\nshared = \"rediss://127.0.0.1:6380\"\nscope = \"nat\"\nexpected_replicas = 3\n"),
        ),
        (
            "egress-over-nat-limit",
            with("[egress]\nmax_new_connections_per_sec = 1200\nnat_limit = 900\n"),
            with("[egress]\nmax_new_connections_per_sec = 900\nnat_limit = 900\n"),
        ),
    ];
    for (rule, bad, good) in cases {
        let (_, f) = check(&temp_file("bad.toml", &bad));
        assert!(
            rules(&f).contains(&rule.to_string()),
            "{rule} not found in {f:?}\n{bad}"
        );
        let (_, f) = check(&temp_file("good.toml", &good));
        assert!(
            !rules(&f).contains(&rule.to_string()),
            "{rule} found in the good config: {f:?}\n{good}"
        );
    }
}

#[test]
fn a_config_that_leaves_everything_to_the_defaults_is_clean() {
    let plain = "[upstreams.a]\nendpoints = [\"127.0.0.1:9001\"]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"a\"\n";
    let (code, findings) = check(&temp_file("defaults.toml", plain));
    assert_eq!((code, findings.len()), (Some(0), 0), "{findings:?}");
}

/// Checks `text` and serves it: `check` must fail with `resolve-failed` on `key` and
/// `serve` must refuse to start (a listen address that does not resolve). Returns what `serve` printed on stderr.
fn check_and_serve_refuse(name: &str, text: &str, key: &str) -> String {
    let path = temp_file(name, text);
    let (code, findings) = check(&path);
    assert_eq!(code, Some(1), "{findings:?}");
    assert!(
        findings
            .iter()
            .any(|f| f["rule"] == "resolve-failed" && f["key"] == key),
        "{findings:?}"
    );
    let out = Command::new(bin())
        .args(["serve", "-c", path.to_str().expect("utf8")])
        .output()
        .expect("run");
    assert!(!out.status.success(), "serve started with {text}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_endpoint_that_does_not_resolve_is_a_warning_not_a_refusal() {
    // `serve` starts and answers 503 UH for the upstream while it keeps resolving
    // (tests/endpoints.rs); `check` says so.
    let text = "[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.a]\nendpoints = [\"no-such-host.invalid:80\"]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"a\"\n";
    let (code, findings) = check(&temp_file("unresolvable.toml", text));
    assert_eq!(code, Some(0), "{findings:?}");
    assert!(
        findings.iter().any(|f| f["rule"] == "resolve-failed"
            && f["severity"] == "warning"
            && f["key"] == "upstreams.a.endpoints"
            && f["message"].as_str().is_some_and(|m| m.contains("503 UH"))),
        "{findings:?}"
    );
}

#[test]
fn check_and_serve_agree_on_a_listen_name_that_does_not_resolve() {
    let text = "[server]\nlisten = \"no-such-host.invalid:0\"\n";
    let err = check_and_serve_refuse("unresolvable-listen.toml", text, "server.listen");
    assert!(
        err.contains(
            "server.listen = \"no-such-host.invalid:0\": cannot resolve no-such-host.invalid"
        ),
        "{err}"
    );
}

#[test]
fn exit_codes_and_text_diagnostics() {
    let bad = temp_file("broken.toml", "[server]\nlisten = 5\n");
    let (code, _) = check(&bad);
    assert_eq!(code, Some(2));
    let path = examples().join("incident.toml");
    let out = Command::new(bin())
        .args(["check", "-c", path.to_str().expect("utf8")])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("front-timeout")
            && text.contains("help: set this route's timeout below 4.995s"),
        "{text}"
    );
    assert!(text.contains("incident.toml:42:1"), "{text}");
    assert!(text.contains("3 error(s)"), "{text}");
}

#[test]
fn serve_logs_the_audit_and_strict_refuses_errors() {
    let text = "[server]\nlisten = \"127.0.0.1:0\"\nidle_timeout = \"30s\"\n[front]\nidle_timeout = \"60s\"\n";
    let path = temp_file("audited.toml", text);
    let gw = Proc::spawn(&["serve", "-c", path.to_str().expect("utf8")]);
    gw.stderr
        .wait_for(std::time::Duration::from_secs(5), "audit line", |l| {
            l.contains("check error[front-idle]")
        });
    drop(gw);
    let out = Command::new(bin())
        .args(["serve", "--strict", "-c", path.to_str().expect("utf8")])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--strict"));
}

#[test]
fn tls_certificates_keys_and_settings_are_checked() {
    use common::pki::{Ca, Validity};
    let ca = Ca::new("check");
    let good = ca.leaf("good", "good", &["localhost"], Validity::Good);
    let expired = ca.leaf(
        "expired",
        "expired",
        &["localhost"],
        Validity::ExpiredOn(2026, 10, 1),
    );
    let expiring = ca.leaf(
        "expiring",
        "expiring",
        &["localhost"],
        Validity::EndsInDays(5),
    );
    let other = ca.leaf("other", "other", &["localhost"], Validity::Good);
    let garbage = temp_file("garbage.pem", "not a certificate\n");
    // The good key, readable by everyone.
    let readable = temp_file(
        "readable.key",
        &std::fs::read_to_string(&good.key).expect("read key"),
    );
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&readable, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let p = |p: &Path| p.to_str().expect("utf8").to_string();
    let listener = |cert: &Path, key: &Path| {
        format!(
            "[server.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n",
            p(cert),
            p(key)
        )
    };
    let upstream = |zone: &str, endpoint: &str, extra: &str| {
        format!("[egress]\nmax_in_flight = 10\n[upstreams.u]\nendpoints = [\"{endpoint}\"]\nzone = \"{zone}\"\n{extra}\n")
    };
    let ca_line = format!("ca = \"{}\"", p(&ca.cert));
    let cases: Vec<(&str, &str, String)> = vec![
        (
            "tls-cert-expired",
            "error",
            listener(&expired.cert, &expired.key),
        ),
        (
            "tls-cert-expiring",
            "warning",
            listener(&expiring.cert, &expiring.key),
        ),
        (
            "tls-key-mismatch",
            "error",
            listener(&good.cert, &other.key),
        ),
        ("tls-file-invalid", "error", listener(&garbage, &good.key)),
        (
            "tls-key-readable",
            "warning",
            listener(&good.cert, &readable),
        ),
        (
            "tls-file-invalid",
            "error",
            upstream(
                "internal",
                "https://localhost:1",
                &format!("ca = \"{}\"", p(&garbage)),
            ),
        ),
        (
            "tls-insecure-skip-verify",
            "error",
            upstream(
                "egress",
                "https://localhost:1",
                "insecure_skip_verify = true",
            ),
        ),
        (
            "tls-insecure-skip-verify",
            "warning",
            upstream(
                "internal",
                "https://localhost:1",
                "insecure_skip_verify = true",
            ),
        ),
        (
            "egress-plaintext",
            "note",
            upstream("egress", "198.51.100.7:80", ""),
        ),
    ];
    for (rule, severity, text) in cases {
        let (_, f) = check(&temp_file("tls.toml", &text));
        assert!(
            f.iter()
                .any(|x| x["rule"] == rule && x["severity"] == severity),
            "{rule}/{severity} not in {f:?}\n{text}"
        );
    }
    // A good listener and a verified egress upstream over TLS: nothing to say.
    let clean = format!(
        "{}{}",
        listener(&good.cert, &good.key),
        upstream("egress", "https://localhost:1", &ca_line)
    );
    let (code, f) = check(&temp_file("tls-good.toml", &clean));
    // One endpoint without health checks is a note of its own (endpoint rules).
    let f: Vec<_> = f
        .into_iter()
        .filter(|x| x["rule"] != "egress-single-endpoint")
        .collect();
    assert_eq!((code, f.len()), (Some(0), 0), "{f:?}\n{clean}");
}
