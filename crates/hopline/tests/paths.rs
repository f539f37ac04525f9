//! Request paths are normalized before routing, over HTTP/1 and HTTP/2: a dot segment,
//! encoded or not, cannot walk out of a routed prefix; the upstream receives and the log
//! shows the normalized path; `escaped_slashes` and `merge_slashes` do what they say.
//! (Each HTTP/1 vector, against nginx and HAProxy too: tests/vectors/mod.rs.)

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use http::{Method, Request, StatusCode};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

/// Only `/public/` is routed, to a mock that logs the path it received.
fn gateway_in_front(server_extra: &str) -> (Proc, Proc) {
    let up = mock(&[]);
    let gw = gateway(
        &format!("h2c = true\n{server_extra}"),
        &format!(
            "[upstreams.m]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"public\"\npath_prefix = \"/public/\"\nupstream = \"m\"\n",
            up.addr
        ),
    );
    (gw, up)
}

/// The path the mock logged for the request with `x-request-id: id`.
fn upstream_path(up: &Proc, id: &str) -> String {
    let line = up.wait_json(WAIT, "the upstream's line", |v| v["request_id"] == id);
    line["path"].as_str().expect("path").to_string()
}

async fn h2_status(addr: SocketAddr, path: &str) -> StatusCode {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::builder()
        .method(Method::GET)
        .uri(format!("http://gw.test{path}"))
        .body(())
        .expect("request");
    let mut client = client.ready().await.expect("ready");
    let (resp, _) = client.send_request(req, true).expect("send");
    resp.await.expect("response").status()
}

#[test]
fn dot_segments_cannot_leave_the_routed_prefix_over_http1() {
    let (gw, up) = gateway_in_front("");
    for (path, status) in [
        ("/public/../internal/x", 404),
        ("/public/%2e%2e/internal/x", 404),
        ("/public/%2E%2E/internal/x", 404),
        ("/public/./../internal/x", 404),
        ("/public/.%2e/internal/x", 404),
        ("/public/..%2finternal/x", 400),
        ("/public/..;/internal/x", 400),
    ] {
        let r = get(gw.addr, path, "");
        assert_eq!(r.status, status, "{path}");
        let line = gw.wait_json(WAIT, path, |v| {
            v["status"] == status && (v["path"] == path || v["path"] == "/internal/x")
        });
        assert_eq!(line["upstream_status"], serde_json::Value::Null, "{line}");
    }
    // Nothing of them reached the upstream.
    assert!(up.json_lines().is_empty(), "{:?}", up.json_lines());
    // A normalized path that stays inside the prefix is served, and the upstream gets it
    // (and the log shows it) normalized; the query is passed on as it came.
    let r = get(
        gw.addr,
        "/%70ublic/a/../b?next=/../x",
        "x-request-id: p1\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(upstream_path(&up, "p1"), "/public/b?next=/../x");
    let line = gw.wait_json(WAIT, "the served line", |v| v["status"] == 200);
    assert_eq!(line["path"], "/public/b", "{line}");
    assert_eq!(line["query"], "next=/../x", "{line}");
}

#[test]
fn dot_segments_cannot_leave_the_routed_prefix_over_http2() {
    let (gw, up) = gateway_in_front("");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for (path, status) in [
        ("/public/../internal/x", 404),
        ("/public/%2e%2e/internal/x", 404),
        ("/public/.%2E/internal/x", 404),
        ("/public/..%2Finternal/x", 400),
        ("/public/..;/internal/x", 400),
        ("/%70ublic/x", 200),
    ] {
        let got = rt.block_on(h2_status(gw.addr, path));
        assert_eq!(got.as_u16(), status, "{path}");
    }
    let line = up.wait_json(WAIT, "the one request upstream", |v| v["path"].is_string());
    assert_eq!(line["path"], "/public/x");
    assert_eq!(up.json_lines().len(), 1, "{:?}", up.json_lines());
}

#[test]
fn escaped_and_merged_slashes_follow_the_settings() {
    let (gw, up) = gateway_in_front("escaped_slashes = \"keep\"\nmerge_slashes = true");
    assert_eq!(
        get(gw.addr, "/public/a%2fb", "x-request-id: k1\r\n").status,
        200
    );
    assert_eq!(upstream_path(&up, "k1"), "/public/a%2Fb");
    assert_eq!(
        get(gw.addr, "/public//x", "x-request-id: k2\r\n").status,
        200
    );
    assert_eq!(upstream_path(&up, "k2"), "/public/x");
    // Kept encoded, ..%2F.. is one segment's name, not a way out.
    assert_eq!(
        get(gw.addr, "/public/..%2F../x", "x-request-id: k3\r\n").status,
        200
    );
    assert_eq!(upstream_path(&up, "k3"), "/public/..%2F../x");

    let (gw, up) = gateway_in_front("escaped_slashes = \"decode\"");
    assert_eq!(get(gw.addr, "/public/..%2f..%2finternal", "").status, 404);
    assert_eq!(
        get(gw.addr, "/public/a%2Fb", "x-request-id: d1\r\n").status,
        200
    );
    assert_eq!(upstream_path(&up, "d1"), "/public/a/b");
}

#[test]
fn a_bad_escaped_slashes_value_names_its_key_and_choices() {
    let err = check_refuses("escaped_slashes = \"allow\"");
    assert!(
        err.contains(
            "key `server.escaped_slashes`: \"allow\" is not \"reject\", \"keep\" or \"decode\""
        ),
        "{err}"
    );
}

#[test]
fn the_log_carries_the_query_apart_with_secrets_redacted_and_spans_never_see_it() {
    let up = mock(&["--quiet"]);
    let gw = gateway(
        "",
        &format!(
            "[log]\nredact_query = [\"access_token\", \"Session\"]\n{}",
            route_all(up.addr)
        ),
    );
    let target = "/cb?Access%5FToken=eyJ.secret&session=s3cr3t&page=2&access_token";
    assert_eq!(get(gw.addr, target, "").status, 200);
    let line = gw.wait_json(WAIT, "the line", |v| v["path"] == "/cb");
    assert_eq!(
        line["query"], "Access%5FToken=REDACTED&session=REDACTED&page=2&access_token",
        "{line}"
    );
    let text = line.to_string();
    assert!(!text.contains("eyJ") && !text.contains("s3cr3t"), "{text}");
    // Without a `?` the query is null; the defaults redact `code`.
    let gw = gateway("", &route_all(up.addr));
    assert_eq!(get(gw.addr, "/plain", "").status, 200);
    let line = gw.wait_json(WAIT, "the plain line", |v| v["path"] == "/plain");
    assert_eq!(line["query"], serde_json::Value::Null, "{line}");
    assert_eq!(get(gw.addr, "/oauth?code=abc&state=1", "").status, 200);
    let line = gw.wait_json(WAIT, "the oauth line", |v| v["path"] == "/oauth");
    assert_eq!(line["query"], "code=REDACTED&state=1", "{line}");
}

#[test]
fn a_bad_redact_query_entry_is_named() {
    let err = check_refuses("[log]\nredact_query = [\"a=b\"]");
    assert!(
        err.contains("log.redact_query[0]`: \"a=b\" is not a query name"),
        "{err}"
    );
}
