//! Surges over real sockets: requests over an upstream's `max_in_flight` wait for a slot
//! within their deadline instead of failing, a request that cannot be served in time is
//! refused at once with `Retry-After`. The queue's rules themselves are tested on tokio's
//! paused clock (`crates/hopline-gateway/src/request/queue_tests.rs`).

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;

fn queued_gateway(up: std::net::SocketAddr, upstream_extra: &str) -> Proc {
    gateway(
        "",
        &format!("[upstreams.m]\nendpoints = [\"{up}\"]\nmax_in_flight = 8\n{upstream_extra}\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"m\"\ntimeout = \"3s\"\n"),
    )
}

/// `count` keep-alive requests on one connection, each answered before the next; their
/// statuses.
fn client(
    addr: std::net::SocketAddr,
    count: usize,
    extra: &str,
) -> Vec<(u16, Duration, Option<String>)> {
    let mut c = connect(addr);
    (0..count)
        .map(|i| {
            let t0 = Instant::now();
            write!(c, "GET /r{i} HTTP/1.1\r\nhost: t\r\n{extra}\r\n").expect("write");
            let r = read_response(&mut c);
            let retry = r.header("retry-after").map(str::to_string);
            let closes = r.header("connection") == Some("close");
            if closes {
                c = connect(addr);
            }
            (r.status, t0.elapsed(), retry)
        })
        .collect()
}

#[test]
fn thirty_two_clients_on_eight_slots_are_all_served_within_the_deadline() {
    let up = mock(&["--latency", "50ms", "--quiet"]);
    let gw = queued_gateway(up.addr, "");
    let addr = gw.addr;
    let all: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..32)
            .map(|_| s.spawn(move || client(addr, 8, "")))
            .collect();
        hs.into_iter()
            .flat_map(|h| h.join().expect("client"))
            .collect()
    });
    assert_eq!(all.len(), 256);
    let refused = all.iter().filter(|(s, _, _)| *s != 200).count();
    assert_eq!(
        refused, 0,
        "every one could be served by waiting for a slot"
    );
    let lines = gw.json_lines();
    let queued = lines
        .iter()
        .filter(|l| l["queue_ms"].as_f64().is_some())
        .count();
    assert!(queued > 0, "some waited in the queue");
}

#[test]
fn requests_that_cannot_be_served_in_their_budget_are_refused_at_once() {
    // Eight slots held 400 ms each; twenty more requests, each with 100 ms to live (a
    // trusted caller's budget), arrive behind them.
    let up = mock(&["--latency", "400ms", "--quiet"]);
    let gw = queued_gateway(up.addr, "");
    let addr = gw.addr;
    // Teach the queue the hold time, with every slot taken once.
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..16)
            .map(|_| s.spawn(move || client(addr, 1, "")))
            .collect();
        for h in hs {
            assert!(h.join().expect("warm").iter().all(|(s, _, _)| *s == 200));
        }
    });
    let (holders, late) = std::thread::scope(|s| {
        let holders: Vec<_> = (0..8)
            .map(|_| s.spawn(move || client(addr, 1, "")))
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let late: Vec<_> = (0..20)
            .map(|_| s.spawn(move || client(addr, 1, "x-envoy-expected-rq-timeout-ms: 100\r\n")))
            .collect();
        (
            holders
                .into_iter()
                .flat_map(|h| h.join().expect("holder"))
                .collect::<Vec<_>>(),
            late.into_iter()
                .flat_map(|h| h.join().expect("late"))
                .collect::<Vec<_>>(),
        )
    });
    assert!(holders.iter().all(|(s, _, _)| *s == 200));
    let mut refused = 0;
    for (status, took, retry) in &late {
        match status {
            200 => assert!(*took < Duration::from_millis(150), "served late: {took:?}"),
            503 => {
                refused += 1;
                // At once: microseconds in the gateway; loose for a loaded 2-core host.
                assert!(*took < Duration::from_millis(250), "refused late: {took:?}");
                assert!(retry.is_some(), "503 without Retry-After");
            }
            other => panic!("status {other}"),
        }
    }
    assert!(refused >= 1, "none refused: {late:?}");
}
