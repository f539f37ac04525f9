//! `hopline chaos` as a drop-in for Toxiproxy 2.12: its API case by case (statuses, error
//! texts, content types, headers), its proxy lifecycle without races, and its toxic
//! semantics, over real sockets.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A free loopback address below Linux's ephemeral range (32768+): no outgoing connection
/// or port-0 listener of a concurrent test can take it. Each call starts elsewhere.
fn low_port() -> SocketAddr {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = 20_000
        + ((std::process::id() % 500) as u16) * 20
        + NEXT.fetch_add(37, Ordering::Relaxed) % 2_000;
    // A port is handed out once per process: tests disable proxies (closing their
    // listeners) and re-enable them later, so "free now" is not "free for this test".
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().expect("lock");
    let addr = (start..32_000)
        .chain(20_000..start)
        .filter(|p| !given.contains(p))
        .find_map(|port| {
            TcpListener::bind(("127.0.0.1", port))
                .and_then(|l| l.local_addr())
                .ok()
        })
        .expect("a free port below the ephemeral range");
    given.push(addr.port());
    addr
}

/// One API call with the raw answer: status, headers, body.
fn call(api: SocketAddr, method: &str, path: &str, body: &str, extra: &str) -> Response {
    let mut s = connect(api);
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: {api}\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    read_response(&mut s)
}

fn json(r: &Response) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {:?}", r.body))
}

/// Asserts an error answer exactly as Toxiproxy writes it.
fn assert_error(r: &Response, status: u16, text: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(
        r.body,
        format!(
            "{{\"error\":{},\"status\":{status}}}\n",
            serde_json::json!(text)
        )
    );
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
}

fn create(api: SocketAddr, name: &str, listen: &str, upstream: &str) -> Response {
    call(
        api,
        "POST",
        "/proxies",
        &format!(r#"{{"name":"{name}","listen":"{listen}","upstream":"{upstream}"}}"#),
        "",
    )
}

/// Creates a proxy on a port of the OS's choosing and returns where it listens.
fn started(api: SocketAddr, name: &str, upstream: &str) -> SocketAddr {
    let p = json(&create(api, name, "127.0.0.1:0", upstream));
    p["listen"].as_str().expect("listen").parse().expect("addr")
}

fn refused(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err()
}

fn echo_round_trip(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).expect("write");
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).expect("echo");
    assert_eq!(back, msg);
}

#[test]
fn api_answers_match_toxiproxy_case_by_case() {
    let c = chaos(&[]);
    let up = echo_upstream();
    let up = up.addr.to_string();

    let r = call(c.addr, "GET", "/version", "", "");
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "{\"version\": \"2.12.0\"}\n")
    );
    assert_eq!(
        r.header("content-type"),
        Some("application/json;charset=utf-8")
    );
    let id = r.header("x-toxiproxy-request-id").expect("request id");
    assert_eq!(id.len(), 20, "{id}");

    let r = create(c.addr, "a", "127.0.0.1:0", &up);
    assert_eq!(
        (r.status, r.header("content-type")),
        (201, Some("application/json"))
    );
    let p = json(&r);
    assert_eq!(
        (p["name"].as_str(), p["enabled"].as_bool()),
        (Some("a"), Some(true))
    );
    assert!(r.header("x-toxiproxy-request-id").is_some());
    assert_error(
        &create(c.addr, "a", "127.0.0.1:0", &up),
        409,
        "proxy already exists",
    );
    assert_error(
        &call(
            c.addr,
            "POST",
            "/proxies",
            &format!(r#"{{"upstream":"{up}"}}"#),
            "",
        ),
        400,
        "missing required field: name",
    );
    assert_error(
        &call(c.addr, "POST", "/proxies", r#"{"name":"x"}"#, ""),
        400,
        "missing required field: upstream",
    );
    let r = call(c.addr, "POST", "/proxies", "{nope", "");
    assert_eq!(r.status, 400);
    assert!(
        json(&r)["error"]
            .as_str()
            .expect("error")
            .starts_with("bad request body: "),
        "{}",
        r.body
    );
    assert_error(
        &call(c.addr, "GET", "/proxies/nope", "", ""),
        404,
        "proxy not found",
    );
    assert_error(
        &call(c.addr, "DELETE", "/proxies/nope", "", ""),
        404,
        "proxy not found",
    );
    assert_error(
        &call(c.addr, "GET", "/proxies/a/toxics/nope", "", ""),
        404,
        "toxic not found",
    );
    assert_error(
        &call(
            c.addr,
            "POST",
            "/proxies/a/toxics",
            r#"{"type":"latency","stream":"sideways"}"#,
            "",
        ),
        400,
        "stream was invalid, can be either upstream or downstream",
    );
    assert_error(
        &call(
            c.addr,
            "POST",
            "/proxies/a/toxics",
            r#"{"type":"teleport"}"#,
            "",
        ),
        400,
        "invalid toxic type",
    );
    let r = call(
        c.addr,
        "POST",
        "/proxies/a/toxics",
        r#"{"type":"latency","attributes":{"latency":10}}"#,
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json(&r)["name"], "latency_downstream");
    assert_error(
        &call(
            c.addr,
            "POST",
            "/proxies/a/toxics",
            r#"{"type":"latency"}"#,
            "",
        ),
        409,
        "toxic already exists",
    );
    // Toxiproxy's ranges: any toxicity; noop exists.
    let r = call(
        c.addr,
        "POST",
        "/proxies/a/toxics",
        r#"{"name":"n","type":"noop","toxicity":2}"#,
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // HTTP toxics need an HTTP proxy.
    let r = call(
        c.addr,
        "POST",
        "/proxies/a/toxics",
        r#"{"type":"abort","attributes":{"status":503}}"#,
        "",
    );
    assert_eq!(r.status, 400, "{}", r.body);
    // Methods and paths as gorilla/mux routes them.
    let r = call(c.addr, "PUT", "/proxies", "", "");
    assert_eq!((r.status, r.body.as_str()), (405, ""));
    assert_eq!(call(c.addr, "DELETE", "/version", "", "").status, 405);
    let r = call(c.addr, "GET", "/proxies/", "", "");
    assert_eq!((r.status, r.body.as_str()), (404, "404 page not found\n"));
    assert_eq!(
        call(c.addr, "GET", "/metrics", "", "").status,
        404,
        "metrics are opt-in"
    );
    // Browsers are refused (a web page must not drive the proxy).
    let r = call(
        c.addr,
        "GET",
        "/proxies",
        "",
        "user-agent: Mozilla/5.0 (X11; Linux x86_64)\r\n",
    );
    assert_eq!(
        (r.status, r.body.as_str()),
        (403, "User agent not allowed\n")
    );
    // Populate names the position of a bad entry and changes nothing.
    let r = call(
        c.addr,
        "POST",
        "/populate",
        &format!(r#"[{{"name":"p1","upstream":"{up}"}},{{"upstream":"{up}"}}]"#),
        "",
    );
    assert_eq!(r.status, 400);
    assert_eq!(json(&r)["error"], "missing required field: name at proxy 2");
    assert_eq!(call(c.addr, "GET", "/proxies/p1", "", "").status, 404);
    // Deletes and reset: 204, no body.
    let r = call(
        c.addr,
        "DELETE",
        "/proxies/a/toxics/latency_downstream",
        "",
        "",
    );
    assert_eq!((r.status, r.body.as_str()), (204, ""));
    assert_eq!(call(c.addr, "POST", "/reset", "", "").status, 204);
    assert_eq!(
        json(&call(c.addr, "GET", "/proxies/a/toxics", "", "")),
        serde_json::json!([])
    );
    assert_eq!(call(c.addr, "DELETE", "/proxies/a", "", "").status, 204);
    assert_eq!(
        json(&call(c.addr, "GET", "/proxies", "", "")),
        serde_json::json!({})
    );
}

#[test]
fn disabling_closes_the_listener_before_the_answer_and_restarts_rebind_200_times() {
    let c = chaos(&[]);
    let up = echo_upstream();
    let listen = low_port();
    assert_eq!(
        create(c.addr, "cycle", &listen.to_string(), &up.addr.to_string()).status,
        201
    );
    let mut failures = Vec::new();
    for i in 0..200 {
        let r = call(
            c.addr,
            "PATCH",
            "/proxies/cycle",
            r#"{"enabled":false}"#,
            "",
        );
        if r.status != 200 || !refused(listen) {
            failures.push(format!("disable {i}: {} / connect accepted", r.status));
        }
        let r = call(c.addr, "PATCH", "/proxies/cycle", r#"{"enabled":true}"#, "");
        if r.status != 200 || refused(listen) {
            failures.push(format!("enable {i}: {} {}", r.status, r.body));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    // Delete and create on the same port, 200 times.
    for i in 0..200 {
        assert_eq!(
            call(c.addr, "DELETE", "/proxies/cycle", "", "").status,
            204,
            "delete {i}"
        );
        assert!(refused(listen), "delete {i}: still listening");
        let r = create(c.addr, "cycle", &listen.to_string(), &up.addr.to_string());
        assert_eq!(r.status, 201, "create {i}: {}", r.body);
    }
    let mut s = connect(listen);
    echo_round_trip(&mut s, b"after 400 cycles");
}

#[test]
fn a_failed_bind_says_so_and_leaves_the_proxy_disabled_until_reset() {
    let c = chaos(&[]);
    let up = echo_upstream();
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let r = create(c.addr, "clash", &addr.to_string(), &up.addr.to_string());
    assert_error(
        &r,
        500,
        &format!("listen tcp {addr}: bind: address already in use"),
    );
    assert_eq!(
        call(c.addr, "GET", "/proxies/clash", "", "").status,
        404,
        "not created"
    );

    let listen = low_port();
    assert_eq!(
        create(c.addr, "q", &listen.to_string(), &up.addr.to_string()).status,
        201
    );
    assert_eq!(
        call(c.addr, "PATCH", "/proxies/q", r#"{"enabled":false}"#, "").status,
        200
    );
    let squatter = TcpListener::bind(listen).expect("the port is free once disabled");
    let r = call(c.addr, "PATCH", "/proxies/q", r#"{"enabled":true}"#, "");
    assert_error(
        &r,
        500,
        &format!("listen tcp {listen}: bind: address already in use"),
    );
    assert_eq!(
        json(&call(c.addr, "GET", "/proxies/q", "", ""))["enabled"],
        false
    );
    drop(squatter);
    // Another test's thread spawning a process at this moment gives the child a copy of
    // the squatter's descriptor until its exec: the port can stay taken a little after
    // the drop. Reset is idempotent, so it is retried while the port is still held.
    let until = Instant::now() + Duration::from_secs(5);
    let r = loop {
        let r = call(c.addr, "POST", "/reset", "", "");
        if r.status == 204 || !r.body.contains("address already in use") || Instant::now() > until {
            break r;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(r.status, 204, "reset: {}", r.body);
    assert_eq!(
        json(&call(c.addr, "GET", "/proxies/q", "", ""))["enabled"],
        true
    );
    let mut s = connect(listen);
    echo_round_trip(&mut s, b"revived");
}

#[test]
fn an_update_that_changes_nothing_keeps_live_connections() {
    let c = chaos(&[]);
    let up = echo_upstream();
    let listen = started(c.addr, "same", &up.addr.to_string());
    let mut s = connect(listen);
    echo_round_trip(&mut s, b"before");
    let r = call(
        c.addr,
        "POST",
        "/proxies/same",
        &format!(
            r#"{{"enabled":true,"listen":"{listen}","upstream":"{}"}}"#,
            up.addr
        ),
        "",
    );
    assert_eq!(r.status, 200);
    echo_round_trip(&mut s, b"after the no-op update");
}

#[test]
fn an_unreachable_upstream_closes_the_client_with_a_fin() {
    let c = chaos(&[]);
    let listen = started(c.addr, "dead", &closed_port().to_string());
    let mut s = connect(listen);
    let mut b = [0u8; 8];
    assert_eq!(s.read(&mut b).expect("a FIN, not a reset"), 0);
}

#[test]
fn half_close_is_passed_on_at_once_in_both_directions() {
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let up = FakeUpstream::start(move |_, mut s| {
        // Answer, close our write side, and keep reading for 3 s.
        let mut first = [0u8; 5];
        if s.read_exact(&mut first).is_err() {
            return;
        }
        let _ = s.write_all(b"answer");
        let _ = s.shutdown(Shutdown::Write);
        s.set_read_timeout(Some(Duration::from_secs(3))).ok();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        let _ = tx.send(rest);
    });
    let c = chaos(&[]);
    let listen = started(c.addr, "half", &up.addr.to_string());
    let mut s = connect(listen);
    s.write_all(b"hello").expect("write");
    let t0 = Instant::now();
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("EOF");
    assert_eq!(got, b"answer");
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "EOF took {:?}",
        t0.elapsed()
    );
    // The other direction is still open: the upstream gets what we send now, then our FIN.
    s.write_all(b" more").expect("still writable");
    s.shutdown(Shutdown::Write).expect("shutdown");
    let t1 = Instant::now();
    let rest = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("upstream finished");
    assert_eq!(rest, b" more");
    assert!(
        t1.elapsed() < Duration::from_secs(2),
        "our FIN took {:?}",
        t1.elapsed()
    );
}

#[test]
fn populate_keeps_equal_proxies_and_reports_what_it_created_on_failure() {
    let c = chaos(&[]);
    let up = echo_upstream();
    let up2 = echo_upstream();
    let listen = low_port();
    let body =
        |l: &str, u: SocketAddr| format!(r#"[{{"name":"pp","listen":"{l}","upstream":"{u}"}}]"#);
    let r = call(
        c.addr,
        "POST",
        "/populate",
        &body(&listen.to_string(), up.addr),
        "",
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let mut s = connect(listen);
    echo_round_trip(&mut s, b"one");
    // `localhost:P` is the proxy bound to 127.0.0.1:P: kept, live connection and all.
    let r = call(
        c.addr,
        "POST",
        "/populate",
        &body(&format!("localhost:{}", listen.port()), up.addr),
        "",
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(json(&r)["proxies"][0]["listen"], listen.to_string());
    echo_round_trip(&mut s, b"two");
    // Another upstream only: the listener stays; new connections go to the new upstream.
    let r = call(
        c.addr,
        "POST",
        "/populate",
        &body(&listen.to_string(), up2.addr),
        "",
    );
    assert_eq!(json(&r)["proxies"][0]["upstream"], up2.addr.to_string());
    echo_round_trip(&mut s, b"three");
    // A failure answers its status and lists the proxies handled before it.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let r = call(
        c.addr,
        "POST",
        "/populate",
        &format!(
            r#"[{{"name":"first","listen":"127.0.0.1:0","upstream":"{}"}},{{"name":"clash","listen":"{}","upstream":"{}"}}]"#,
            up.addr,
            taken.local_addr().expect("addr"),
            up.addr
        ),
        "",
    );
    assert_eq!(r.status, 500, "{}", r.body);
    let v = json(&r);
    assert_eq!(v["status"], 500);
    assert!(
        v["error"]
            .as_str()
            .expect("error")
            .ends_with("bind: address already in use"),
        "{v}"
    );
    assert_eq!(v["proxies"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["proxies"][0]["name"], "first");
}

#[test]
fn toxics_of_one_type_add_up_and_timeout_zero_drops_what_arrives() {
    let c = chaos(&["--proxy-metrics"]);
    let up = echo_upstream();
    let listen = started(c.addr, "t", &up.addr.to_string());
    for name in ["l1", "l2"] {
        let r = call(
            c.addr,
            "POST",
            "/proxies/t/toxics",
            &format!(
                r#"{{"name":"{name}","type":"latency","stream":"upstream","attributes":{{"latency":100}}}}"#
            ),
            "",
        );
        assert_eq!(r.status, 200);
    }
    let mut s = connect(listen);
    let t0 = Instant::now();
    echo_round_trip(&mut s, b"slow");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(195),
        "two 100 ms latencies gave {took:?}"
    );
    for name in ["l1", "l2"] {
        call(
            c.addr,
            "DELETE",
            &format!("/proxies/t/toxics/{name}"),
            "",
            "",
        );
    }
    let r = call(
        c.addr,
        "POST",
        "/proxies/t/toxics",
        r#"{"name":"hole","type":"timeout","stream":"upstream","attributes":{"timeout":0}}"#,
        "",
    );
    assert_eq!(r.status, 200);
    s.write_all(b"lost").expect("write");
    // Wait until the proxy has read those 4 bytes (8 upstream so far), then check none came back.
    let read = format!(
        "toxiproxy_proxy_received_bytes_total{{direction=\"upstream\",listener=\"{listen}\",proxy=\"t\",upstream=\"{}\"}} 8",
        up.addr
    );
    let end = Instant::now() + Duration::from_secs(5);
    while !call(c.addr, "GET", "/metrics", "", "").body.contains(&read) {
        assert!(Instant::now() < end, "the proxy never read the 4 bytes");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        call(c.addr, "DELETE", "/proxies/t/toxics/hole", "", "").status,
        204
    );
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    echo_round_trip(&mut s, b"kept");
}

#[test]
fn proxy_metrics_count_bytes_per_direction_as_toxiproxy_names_them() {
    let c = chaos(&["--proxy-metrics"]);
    let up = echo_upstream();
    let listen = started(c.addr, "m", &up.addr.to_string());
    let mut s = connect(listen);
    echo_round_trip(&mut s, &[7u8; 1000]);
    let want = |family: &str, dir: &str| {
        format!("{family}{{direction=\"{dir}\",listener=\"{listen}\",proxy=\"m\",upstream=\"{}\"}} 1000", up.addr)
    };
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let r = call(c.addr, "GET", "/metrics", "", "");
        assert_eq!(r.status, 200);
        let all = [
            "toxiproxy_proxy_received_bytes_total",
            "toxiproxy_proxy_sent_bytes_total",
        ]
        .iter()
        .all(|f| {
            ["upstream", "downstream"]
                .iter()
                .all(|d| r.body.contains(&want(f, d)))
        });
        if all
            && r.body
                .contains("hopline_chaos_connections_total{proxy=\"m\"} 1")
        {
            break;
        }
        assert!(Instant::now() < end, "{}", r.body);
        std::thread::sleep(Duration::from_millis(20));
    }
}
