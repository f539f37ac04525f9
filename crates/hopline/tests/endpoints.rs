//! Endpoints that move and fail: DNS discovery against a DNS server the test controls,
//! 503 `UH` when nothing is usable, outlier ejection and return, active health checks and
//! panic mode — over real sockets, with the real binary.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::dns::Dns;
use common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

/// A mock on `ip` (a loopback address) at `port` (0: any), answering with `x-pod: NAME`.
fn pod(ip: &str, port: u16, name: &str, extra: &[&str]) -> Proc {
    let listen = format!("{ip}:{port}");
    let header = format!("x-pod:{name}");
    let mut args = vec!["mock", "--listen", &listen, "--quiet", "--header", &header];
    args.extend_from_slice(extra);
    Proc::spawn(&args)
}

fn endpoints(gw: &Proc) -> Value {
    api(admin_addr(gw), "GET", "/endpoints", "").1
}

/// The addresses `/endpoints` lists for upstream `up`, sorted.
fn addresses(gw: &Proc, up: &str) -> Vec<String> {
    let v = endpoints(gw);
    let mut a: Vec<String> = v["upstreams"][up]["endpoints"]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|e| e["address"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    a.sort();
    a
}

/// Polls `cond` until it holds, or panics after `within`.
fn wait_until(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pods that answered `n` requests.
fn pods_seen(gw: &Proc, n: usize) -> Vec<String> {
    let mut seen: Vec<String> = (0..n)
        .map(|_| {
            let r = get(gw.addr, "/x", "");
            assert_eq!(r.status, 200, "{r:?}");
            r.header("x-pod").unwrap_or("").to_string()
        })
        .collect();
    seen.sort();
    seen.dedup();
    seen
}

/// Pods a, b and c on 127.0.0.2–4, one port, with their addresses.
fn three_pods() -> ([Proc; 3], [Ipv4Addr; 3]) {
    let a = pod("127.0.0.2", 0, "a", &[]);
    let port = a.addr.port();
    let b = pod("127.0.0.3", port, "b", &[]);
    let c = pod("127.0.0.4", port, "c", &[]);
    let ips = [2, 3, 4].map(|n| Ipv4Addr::new(127, 0, 0, n));
    ([a, b, c], ips)
}

fn dns_section(dns: &Dns) -> String {
    format!(
        "[dns]\nnameservers = [\"{}\"]\nmin_ttl = \"100ms\"\nmax_ttl = \"1s\"\ntimeout = \"500ms\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        dns.addr
    )
}

#[test]
fn a_name_stands_for_every_address_follows_changes_and_keeps_the_last_good_set() {
    let dns = Dns::start();
    let ([a, b, c], [ip_a, ip_b, ip_c]) = three_pods();
    let port = a.addr.port();
    dns.set("pods.test", &[ip_a, ip_b], 1);
    let gw = gateway(
        "",
        &format!(
            "{}[upstreams.m]\nendpoints = [\"pods.test:{port}\"]\nlb = \"round_robin\"\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"m\"\n",
            dns_section(&dns)
        ),
    );
    // Both addresses are used from the first request (serve waited for the name).
    assert_eq!(pods_seen(&gw, 10), vec!["a", "b"]);
    // A scale event: a goes, c comes. Within one TTL the set follows.
    dns.set("pods.test", &[ip_b, ip_c], 1);
    let want = vec![b.addr.to_string(), c.addr.to_string()];
    wait_until(WAIT, "the new endpoint set", || addresses(&gw, "m") == want);
    assert_eq!(pods_seen(&gw, 10), vec!["b", "c"]);
    gw.stderr.wait_for(WAIT, "the change logged", |l| {
        l.contains("pods.test resolves to") && l.contains(&format!("removed {}", a.addr))
    });
    // The name stops resolving: the last good set stays, and the failure is said.
    dns.set("pods.test", &[], 0);
    gw.stderr.wait_for(WAIT, "the failure logged", |l| {
        l.contains("cannot resolve pods.test: NXDOMAIN; keeping 2 known address(es)")
    });
    // Both are event lines in the access log too.
    let resolved = gw.wait_json(WAIT, "the dns event", |v| {
        v["event"] == "dns" && v["state"] == "resolved"
    });
    assert_eq!(resolved["upstream"], "m");
    assert_eq!(resolved["name"], "pods.test");
    let failed = gw.wait_json(WAIT, "the dns failure event", |v| {
        v["event"] == "dns" && v["state"] == "failed"
    });
    assert!(
        failed["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("NXDOMAIN; keeping 2 known address(es)")),
        "{failed}"
    );
    assert_eq!(pods_seen(&gw, 10), vec!["b", "c"]);
    assert!(
        metric(
            &gw,
            "hopline_dns_resolutions_total{upstream=\"m\",result=\"failed\"}"
        ) >= 1.0
    );
    assert!(
        metric(
            &gw,
            "hopline_dns_resolutions_total{upstream=\"m\",result=\"ok\"}"
        ) >= 2.0
    );
}

#[test]
fn a_name_without_an_address_is_503_uh_at_once_until_it_resolves() {
    let dns = Dns::start();
    let up = pod("127.0.0.5", 0, "late", &[]);
    let gw = gateway(
        "",
        &format!(
            "{}[upstreams.m]\nendpoints = [\"late.test:{}\"]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"m\"\n",
            dns_section(&dns),
            up.addr.port()
        ),
    );
    // `serve` started although the name does not resolve.
    let r = get(gw.addr, "/x", "");
    assert_eq!((r.status, r.header("x-hopline-flags")), (503, Some("UH")));
    let line = gw.wait_json(WAIT, "the 503 line", |v| v["status"] == 503);
    let cause = line["cause"].as_str().expect("cause");
    assert!(
        cause.contains("upstream m: no address for late.test: NXDOMAIN (last tried"),
        "{cause}"
    );
    // At once: no connect was tried, nothing waited for a timeout.
    assert!(num(&line, "duration_ms") <= 5.0, "{line}");
    dns.set("late.test", &[Ipv4Addr::new(127, 0, 0, 5)], 1);
    wait_until(WAIT, "the name to resolve", || {
        get(gw.addr, "/x", "").status == 200
    });
}

#[test]
fn a_failing_endpoint_is_ejected_then_returns_and_retries_go_elsewhere() {
    let good = pod("127.0.0.1", 0, "good", &[]);
    // Nothing listens here yet: every connect is refused.
    let sick = closed_port();
    let gw = gateway(
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
        &format!(
            "[upstreams.m]\nendpoints = [\"{}\", \"{sick}\"]\nlb = \"round_robin\"\nmax_retries = 1\n[upstreams.m.outlier]\nconsecutive_failures = 3\nbase_ejection = \"1s\"\n[retry_budget]\nmin_per_sec = 1000\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"m\"\n",
            good.addr
        ),
    );
    // Each refused connect is retried on the other endpoint: the client sees only 200s.
    for _ in 0..10 {
        assert_eq!(get(gw.addr, "/x", "").status, 200);
    }
    let ejected = gw.stderr.wait_for(WAIT, "the ejection", |l| {
        l.contains(&format!("endpoint {sick} of m ejected for 1s"))
    });
    assert!(
        ejected.contains("3 consecutive failures, each a connection refused"),
        "{ejected}"
    );
    let v = endpoints(&gw);
    let sick_view = v["upstreams"]["m"]["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .find(|e| e["address"] == sick.to_string())
        .cloned()
        .expect("sick endpoint listed");
    assert_eq!(sick_view["state"], "ejected", "{v:#}");
    assert_eq!(
        sick_view["recent_failures"][0]["what"],
        "connection refused"
    );
    assert_eq!(
        metric(
            &gw,
            "hopline_upstream_endpoint_ejections_total{upstream=\"m\"}"
        ),
        1.0
    );
    // While ejected no attempt goes there: one attempt per request. (Access lines are
    // written asynchronously: wait for the first ten before counting the next six.)
    let requests = || -> Vec<Value> {
        gw.json_lines()
            .into_iter()
            .filter(|l| l.get("status").is_some())
            .collect()
    };
    wait_until(WAIT, "ten access lines", || requests().len() >= 10);
    let before = requests().len();
    for _ in 0..6 {
        assert_eq!(get(gw.addr, "/x", "").status, 200);
    }
    wait_until(WAIT, "six more access lines", || {
        requests().len() >= before + 6
    });
    let lines = requests();
    assert!(
        lines[before..].iter().all(|l| l["attempts"] == 1),
        "{lines:?}"
    );
    // It comes back: after its ejection it takes requests again.
    let _revived = pod("127.0.0.1", sick.port(), "revived", &[]);
    wait_until(WAIT, "the endpoint back in use", || {
        get(gw.addr, "/x", "").header("x-pod") == Some("revived")
    });
    gw.stderr.wait_for(WAIT, "the return logged", |l| {
        l.contains(&format!("endpoint {sick} of m returned after its ejection"))
    });
}

#[test]
fn with_nothing_usable_the_answer_is_503_uh_at_once() {
    let sick = closed_port();
    let gw = gateway(
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
        &format!(
            "[upstreams.m]\nendpoints = [\"{sick}\"]\nmax_retries = 0\n[upstreams.m.outlier]\nconsecutive_failures = 1\nmax_ejection_percent = 100\nbase_ejection = \"30s\"\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"m\"\n"
        ),
    );
    let r = get(gw.addr, "/x", "");
    assert_eq!((r.status, r.header("x-hopline-flags")), (502, Some("UF")));
    // Zero usable is not panic mode (whatever panic_threshold says): nothing is sent to a
    // known-dead endpoint, and the client is told when to ask again (the ejection's end).
    let r = get(gw.addr, "/x", "");
    assert_eq!((r.status, r.header("x-hopline-flags")), (503, Some("UH")));
    let after: u64 = r
        .header("retry-after")
        .expect("retry-after")
        .parse()
        .expect("secs");
    assert!((29..=30).contains(&after), "retry-after {after}");
    let line = gw.wait_json(WAIT, "the 503 line", |v| v["status"] == 503);
    assert_eq!(
        line["cause"],
        "upstream m: 1 endpoints, none usable: 1 ejected, 0 failing health checks"
    );
    assert!(num(&line, "duration_ms") <= 5.0, "{line}");
}

#[test]
fn a_dead_endpoint_failing_its_health_checks_is_503_uh_at_once_not_panic_mode() {
    // examples/gateway.toml's case: one endpoint, health checks, the default
    // panic_threshold (50 %); the endpoint dies.
    let mut up = pod("127.0.0.1", 0, "only", &[]);
    let gw = gateway(
        "",
        &format!(
            "[upstreams.m]\nendpoints = [\"{}\"]\n[upstreams.m.health]\npath = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nunhealthy_threshold = 1\nhealthy_threshold = 10\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"m\"\n",
            up.addr
        ),
    );
    assert_eq!(get(gw.addr, "/x", "").status, 200);
    let addr = up.addr;
    up.terminate();
    up.wait_exit(WAIT).expect("mock exited");
    gw.stderr.wait_for(WAIT, "unhealthy", |l| {
        l.contains(&format!("endpoint {addr} of m is unhealthy"))
    });
    let r = get(gw.addr, "/x", "");
    assert_eq!((r.status, r.header("x-hopline-flags")), (503, Some("UH")));
    // Ten passing checks 200 ms apart bring it back: ask again in 2 s.
    assert_eq!(r.header("retry-after"), Some("2"));
    let line = gw.wait_json(WAIT, "the 503 line", |v| v["status"] == 503);
    assert_eq!(line["attempts"], 0, "{line}");
    assert_eq!(
        line["cause"],
        "upstream m: 1 endpoints, none usable: 0 ejected, 1 failing health checks"
    );
    assert!(
        !gw.stderr.all().iter().any(|l| l.contains("panic mode")),
        "zero usable is not panic mode"
    );
}

#[test]
fn health_checks_take_a_failing_endpoint_out_and_panic_mode_balances_over_all() {
    let good = pod("127.0.0.1", 0, "good", &[]);
    let bad1 = pod("127.0.0.1", 0, "bad1", &["--status", "500"]);
    let bad2 = pod("127.0.0.1", 0, "bad2", &["--status", "500"]);
    let config = |eps: &[SocketAddr]| {
        let list: Vec<String> = eps.iter().map(|a| format!("\"{a}\"")).collect();
        format!(
            "[upstreams.m]\nendpoints = [{}]\nlb = \"round_robin\"\n[upstreams.m.health]\npath = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nunhealthy_threshold = 1\n[metrics]\nper_endpoint = true\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"m\"\n",
            list.join(", ")
        )
    };
    // One bad of two: it is taken out, every request goes to the good one.
    let gw = gateway(
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
        &config(&[good.addr, bad1.addr]),
    );
    gw.stderr.wait_for(WAIT, "bad1 unhealthy", |l| {
        l.contains(&format!("endpoint {} of m is unhealthy", bad1.addr))
            && l.contains("answered 500, expected [200]")
    });
    assert_eq!(pods_seen(&gw, 10), vec!["good"]);
    assert!(
        metric(
            &gw,
            "hopline_health_checks_total{upstream=\"m\",result=\"failed\"}"
        ) >= 1.0
    );
    let per_endpoint = format!(
        "hopline_endpoint_requests_total{{upstream=\"m\",endpoint=\"{}\",outcome=\"success\"}}",
        good.addr
    );
    assert!(metric(&gw, &per_endpoint) >= 10.0);
    drop(gw);
    // Two bad of three: one usable is below panic_threshold 50 %, so all three are used.
    let gw = gateway(
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
        &config(&[good.addr, bad1.addr, bad2.addr]),
    );
    wait_until(WAIT, "two unhealthy", || {
        metric(
            &gw,
            "hopline_upstream_endpoints{upstream=\"m\",state=\"unhealthy\"}",
        ) == 2.0
    });
    let statuses: Vec<u16> = (0..9).map(|_| get(gw.addr, "/x", "").status).collect();
    assert!(
        statuses.contains(&500) && statuses.contains(&200),
        "{statuses:?}"
    );
    gw.stderr.wait_for(WAIT, "panic mode", |l| {
        l.contains("upstream m: panic mode: 1 of 3 endpoints usable")
    });
    let panic = gw.wait_json(WAIT, "the panic event", |v| v["event"] == "upstream");
    assert_eq!(panic["upstream"], "m");
    assert_eq!(panic["state"], "panic");
    assert_eq!(
        metric(&gw, "hopline_upstream_panic_mode{upstream=\"m\"}"),
        1.0
    );
    assert_eq!(endpoints(&gw)["upstreams"]["m"]["panic_mode"], true);
}

#[test]
fn idle_connections_to_an_address_that_left_the_name_are_closed() {
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let dns = Dns::start();
    // Pod a: a keep-alive upstream that counts the connections hopline holds open to it
    // (a request may open a second one while the first is on its way back to the pool).
    let a = std::net::TcpListener::bind("127.0.0.2:0").expect("bind a");
    let port = a.local_addr().expect("addr").port();
    let open = Arc::new(AtomicUsize::new(0));
    let counted = open.clone();
    std::thread::spawn(move || {
        for s in a.incoming() {
            let Ok(mut s) = s else { return };
            let counted = counted.clone();
            counted.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                while read_request(&mut s).is_some() {
                    let _ =
                        s.write_all(b"HTTP/1.1 200 OK\r\nx-pod: a\r\ncontent-length: 2\r\n\r\nok");
                }
                counted.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    let b = pod("127.0.0.3", port, "b", &[]);
    dns.set("pods.test", &[Ipv4Addr::new(127, 0, 0, 2)], 1);
    let gw = gateway(
        "",
        &format!(
            "{}[upstreams.m]\nendpoints = [\"pods.test:{port}\"]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"m\"\n",
            dns_section(&dns)
        ),
    );
    // Pooled connections to a, idle after these requests.
    assert_eq!(pods_seen(&gw, 3), vec!["a"]);
    assert!(open.load(Ordering::SeqCst) >= 1);
    // a leaves the name: its idle pooled connections are closed, requests go to b.
    dns.set("pods.test", &[Ipv4Addr::new(127, 0, 0, 3)], 1);
    wait_until(WAIT, "the idle connections to a closed", || {
        open.load(Ordering::SeqCst) == 0
    });
    assert_eq!(pods_seen(&gw, 3), vec!["b"]);
    drop(b);
}

#[test]
fn health_checks_speak_http2_to_an_h2_upstream() {
    let up = pod("127.0.0.1", 0, "g", &["--grpc", "0"]);
    let gw = gateway(
        "",
        &format!(
            "[upstreams.m]\nendpoints = [\"{}\"]\nprotocol = \"h2\"\n[upstreams.m.health]\npath = \"/grpc.health.v1.Health/Check\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nunhealthy_threshold = 1\nexpect_status = [204]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"m\"\n",
            up.addr
        ),
    );
    // The check reached the server over HTTP/2 and read its status (200, not the 204
    // this config expects), so the endpoint is taken out.
    let l = gw.stderr.wait_for(WAIT, "an h2 health check", |l| {
        l.contains(&format!("endpoint {} of m is unhealthy", up.addr))
    });
    assert!(l.contains("answered 200, expected [204]"), "{l}");
}

/// An egress name that resolves to loopback (or metadata, or a private address) is not
/// used: 503 `UH` naming the address. A loopback address written in `endpoints` is the
/// operator's own choice and works; `deny_addresses = []` allows all; a name's addresses
/// are capped by `dns.max_addresses_per_name`.
#[test]
fn egress_names_may_not_resolve_to_denied_addresses_but_literals_are_the_operators() {
    let dns = Dns::start();
    let ([a, b, c], [ip_a, ip_b, ip_c]) = three_pods();
    let port = a.addr.port();
    dns.set("partner.test", &[ip_a], 1);
    dns.set("many.test", &[ip_a, ip_b, ip_c], 1);
    let gw = gateway(
        "",
        &format!(
            "{}[upstreams.partner]\nendpoints = [\"partner.test:{port}\"]\nzone = \"egress\"\n\
             [upstreams.literal]\nendpoints = [\"{}\"]\nzone = \"egress\"\n\
             [upstreams.open]\nendpoints = [\"many.test:{port}\"]\nzone = \"egress\"\ndeny_addresses = []\n\
             [[routes]]\nname = \"p\"\npath_prefix = \"/p\"\nupstream = \"partner\"\n\
             [[routes]]\nname = \"l\"\npath_prefix = \"/l\"\nupstream = \"literal\"\n\
             [[routes]]\nname = \"o\"\npath_prefix = \"/o\"\nupstream = \"open\"\n",
            dns_section(&dns).replace("[admin]", "max_addresses_per_name = 2\n[admin]"),
            a.addr
        ),
    );
    let r = get(gw.addr, "/p", "");
    assert_eq!(r.status, 503, "{r:?}");
    let line = gw.wait_json(WAIT, "the refusal", |v| v["route"] == "p");
    assert_eq!(line["flags"][0], "UH", "{line}");
    let cause = line["cause"].as_str().expect("cause");
    assert!(
        cause.contains("partner.test: 127.0.0.2 denied by deny_addresses"),
        "{cause}"
    );
    let event = gw.wait_json(WAIT, "the denied event", |v| {
        v["event"] == "dns" && v["state"] == "denied"
    });
    assert_eq!(event["name"], "partner.test", "{event}");
    assert!(addresses(&gw, "partner").is_empty());
    // The literal loopback egress endpoint is used as written.
    assert_eq!(get(gw.addr, "/l", "").status, 200);
    // `[]` allows all, and a name's three addresses are capped at two (the first two).
    wait_until(WAIT, "two addresses for many.test", || {
        addresses(&gw, "open") == vec![a.addr.to_string(), b.addr.to_string()]
    });
    assert_eq!(get(gw.addr, "/o", "").status, 200);
    drop(c);
}
