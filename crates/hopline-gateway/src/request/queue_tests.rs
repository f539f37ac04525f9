//! An upstream's queue on tokio's paused clock: requests that find `max_in_flight` full
//! wait in order, each as long as its own deadline allows; refused at once when the
//! queue is full or the wait is sure to outlast the deadline; a client that leaves frees
//! its place.

use std::time::Duration;

use hopline_core::Flag;

use super::tests::A;
use crate::testkit::{answers, silent, Harness, Variant};

const MS: Duration = Duration::from_millis(1);

/// Upstream `u` (endpoint A, `lines`) behind route `r` with deadline `timeout`.
fn upstream_u(lines: &str, timeout: &str) -> Harness {
    Harness::new(&format!(
        r#"
[log]
access = "off"
[upstreams.u]
endpoints = ["{A}"]
{lines}
[[routes]]
name = "r"
path_prefix = "/"
upstream = "u"
timeout = "{timeout}"
"#
    ))
}

/// Upstream `u` (endpoint A, `max_in_flight = 1`, `extra` lines) behind route `r` (1 s).
fn one_slot(extra: &str) -> Harness {
    upstream_u(
        &format!("max_in_flight = 1\ntimeout = \"10s\"\n{extra}"),
        "1s",
    )
}

fn metric(h: &Harness, outcome: &str) -> f64 {
    let text = h.gw.metrics.encode(&[], &[], &[]);
    let key = format!("hopline_upstream_queue_total{{upstream=\"u\",outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .map_or(0.0, |v| v.trim().parse().expect("number"))
}

#[tokio::test(start_paused = true)]
async fn requests_over_the_limit_wait_in_order_and_are_all_served_in_time() {
    let h = one_slot("");
    h.net.set(A, answers(100 * MS, "ok"));
    let get = |p: &'static str| h.send(Harness::get(p, &[]));
    let (a, b, c, d) = tokio::join!(get("/a"), get("/b"), get("/c"), get("/d"));
    for o in [&a, &b, &c, &d] {
        assert_eq!(o.status, Some(200), "{:?}", o.answer);
    }
    // One slot, 100 ms each: served one after another, in the order they came.
    let took: Vec<Duration> = [&a, &b, &c, &d].iter().map(|o| o.took).collect();
    assert_eq!(took, vec![100 * MS, 200 * MS, 300 * MS, 400 * MS]);
    let queued: Vec<Option<Duration>> = h.records().iter().map(|r| r.queue).collect();
    assert_eq!(
        queued,
        vec![None, Some(100 * MS), Some(200 * MS), Some(300 * MS)]
    );
    assert_eq!(metric(&h, "served"), 3.0);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_at_once() {
    let h = one_slot("max_pending = 1");
    h.net.set(A, answers(100 * MS, "ok"));
    let get = |p: &'static str| h.send(Harness::get(p, &[]));
    let (a, b, c) = tokio::join!(get("/a"), get("/b"), get("/c"));
    assert_eq!((a.status, b.status), (Some(200), Some(200)));
    let refused = c.answer.expect("refused");
    assert_eq!(
        (refused.status, refused.flag, refused.variant),
        (503, Flag::UpstreamOverflow, Variant::Overflow)
    );
    assert_eq!(c.took, Duration::ZERO, "at once");
    let cause = c.record.cause.expect("cause");
    assert!(cause.contains("its queue (max_pending 1) full"), "{cause}");
    assert_eq!(metric(&h, "full"), 1.0);
}

#[tokio::test(start_paused = true)]
async fn max_pending_zero_keeps_fail_fast() {
    let h = one_slot("max_pending = 0");
    h.net.set(A, answers(100 * MS, "ok"));
    let get = |p: &'static str| h.send(Harness::get(p, &[]));
    let (a, b) = tokio::join!(get("/a"), get("/b"));
    assert_eq!(a.status, Some(200));
    let refused = b.answer.expect("refused");
    assert_eq!(
        (refused.status, refused.flag),
        (503, Flag::UpstreamOverflow)
    );
    assert_eq!(b.took, Duration::ZERO);
    assert!(b
        .record
        .cause
        .expect("cause")
        .ends_with("max_in_flight 1 reached"));
}

#[tokio::test(start_paused = true)]
async fn a_wait_that_reaches_the_deadline_is_503_in_phase_queue() {
    let h = one_slot("");
    // The slot is held past everyone's deadline.
    h.net.set(A, silent());
    let get = |p: &'static str| h.send(Harness::get(p, &[]));
    let (a, b) = tokio::join!(get("/a"), get("/b"));
    assert_eq!(a.answer.expect("a").status, 504);
    let b_answer = b.answer.expect("b");
    assert_eq!(
        (b_answer.status, b_answer.flag),
        (503, Flag::UpstreamOverflow)
    );
    // Its whole budget but deadline.min_caller (10 ms), which no call could use.
    assert_eq!(b.took, 990 * MS, "waited its budget");
    assert_eq!(b.record.phase, Some("queue"));
    assert_eq!(b.record.queue, Some(990 * MS));
    assert_eq!(metric(&h, "expired"), 1.0);
}

#[tokio::test(start_paused = true)]
async fn a_slot_freed_too_near_the_deadline_is_no_use_to_those_waiting() {
    let h = one_slot("");
    // The holder frees the slot 5 ms before the deadline its waiters share: less than
    // deadline.min_caller (10 ms) is left, so each waiter is the queue's expiry at 990 ms,
    // never a slot taken with no time to use it.
    h.net.set(A, answers(995 * MS, "ok"));
    let get = |p: &'static str| h.send(Harness::get(p, &[]));
    let (a, b, c, d) = tokio::join!(get("/a"), get("/b"), get("/c"), get("/d"));
    assert_eq!(a.status, Some(200));
    for o in [b, c, d] {
        let answer = o.answer.expect("answered");
        assert_eq!(
            (answer.status, o.record.phase, o.took),
            (503, Some("queue"), 990 * MS),
            "{}",
            answer.cause
        );
    }
    assert_eq!(metric(&h, "expired"), 3.0);
}

#[tokio::test(start_paused = true)]
async fn a_request_sure_not_to_get_a_slot_in_time_is_refused_at_once() {
    let h = one_slot("");
    h.net.set(A, answers(500 * MS, "ok"));
    // A request near the limit teaches the queue that a slot is held ~500 ms.
    let warm = h.send(Harness::get("/warm", &[])).await;
    assert_eq!(warm.status, Some(200));
    // With the slot taken, a caller with 300 ms left (grpc-timeout) is expected to wait
    // ~1 s: refused at once, not after its 300 ms.
    let (a, b) = tokio::join!(
        h.send(Harness::get("/a", &[])),
        h.send(Harness::get("/b", &[("grpc-timeout", "300m")])),
    );
    assert_eq!(a.status, Some(200));
    let refused = b.answer.expect("refused");
    assert_eq!(
        (refused.status, refused.flag),
        (503, Flag::UpstreamOverflow)
    );
    assert_eq!(b.took, Duration::ZERO);
    let cause = b.record.cause.expect("cause");
    assert!(cause.contains("the expected wait in its queue"), "{cause}");
    assert_eq!(metric(&h, "expected_wait"), 1.0);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_leaves_while_waiting_frees_its_place() {
    let h = one_slot("max_pending = 1");
    h.net.set(A, answers(300 * MS, "ok"));
    let leaving = h.exchange(Harness::get("/leaves", &[]), b"", |c| async move {
        tokio::time::sleep(50 * MS).await;
        c.leave();
    });
    let later = async {
        // After the leaver's place is free, there is room in the queue again.
        tokio::time::sleep(100 * MS).await;
        h.send(Harness::get("/later", &[])).await
    };
    let (first, _, later) = tokio::join!(h.send(Harness::get("/first", &[])), leaving, later);
    assert_eq!(first.status, Some(200));
    assert_eq!(later.status, Some(200), "{:?}", later.answer);
    let gone_rec = h
        .records()
        .into_iter()
        .find(|r| &r.path[..] == b"/leaves")
        .expect("record");
    assert_eq!((gone_rec.status, gone_rec.phase), (499, Some("queue")));
    assert_eq!(metric(&h, "client_gone"), 1.0);
}

// ---- connects in progress per endpoint ------------------------------------------------

/// A peer whose connects take 50 ms and which answers each request in 10 ms.
fn slow_to_connect() -> crate::testkit::Peer {
    let crate::testkit::Peer::Serve(play) = answers(10 * MS, "ok") else {
        unreachable!("answers serves")
    };
    crate::testkit::Peer::Slow(50 * MS, play)
}

/// A burst of 20 requests with nothing pooled, against `max_connecting`: the connects it
/// made, the most in progress at once, and the statuses.
async fn burst(max_connecting: usize) -> (usize, usize, Vec<Option<u16>>) {
    let h = Harness::new(&format!(
        r#"
[log]
access = "off"
[upstreams.u]
endpoints = ["{A}"]
max_connecting = {max_connecting}
connect_timeout = "1s"
[[routes]]
name = "r"
path_prefix = "/"
upstream = "u"
timeout = "2s"
"#
    ));
    h.net.set(A, slow_to_connect());
    let all = (0..20).map(|_| h.send(Harness::get("/b", &[])));
    let outcomes = super::aggregate::join_all(all).await;
    let statuses = outcomes.iter().map(|o| o.status).collect();
    let counts = h.net.counts();
    (counts.dials, counts.most_connecting, statuses)
}

#[tokio::test(start_paused = true)]
async fn a_burst_opens_at_most_max_connecting_connections_and_reuses_them() {
    let (dials, most, statuses) = burst(2).await;
    assert!(statuses.iter().all(|s| *s == Some(200)), "{statuses:?}");
    // Two connects in progress at most; the rest take their turn on the connections the
    // first requests return, or on a freed connect slot: 6 connections for 20 requests.
    assert_eq!((most, dials), (2, 6));
    let (ungated, most, _) = burst(100).await;
    assert_eq!(
        (most, ungated),
        (20, 20),
        "with room, every request opens its own"
    );
}

/// Upstream `u` (endpoint A, one connect at a time, `connect_timeout = 200ms`) behind a
/// route with a 5 s deadline.
fn one_connect() -> Harness {
    upstream_u(
        "max_connecting = 1\nconnect_timeout = \"200ms\"\ntimeout = \"5s\"",
        "5s",
    )
}

#[tokio::test(start_paused = true)]
async fn a_connect_wait_lasts_while_connections_keep_coming_back() {
    let h = one_connect();
    // Connects take 150 ms, answers 100 ms: 20 requests take far longer than the 200 ms
    // connect budget to get through the few connections, which keep coming back.
    let crate::testkit::Peer::Serve(play) = answers(100 * MS, "ok") else {
        unreachable!("answers serves")
    };
    h.net.set(A, crate::testkit::Peer::Slow(150 * MS, play));
    let all = (0..20).map(|_| h.send(Harness::get("/b", &[])));
    let outcomes = super::aggregate::join_all(all).await;
    let statuses: Vec<_> = outcomes
        .iter()
        .map(|o| (o.status, o.took, o.answer.as_ref().map(|a| a.cause.clone())))
        .collect();
    assert!(statuses.iter().all(|s| s.0 == Some(200)), "{statuses:#?}");
    let longest = outcomes.iter().map(|o| o.took).max().expect("20");
    assert!(
        longest > 400 * MS,
        "some waited past connect_timeout: {longest:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_connect_wait_ends_at_connect_timeout_when_nothing_comes_back() {
    let h = one_connect();
    h.net.set(A, crate::testkit::Peer::Blackhole);
    let all = (0..3).map(|_| h.send(Harness::get("/b", &[])));
    let outcomes = super::aggregate::join_all(all).await;
    // The first connect hangs until its 200 ms; a waiter that saw no connection come back
    // in that time is refused then, not kept until the 5 s deadline.
    let mut refused = 0;
    for o in &outcomes {
        let a = o.answer.as_ref().expect("nothing answered");
        if a.flag == Flag::UpstreamOverflow {
            refused += 1;
            assert_eq!((a.status, o.took), (503, 200 * MS), "{}", a.cause);
            assert!(
                a.cause.contains("no pooled connection came back"),
                "{}",
                a.cause
            );
        } else {
            // The one that had the connect slot: its connect (and the retries') timed out.
            assert_eq!(a.status, 504, "{}", a.cause);
        }
    }
    assert_eq!(refused, 2);
}

// ---- the egress new-connection rate ---------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_new_egress_connection_waits_for_the_rates_next_token_within_its_connect_budget() {
    let h = Harness::new(&format!(
        r#"
[log]
access = "off"
[egress]
max_new_connections_per_sec = 2
[upstreams.u]
endpoints = ["{A}"]
zone = "egress"
connect_timeout = "800ms"
[[routes]]
name = "r"
path_prefix = "/"
upstream = "u"
timeout = "2s"
"#
    ));
    h.net.set(A, answers(Duration::ZERO, "ok"));
    let get = |p: &'static str| h.send(Harness::get(p, &[]));
    let (a, b, c, d) = tokio::join!(get("/a"), get("/b"), get("/c"), get("/d"));
    // Two tokens on hand; the third comes 500 ms later, inside the 800 ms connect budget;
    // the fourth (1 s) would not: refused at once.
    let took = [&a, &b, &c].map(|o| (o.status, o.took));
    assert_eq!(
        took,
        [
            (Some(200), Duration::ZERO),
            (Some(200), Duration::ZERO),
            (Some(200), 500 * MS)
        ]
    );
    let refused = d.answer.expect("refused");
    assert_eq!(
        (refused.status, refused.flag),
        (503, Flag::UpstreamOverflow)
    );
    assert_eq!(d.took, Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn egress_calls_over_the_egress_limit_wait_in_its_queue_too() {
    let h = Harness::new(&format!(
        r#"
[log]
access = "off"
[egress]
max_in_flight = 1
[upstreams.u]
endpoints = ["{A}"]
zone = "egress"
[[routes]]
name = "r"
path_prefix = "/"
upstream = "u"
timeout = "1s"
"#
    ));
    h.net.set(A, answers(100 * MS, "ok"));
    let get = |p: &'static str| h.send(Harness::get(p, &[]));
    let (a, b) = tokio::join!(get("/a"), get("/b"));
    assert_eq!((a.status, a.took), (Some(200), 100 * MS));
    assert_eq!(
        (b.status, b.took),
        (Some(200), 200 * MS),
        "waited for the egress slot"
    );
}

/// 32 clients, each sending 8 requests one after another, on 8 slots held 50 ms each:
/// served in the order they came, so every request waits for the 24 ahead of it, 150 ms,
/// and none longer. (A slot released while others waited was once taken by whoever asked
/// first after it, before the waiter woken for it ran: some requests waited 500 ms.)
#[tokio::test(start_paused = true)]
async fn the_queue_is_served_in_order_under_a_steady_surge() {
    use tokio::time::Instant;
    let slots = crate::limits::InFlight::new(8);
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let slots = slots.clone();
        clients.spawn(async move {
            let mut longest = Duration::ZERO;
            for _ in 0..8 {
                let t0 = Instant::now();
                let slot = match slots.take_now(t0) {
                    Some(g) => g,
                    None => slots
                        .acquire(t0, 1024, t0 + Duration::from_secs(3))
                        .await
                        .expect("a slot in time"),
                };
                longest = longest.max(t0.elapsed());
                tokio::time::sleep(50 * MS).await;
                drop(slot);
                tokio::task::yield_now().await;
            }
            longest
        });
    }
    let longest = clients.join_all().await;
    assert!(longest.iter().all(|w| *w <= 150 * MS), "{longest:?}");
    assert_eq!(
        (slots.current(), slots.pending()),
        (0, 0),
        "every slot back"
    );
}
