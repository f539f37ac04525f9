//! The config reference is complete: every key the schema knows (what the reader accepts)
//! is in docs/config.md and in examples/gateway.toml, and the example names no other key.
//! In the example a key is in force, except the few that need a file or a service of the
//! user's, which are there commented out with an example value.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Keys that need a certificate, Redis, a collector or a name server of the user's: in
/// examples/gateway.toml as `# key = value` lines.
const NEEDS_YOURS: &[&str] = &[
    "server.tls.listen",
    "server.tls.cert",
    "server.tls.key",
    "server.tls.min_version",
    "server.tls.certs[].server_names",
    "server.tls.certs[].cert",
    "server.tls.certs[].key",
    "upstreams.N.tls",
    "upstreams.N.sni",
    "upstreams.N.ca",
    "upstreams.N.client_cert",
    "upstreams.N.client_key",
    "upstreams.N.alpn",
    "upstreams.N.insecure_skip_verify",
    "egress.shared",
    "egress.scope",
    "egress.password_env",
    "egress.ca",
    "egress.expected_replicas",
    "egress.fallback_after",
    "egress.nat_limit",
    "dns.nameservers",
    "tracing.otlp_endpoint",
    "tracing.ca",
    "tracing.sample_ratio",
    "tracing.max_sampled_per_sec",
    "tracing.service_name",
    "tracing.protocol",
];

/// Every leaf key of the schema, dotted: `upstreams.N.timeout`, `routes[].name`.
fn schema_keys() -> BTreeSet<String> {
    fn walk(node: &Value, path: &str, out: &mut BTreeSet<String>) {
        let join = |k: &str| {
            if path.is_empty() {
                k.to_string()
            } else {
                format!("{path}.{k}")
            }
        };
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            for (k, v) in props {
                walk(v, &join(k), out);
            }
        } else if let Some(each) = node
            .get("additionalProperties")
            .filter(|a| a.get("properties").is_some())
        {
            walk(each, &join("N"), out);
        } else if let Some(item) = node
            .get("items")
            .filter(|i| node["type"] == "array" && i.get("properties").is_some())
        {
            walk(item, &format!("{path}[]"), out);
        } else {
            out.insert(path.to_string());
        }
    }
    let mut out = BTreeSet::new();
    walk(&hopline_config::schema::schema(), "", &mut out);
    out
}

/// A table header's path as the schema spells it: `upstreams.coupon.health` →
/// `upstreams.N.health`, `[[routes.aggregate.calls]]` → `routes[].aggregate.calls[]`.
fn generic(header: &str, array: bool) -> String {
    let parts: Vec<&str> = header.split('.').collect();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < parts.len() {
        let p = parts[i];
        match p {
            "upstreams" => {
                out.push("upstreams".into());
                if i + 1 < parts.len() {
                    out.push("N".into());
                    i += 1;
                }
            }
            "routes" | "calls" | "certs" => out.push(format!("{p}[]")),
            _ => out.push(p.into()),
        }
        i += 1;
    }
    let joined = out.join(".");
    if array && !joined.ends_with("[]") {
        format!("{joined}[]")
    } else {
        joined
    }
}

/// The keys examples/gateway.toml sets, each with whether it is in force (false: a
/// commented-out `# key = value` line). Comment lines that are prose are not keys.
fn example_keys(text: &str) -> Vec<(String, bool)> {
    let mut section = String::new();
    let mut keys = Vec::new();
    for raw in text.lines() {
        let (line, active) = match raw.trim_start().strip_prefix('#') {
            Some(rest) => (rest.trim_start(), false),
            None => (raw.trim_start(), true),
        };
        let line = line.split(" #").next().unwrap_or("").trim_end();
        if let Some(h) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
            section = generic(h.trim(), true);
        } else if let Some(h) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            if !h.contains(['"', ' ']) {
                section = generic(h.trim(), false);
            }
        } else if let Some((k, _)) = line.split_once(" = ") {
            let k = k.trim();
            if !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.' || c.is_ascii_digit())
            {
                keys.push((format!("{section}.{k}"), active));
            }
        }
    }
    keys
}

#[test]
fn every_key_the_schema_knows_is_in_the_reference() {
    let doc = std::fs::read_to_string(repo().join("docs/config.md")).expect("docs/config.md");
    let missing: Vec<String> = schema_keys()
        .into_iter()
        .filter(|k| !doc.contains(&format!("`{k}`")))
        .collect();
    assert!(missing.is_empty(), "not in docs/config.md: {missing:?}");
    // And the reference names no key the schema does not know.
    let known = schema_keys();
    let stale: Vec<&str> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|k| !known.contains(*k))
        .collect();
    assert!(
        stale.is_empty(),
        "docs/config.md names unknown keys: {stale:?}"
    );
}

#[test]
fn examples_gateway_toml_has_every_key() {
    let path = repo().join("examples/gateway.toml");
    let text = std::fs::read_to_string(&path).expect("examples/gateway.toml");
    let found = example_keys(&text);
    let known = schema_keys();
    let unknown: Vec<&String> = found
        .iter()
        .map(|(k, _)| k)
        .filter(|k| !known.contains(*k))
        .collect();
    assert!(unknown.is_empty(), "not keys of the schema: {unknown:?}");
    for key in &known {
        let active = found.iter().any(|(k, on)| k == key && *on);
        let commented = found.iter().any(|(k, on)| k == key && !*on);
        if NEEDS_YOURS.contains(&key.as_str()) {
            assert!(
                active || commented,
                "{key}: not in examples/gateway.toml, not even commented out"
            );
        } else {
            assert!(active, "{key}: not set in examples/gateway.toml");
        }
    }
    // And the example is a config hopline accepts as it is.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hopline"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .expect("check");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("0 error(s), 0 warning(s)"), "{said}");
}

#[test]
fn the_example_scanner_reads_sections_and_commented_keys() {
    let text = "[server]\nlisten = \"x\"  # a comment\n# [server.tls]\n# cert = \"c.pem\"\n\
                [upstreams.coupon.health]\npath = \"/h\"\n# Prose: not = a key, really\n\
                [[routes]]\nname = \"r\"\naggregate.mode = \"parallel\"\n\
                [[routes.aggregate.calls]]\nfallback = { a = 1 }\n";
    assert_eq!(
        example_keys(text),
        [
            ("server.listen".to_string(), true),
            ("server.tls.cert".to_string(), false),
            ("upstreams.N.health.path".to_string(), true),
            ("routes[].name".to_string(), true),
            ("routes[].aggregate.mode".to_string(), true),
            ("routes[].aggregate.calls[].fallback".to_string(), true),
        ]
    );
}

#[test]
fn readmes_check_sample_ends_with_what_check_prints() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hopline"))
        .args(["check", "-c"])
        .arg(repo().join("examples/incident.toml"))
        .current_dir(repo())
        .output()
        .expect("check");
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = text
        .lines()
        .rev()
        .find(|l| l.contains("error(s)"))
        .expect("summary line")
        .replace(&repo().join("examples").display().to_string(), "examples");
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    assert!(
        readme.lines().any(|l| l.trim() == summary.trim()),
        "README's `hopline check` sample should end with: {summary}"
    );
}
