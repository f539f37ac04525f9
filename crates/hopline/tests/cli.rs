//! Command-line edges a new user hits: arguments that make no sense are refused with a
//! clear message, and `mock --header` replaces a default header instead of doubling it.

mod common;

use std::io::Write;

use common::*;

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(bin())
        .args(args)
        .output()
        .expect("run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn nonsense_arguments_are_refused_with_the_reason() {
    let (code, err) = run(&["serve", "--threads", "0", "-c", "x.toml"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("'--threads <THREADS>': 0 is not in 1..="),
        "{err}"
    );
    for status in ["0", "999"] {
        let (code, err) = run(&["mock", "--status", status]);
        assert_eq!(code, Some(2));
        assert!(err.contains("is not in 100..=599"), "{err}");
    }
}

#[test]
fn a_mock_header_replaces_the_default_of_the_same_name() {
    let m = mock(&[
        "--header",
        "Content-Type:text/plain",
        "--body",
        "hi",
        "--quiet",
    ]);
    let mut s = connect(m.addr);
    s.write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
        .expect("write");
    let r = read_response(&mut s);
    let types: Vec<&str> = r
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(types, ["text/plain"]);
    assert_eq!(r.body, "hi");
}

#[test]
fn completions_and_the_man_page_cover_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let out = std::process::Command::new(bin())
            .args(["completions", shell])
            .output()
            .expect("run");
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        for cmd in ["serve", "check", "mock", "chaos", "drill"] {
            assert!(text.contains(cmd), "{shell} completion lacks {cmd}");
        }
    }
    let out = std::process::Command::new(bin())
        .arg("man")
        .output()
        .expect("run");
    assert!(out.status.success());
    let man = String::from_utf8_lossy(&out.stdout);
    assert!(man.contains(".TH hopline 1"), "{man}");
    assert!(man.contains("serve") && man.contains("chaos"), "{man}");
}

#[test]
fn schema_prints_the_committed_json_schema() {
    let out = std::process::Command::new(bin())
        .arg("schema")
        .output()
        .expect("run");
    assert!(out.status.success());
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let committed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/hopline.schema.json"
        ))
        .expect("docs/hopline.schema.json"),
    )
    .expect("json");
    assert_eq!(printed, committed);
    assert_eq!(
        printed["properties"]["server"]["additionalProperties"],
        false
    );
}

/// Runs `hopline args` with its stdout a pipe whose reader has already gone, as after
/// `| head` read its lines: the command ends quietly, exit 0 (Unix tools do), no panic.
fn run_into_closed_pipe(args: &[&str]) -> (Option<i32>, String) {
    let mut child = std::process::Command::new(bin())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn output_into_a_closed_pipe_ends_quietly_with_exit_0() {
    let log = temp_file(
        "access.log",
        r#"{"ts":"2026-12-06T10:00:00.000Z","status":504,"flags":["UT"],"route":"r","upstream":"u","zone":"internal","phase":"response_headers","cause":"upstream u 127.0.0.1:1 (internal): response headers timed out after 300ms (request deadline)","duration_ms":300.1}
"#,
    );
    let config = temp_file(
        "hopline.toml",
        "[upstreams.u]\nendpoints = [\"127.0.0.1:9\"]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n",
    );
    let cases: [&[&str]; 6] = [
        &["diagnose", "--format", "json", path(&log)],
        &["diagnose", path(&log)],
        &["man"],
        &["schema"],
        &["completions", "bash"],
        &["check", "-c", path(&config)],
    ];
    for args in cases {
        let (code, err) = run_into_closed_pipe(args);
        assert!(err.is_empty(), "{args:?}: {err}");
        assert!(matches!(code, Some(0 | 1)), "{args:?}: exit {code:?}");
        if args[0] != "check" {
            assert_eq!(code, Some(0), "{args:?}");
        }
    }
}

#[test]
fn help_names_every_command_on_its_first_line() {
    let out = std::process::Command::new(bin())
        .arg("--help")
        .output()
        .expect("run");
    let help = String::from_utf8_lossy(&out.stdout);
    let first = help.lines().next().unwrap_or("");
    for cmd in ["drill", "serve", "check", "diagnose", "mock", "chaos"] {
        assert!(first.contains(cmd), "{cmd} missing from: {first}");
    }
}

#[test]
fn serve_says_what_it_needs_a_missing_config_and_a_busy_port() {
    let empty = temp_dir();
    let out = std::process::Command::new(bin())
        .arg("serve")
        .current_dir(&empty)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no hopline.toml in ")
            && err.contains("(the default of -c)")
            && err.contains("hopline serve -c examples/gateway.toml"),
        "{err}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let config = temp_file("busy.toml", &format!("[server]\nlisten = \"{addr}\"\n"));
    let (code, err) = run(&["serve", "-c", path(&config)]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot listen on server.listen = \"{addr}\": "))
            && err.contains("another process listens there"),
        "{err}"
    );
    assert_eq!(err.matches(&addr.to_string()).count(), 1, "{err}");
}
