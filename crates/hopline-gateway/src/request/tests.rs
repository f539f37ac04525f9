//! The request core in process, on tokio's paused clock: deadlines, retries,
//! cancellation and the failure paths, each driven step by step against in-memory
//! upstreams (`testkit`). Virtual time moves only when every task waits, so each test
//! says exactly when a thing happened and runs in microseconds.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hopline_core::{Flag, Phase, TimeoutSource};

use crate::front::Next;
use crate::testkit::{answers, ok, serve, silent, Harness, Peer, Variant};
use crate::upstream::endpoint::State;

const MS: Duration = Duration::from_millis(1);

pub(super) const A: &str = "10.0.0.1:80";
pub(super) const B: &str = "10.0.0.2:80";

/// A gateway with upstream `u` (endpoints A and B, round robin; connect_timeout 100 ms,
/// attempt timeout 10 s, two retries) behind route `r` (`/`, timeout 1 s). `extra`'s
/// `key = value` lines replace or add to the upstream's keys; its tables follow it.
/// `more` goes after everything.
pub(super) fn harness(extra: &str, more: &str) -> Harness {
    let mut keys = vec![
        ("endpoints", format!("[\"{A}\", \"{B}\"]")),
        ("lb", "\"round_robin\"".to_owned()),
        ("connect_timeout", "\"100ms\"".to_owned()),
        ("timeout", "\"10s\"".to_owned()),
        ("max_retries", "2".to_owned()),
    ];
    let mut tables = String::new();
    let mut in_table = false;
    for line in extra.lines() {
        in_table |= line.starts_with('[');
        match line.split_once(" = ") {
            Some((k, v)) if !in_table => match keys.iter_mut().find(|(key, _)| *key == k) {
                Some(slot) => slot.1 = v.to_owned(),
                None => keys.push((k.trim(), v.to_owned())),
            },
            _ => {
                tables.push_str(line);
                tables.push('\n');
            }
        }
    }
    let upstream: String = keys.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
    Harness::new(&format!(
        r#"
[log]
access = "off"
[deadline]
margin = "5ms"
[retry_budget]
ratio = 1.0
min_per_sec = 100
[upstreams.u]
{upstream}
{tables}
[[routes]]
name = "r"
path_prefix = "/"
upstream = "u"
timeout = "1s"
{more}
"#
    ))
}

fn flags(o: &crate::testkit::Outcome) -> Vec<&'static str> {
    o.record.flags.clone()
}

// ---- deadlines --------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn an_upstream_that_never_answers_is_504_ut_exactly_at_the_route_budget() {
    let h = harness("", "");
    h.net.set(A, silent());
    let o = h.send(Harness::get("/x", &[])).await;
    let a = o.answer.expect("answered");
    assert_eq!(
        (a.status, a.flag, a.variant),
        (504, Flag::UpstreamTimeout, Variant::Upstream)
    );
    assert_eq!(a.phase, Some(Phase::ResponseHeaders));
    assert_eq!(a.timeout, Some(TimeoutSource::Deadline));
    assert_eq!(o.took, Duration::from_secs(1));
    assert_eq!(o.record.attempts, 1, "a timeout is not retried");
    // The upstream sees its connection closed: nothing is left waiting on it.
    h.net.until("upstream closed", |c| c.closed == 1).await;
}

#[tokio::test(start_paused = true)]
async fn the_attempt_timeout_bounds_an_attempt_before_the_deadline_does() {
    let h = harness("timeout = \"200ms\"", "");
    h.net.set(A, silent());
    let o = h.send(Harness::get("/x", &[])).await;
    let a = o.answer.expect("answered");
    assert_eq!((a.status, a.flag), (504, Flag::UpstreamTimeout));
    assert_eq!(a.timeout, Some(TimeoutSource::AttemptTimeout));
    assert_eq!(o.took, 200 * MS);
}

#[tokio::test(start_paused = true)]
async fn the_upstream_is_told_the_time_left_less_the_margin_on_every_attempt() {
    let h = harness("", "");
    // A black hole first: the retry, 100 ms later, goes to B.
    h.net.set(A, Peer::Blackhole);
    let seen = Arc::new(std::sync::Mutex::new(None));
    let keep = seen.clone();
    h.net.set(
        B,
        serve(move |mut s| {
            let keep = keep.clone();
            async move {
                if let Some(r) = s.request().await {
                    *keep.lock().expect("lock") = r
                        .header("x-envoy-expected-rq-timeout-ms")
                        .map(str::to_owned);
                    s.send(&ok("fine")).await;
                }
            }
        }),
    );
    let o = h.send(Harness::get("/x", &[])).await;
    assert_eq!(o.status, Some(200));
    assert_eq!(o.record.attempts, 2);
    // 1 s budget − 100 ms spent connecting − 5 ms margin.
    assert_eq!(seen.lock().expect("lock").as_deref(), Some("895"));
}

#[tokio::test(start_paused = true)]
async fn a_trusted_callers_shorter_budget_sets_the_deadline_and_names_itself() {
    let h = harness("", "");
    h.net.set(A, silent());
    let req = Harness::get("/x", &[("x-envoy-expected-rq-timeout-ms", "300")]);
    let o = h.send(req).await;
    let a = o.answer.expect("answered");
    assert_eq!((a.status, a.flag), (504, Flag::UpstreamTimeout));
    assert_eq!(a.timeout, Some(TimeoutSource::CallerBudget));
    // 300 ms less the 5 ms margin.
    assert_eq!(o.took, 295 * MS);
}

#[tokio::test(start_paused = true)]
async fn a_caller_budget_below_min_caller_is_answered_at_once_and_dials_nothing() {
    let h = harness("", "");
    h.net.set(A, answers(Duration::ZERO, "fine"));
    let req = Harness::get("/x", &[("grpc-timeout", "3m")]);
    let o = h.send(req).await;
    let a = o.answer.expect("answered");
    assert_eq!((a.status, a.flag), (504, Flag::UpstreamTimeout));
    assert_eq!(a.variant, Variant::CallerBudgetTooShort);
    assert_eq!(o.took, Duration::ZERO);
    assert_eq!(h.net.counts().dials, 0);
}

#[tokio::test(start_paused = true)]
async fn timeouts_at_a_callers_budget_do_not_eject_an_endpoint_that_answers_in_time() {
    // Endpoints answer in 50 ms; callers allow 30 ms. Five such timeouts in a row would
    // eject an endpoint if they were counted as its failures.
    let h = harness("[upstreams.u.outlier]\nconsecutive_failures = 2", "");
    h.net.set(A, answers(50 * MS, "fine"));
    h.net.set(B, answers(50 * MS, "fine"));
    for _ in 0..3 {
        let o = h.send(Harness::get("/x", &[])).await;
        assert_eq!(o.status, Some(200), "{:?}", o.answer);
    }
    for _ in 0..6 {
        let req = Harness::get("/x", &[("x-envoy-expected-rq-timeout-ms", "35")]);
        let a = h.send(req).await.answer.expect("answered");
        assert_eq!(a.timeout, Some(TimeoutSource::CallerBudget));
    }
    let states = h.gw.upstreams[0].endpoints.states();
    assert!(
        states.iter().all(|(_, s)| *s == State::Usable),
        "{states:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_that_never_answers_is_ejected_though_every_budget_is_the_callers() {
    // B answers in 2 ms; A never answers. Every caller allows 50 ms: A's timeouts are at
    // the caller's budget, but its peer answers in far less, so they are A's failures.
    let h = harness("[upstreams.u.outlier]\nconsecutive_failures = 2", "");
    h.net.set(A, silent());
    h.net.set(B, answers(2 * MS, "fine"));
    for _ in 0..6 {
        let req = Harness::get("/x", &[("x-envoy-expected-rq-timeout-ms", "50")]);
        h.send(req).await;
    }
    let states = h.gw.upstreams[0].endpoints.states();
    let state_of = |addr: &str| {
        let addr: std::net::SocketAddr = addr.parse().expect("addr");
        states.iter().find(|(e, _)| e.addr == addr).map(|(_, s)| *s)
    };
    assert_eq!(state_of(A), Some(State::Ejected), "{states:?}");
    assert_eq!(state_of(B), Some(State::Usable));
}

// ---- connect failures and retries -------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_refused_connect_is_retried_on_the_other_endpoint() {
    let h = harness("", "");
    h.net.set(A, Peer::Refuse);
    h.net.set(B, answers(Duration::ZERO, "from b"));
    let o = h.send(Harness::get("/x", &[])).await;
    assert_eq!(o.status, Some(200));
    assert_eq!(o.body, b"from b");
    assert_eq!(o.record.attempts, 2);
    assert_eq!(o.record.endpoint, Some(B.parse().expect("addr")));
    assert_eq!(o.took, Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn connect_timeouts_are_retried_up_to_max_retries_each_at_connect_timeout() {
    let h = harness("", "");
    h.net.set(A, Peer::Blackhole);
    h.net.set(B, Peer::Blackhole);
    let o = h.send(Harness::get("/x", &[])).await;
    let a = o.answer.expect("answered");
    assert_eq!((a.status, a.flag), (504, Flag::UpstreamConnectFailure));
    assert_eq!(a.phase, Some(Phase::Connect));
    assert_eq!(a.timeout, Some(TimeoutSource::ConnectTimeout));
    assert_eq!(o.record.attempts, 3);
    assert_eq!(o.took, 300 * MS);
    h.net.until("connects given up", |c| c.abandoned == 3).await;
}

#[tokio::test(start_paused = true)]
async fn connect_retries_stop_at_the_deadline_and_the_last_is_cut_by_it() {
    // 400 ms connects in a 1 s budget with 5 retries: 400 + 400 + the 200 ms left.
    let h = harness("connect_timeout = \"400ms\"\nmax_retries = 5", "");
    h.net.set(A, Peer::Blackhole);
    h.net.set(B, Peer::Blackhole);
    let o = h.send(Harness::get("/x", &[])).await;
    let a = o.answer.expect("answered");
    assert_eq!(a.timeout, Some(TimeoutSource::Deadline));
    assert_eq!(a.phase, Some(Phase::Connect));
    assert_eq!(o.record.attempts, 3);
    assert_eq!(o.took, Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn no_retry_runs_and_no_token_is_spent_once_the_deadline_is_gone() {
    // One retry a second and no deposits: the one token is there after the request
    // only if the request did not spend it.
    let h = budget_of_one("connect_timeout = \"2s\"");
    h.net.set(A, Peer::Blackhole);
    let o = h.send(Harness::get("/x", &[])).await;
    assert_eq!(o.record.attempts, 1);
    assert_eq!(o.took, Duration::from_secs(1));
    assert!(h.gw.upstreams[0].budget.try_spend(), "the token was spent");
}

/// Upstream `u` (A, B; five retries) with a retry budget of one a second and no
/// deposits; `extra` are more of the upstream's keys.
fn budget_of_one(extra: &str) -> Harness {
    Harness::new(&format!(
        r#"
[log]
access = "off"
[retry_budget]
ratio = 0.0
min_per_sec = 1
[upstreams.u]
endpoints = ["{A}", "{B}"]
lb = "round_robin"
max_retries = 5
{extra}
[[routes]]
name = "r"
path_prefix = "/"
upstream = "u"
timeout = "1s"
"#
    ))
}

#[tokio::test(start_paused = true)]
async fn retries_stop_when_the_retry_budget_is_spent() {
    let h = budget_of_one("");
    h.net.set(A, Peer::Refuse);
    h.net.set(B, Peer::Refuse);
    let o = h.send(Harness::get("/x", &[])).await;
    let a = o.answer.expect("answered");
    assert_eq!((a.status, a.flag), (502, Flag::UpstreamConnectFailure));
    assert_eq!(
        o.record.attempts, 2,
        "the first attempt and the one retry the budget has"
    );
}

// ---- the stale pooled connection --------------------------------------------------

/// A peer that answers the first request on each connection and closes the connection
/// on reading the second (the keep-alive race: it timed the connection out just then).
pub(super) fn closes_on_second(connections: Arc<AtomicUsize>) -> Peer {
    serve(move |mut s| {
        let n = connections.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if s.request().await.is_some() {
                s.send(&ok(&format!("conn {n}"))).await;
            }
            let _ = s.request().await;
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_stale_pooled_connection_is_retried_once_on_a_new_connection() {
    let h = harness("endpoints = [\"10.0.0.1:80\"]", "");
    let conns = Arc::new(AtomicUsize::new(0));
    h.net.set(A, closes_on_second(conns.clone()));
    assert_eq!(h.send(Harness::get("/1", &[])).await.body, b"conn 1");
    let o = h.send(Harness::get("/2", &[])).await;
    assert_eq!(o.status, Some(200));
    assert_eq!(o.body, b"conn 2", "the retry went on a new connection");
    assert_eq!(o.record.attempts, 2);
    assert_eq!(conns.load(Ordering::SeqCst), 2);
    // Not the endpoint's failure.
    let states = h.gw.upstreams[0].endpoints.states();
    assert!(states.iter().all(|(_, s)| *s == State::Usable));
}

#[tokio::test(start_paused = true)]
async fn a_post_on_a_stale_connection_is_not_resent() {
    let h = harness("endpoints = [\"10.0.0.1:80\"]", "");
    let conns = Arc::new(AtomicUsize::new(0));
    h.net.set(A, closes_on_second(conns.clone()));
    assert_eq!(h.send(Harness::get("/1", &[])).await.status, Some(200));
    let o = h
        .exchange(Harness::request("POST", "/2", &[]), b"pay", |_| async {})
        .await;
    let a = o.answer.expect("answered");
    assert_eq!(
        (a.status, a.flag),
        (502, Flag::UpstreamConnectionTermination)
    );
    assert_eq!(o.record.attempts, 1);
    assert_eq!(conns.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn the_stale_retry_is_taken_once_only() {
    // Every connection answers nothing and closes after reading the request.
    let h = harness("endpoints = [\"10.0.0.1:80\"]", "");
    let conns = Arc::new(AtomicUsize::new(0));
    h.net.set(A, closes_on_second(conns.clone()));
    assert_eq!(h.send(Harness::get("/1", &[])).await.status, Some(200));
    h.net.set(
        A,
        serve(|mut s| async move {
            let _ = s.request().await;
        }),
    );
    let o = h.send(Harness::get("/2", &[])).await;
    let a = o.answer.expect("answered");
    assert_eq!(
        (a.status, a.flag),
        (502, Flag::UpstreamConnectionTermination)
    );
    assert_eq!(o.record.attempts, 2, "the pooled one and one new one");
}

// ---- the client leaves ------------------------------------------------------------

/// The client left in `phase`: 499 `DC`, logged with that phase, nothing answered.
fn left_in(o: &crate::testkit::Outcome, phase: Phase) {
    assert_eq!(o.record.status, 499, "{:?}", o.record.cause);
    assert_eq!(flags(o), vec![Flag::DownstreamConnectionTermination.code()]);
    assert_eq!(o.record.phase, Some(phase.label()));
    assert_eq!(o.answer, None);
    assert_eq!(o.next, Next::Close);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_leaves_while_connecting_drops_the_connect() {
    let h = harness("", "");
    h.net.set(A, Peer::Blackhole);
    let net = h.net.clone();
    let o = h
        .exchange(Harness::get("/x", &[]), b"", |client| async move {
            net.until("a connect", |c| c.dials == 1).await;
            tokio::time::sleep(30 * MS).await;
            client.leave();
        })
        .await;
    left_in(&o, Phase::Connect);
    assert_eq!(o.took, 30 * MS);
    h.net.until("connect given up", |c| c.abandoned == 1).await;
}

#[tokio::test(start_paused = true)]
async fn a_client_that_leaves_during_the_tls_handshake_closes_it() {
    let h = harness("tls = true\ninsecure_skip_verify = true", "");
    // Reads the ClientHello and never answers.
    h.net.set(
        A,
        serve(|mut s| async move {
            if s.fill().await {
                std::future::pending::<()>().await;
            }
        }),
    );
    let net = h.net.clone();
    let o = h
        .exchange(Harness::get("/x", &[]), b"", |client| async move {
            net.until("a connection", |c| c.accepted == 1).await;
            client.leave();
        })
        .await;
    left_in(&o, Phase::Tls);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_leaves_while_its_body_is_sent_closes_the_upstream_connection() {
    let h = harness("", "");
    // Reads 1 KiB of the request and then nothing: a 1 MiB body fills the window.
    h.net.set(
        A,
        serve(|mut s| async move {
            while s.unread() < 1024 && s.fill().await {}
            std::future::pending::<()>().await;
        }),
    );
    let body = vec![b'x'; 1 << 20];
    let net = h.net.clone();
    let o = h
        .exchange(
            Harness::request("PUT", "/x", &[]),
            &body,
            |client| async move {
                net.until("a connection", |c| c.accepted == 1).await;
                client.leave();
            },
        )
        .await;
    left_in(&o, Phase::Request);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_leaves_while_the_upstream_thinks_closes_its_connection() {
    let h = harness("", "");
    h.net.set(A, serve(|s| s.hold()));
    let net = h.net.clone();
    let o = h
        .exchange(Harness::get("/x", &[]), b"", |client| async move {
            net.until("the request", |c| c.accepted == 1).await;
            tokio::time::sleep(250 * MS).await;
            client.leave();
        })
        .await;
    left_in(&o, Phase::ResponseHeaders);
    assert_eq!(o.took, 250 * MS);
    h.net.until("upstream closed", |c| c.closed == 1).await;
}

#[tokio::test(start_paused = true)]
async fn a_client_that_leaves_mid_body_cuts_the_upstream_off() {
    let h = harness("", "");
    h.net.set(
        A,
        serve(|mut s| async move {
            if s.request().await.is_some() {
                s.send(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nfirst")
                    .await;
                s.hold().await;
            }
        }),
    );
    let o = h
        .exchange(Harness::get("/x", &[]), b"", |client| async move {
            client
                .until("the first bytes", |got| got.body == b"first")
                .await;
            client.leave();
        })
        .await;
    left_in(&o, Phase::ResponseBody);
    h.net.until("upstream closed", |c| c.closed == 1).await;
}

// ---- shutdown ---------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_request_still_running_when_the_drain_ends_is_503_sd() {
    let h = harness("", "");
    h.net.set(A, serve(|s| s.hold()));
    let (net, kill) = (h.net.clone(), h.kill.clone());
    let o = h
        .exchange(Harness::get("/x", &[]), b"", |_| async move {
            net.until("the request", |c| c.accepted == 1).await;
            kill.notify_one();
        })
        .await;
    let a = o.answer.expect("answered");
    assert_eq!(
        (a.status, a.flag, a.variant),
        (503, Flag::Shutdown, Variant::Shutdown)
    );
    h.net.until("upstream closed", |c| c.closed == 1).await;
}

// ---- aggregate calls --------------------------------------------------------------

const AGGREGATE: &str = r#"
[upstreams.slow]
endpoints = ["10.0.1.1:80"]
timeout = "10s"
[upstreams.fast]
endpoints = ["10.0.1.2:80"]
timeout = "10s"
[[routes]]
name = "agg"
path = "/agg"
timeout = "1s"
[[routes.aggregate.calls]]
name = "coupons"
upstream = "slow"
path = "/coupons"
timeout = "300ms"
fallback = { coupons = [] }
[[routes.aggregate.calls]]
name = "coin"
upstream = "fast"
path = "/coin"
timeout = "300ms"
REQUIRED
"#;

/// The aggregate route in front of the catch-all; `required` for the `coin` call.
fn aggregate(required: bool) -> Harness {
    let calls = AGGREGATE.replace("REQUIRED", &format!("required = {required}"));
    let h = Harness::new(&format!(
        "[log]\naccess = \"off\"\n{}\n{calls}",
        "[upstreams.u]\nendpoints = [\"10.0.0.1:80\"]"
    ));
    h.net
        .set("10.0.1.2:80", answers(20 * MS, r#"{"coins": 7}"#));
    h
}

#[tokio::test(start_paused = true)]
async fn an_aggregate_call_that_times_out_is_served_its_fallback_at_the_call_timeout() {
    let h = aggregate(false);
    h.net.set("10.0.1.1:80", silent());
    let o = h.send(Harness::get("/agg", &[])).await;
    assert_eq!(o.status, Some(200), "{:?}", o.answer);
    let body: serde_json::Value = serde_json::from_slice(&o.body).expect("json");
    assert_eq!(body["coupons"], serde_json::json!({ "coupons": [] }));
    assert_eq!(body["coin"]["coins"], 7);
    assert_eq!(o.took, 300 * MS);
    assert_eq!(o.record.degraded.len(), 1);
    assert!(flags(&o).contains(&Flag::Degraded.code()));
}

#[tokio::test(start_paused = true)]
async fn a_required_aggregate_call_that_fails_fails_the_request() {
    let h = aggregate(true);
    h.net
        .set("10.0.1.1:80", answers(10 * MS, r#"{"coupons": [1]}"#));
    h.net.set("10.0.1.2:80", Peer::Refuse);
    let o = h.send(Harness::get("/agg", &[])).await;
    let a = o.answer.expect("answered");
    assert_eq!((a.status, a.flag), (502, Flag::UpstreamConnectFailure));
}

// ---- HTTP/2 upstreams -------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn an_h2_upstreams_refused_stream_is_sent_again_even_for_a_post() {
    let h = harness("protocol = \"h2\"\nendpoints = [\"10.0.0.1:80\"]", "");
    let streams = Arc::new(AtomicUsize::new(0));
    let count = streams.clone();
    h.net.set(
        A,
        serve(move |s| {
            let count = count.clone();
            s.h2(move |_req, mut respond, _net| {
                let n = count.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                    } else {
                        let resp = http::Response::builder()
                            .status(201)
                            .body(())
                            .expect("response");
                        let mut body = respond.send_response(resp, false).expect("send");
                        let _ = body.send_data(Bytes::from_static(b"made"), true);
                    }
                }
            })
        }),
    );
    let o = h
        .exchange(Harness::request("POST", "/x", &[]), b"order", |_| async {})
        .await;
    assert_eq!(o.status, Some(201), "{:?}", o.answer);
    assert_eq!(o.body, b"made");
    assert_eq!(o.record.attempts, 2);
    assert_eq!(streams.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn an_h2_upstream_that_never_answers_is_504_at_the_deadline_and_its_stream_reset() {
    let h = harness("protocol = \"h2\"\nendpoints = [\"10.0.0.1:80\"]", "");
    let reset = Arc::new(AtomicUsize::new(0));
    let seen = reset.clone();
    h.net.set(
        A,
        serve(move |s| {
            let seen = seen.clone();
            s.h2(move |_req, mut respond, net| {
                let seen = seen.clone();
                async move {
                    // Resolves when the gateway resets the stream.
                    let _ = std::future::poll_fn(|cx| respond.poll_reset(cx)).await;
                    seen.fetch_add(1, Ordering::SeqCst);
                    net.events.bump();
                }
            })
        }),
    );
    let o = h.send(Harness::get("/x", &[])).await;
    let a = o.answer.expect("answered");
    assert_eq!((a.status, a.flag), (504, Flag::UpstreamTimeout));
    assert_eq!(a.timeout, Some(TimeoutSource::Deadline));
    assert_eq!(o.took, Duration::from_secs(1));
    h.net
        .events
        .until("the stream reset", || reset.load(Ordering::SeqCst) == 1)
        .await;
}

// ---- no endpoint ------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn with_every_endpoint_ejected_the_answer_is_503_uh_at_once() {
    let h = harness(
        "[upstreams.u.outlier]\nconsecutive_failures = 1\nmax_ejection_percent = 100",
        "",
    );
    h.net.set(A, Peer::Refuse);
    h.net.set(B, Peer::Refuse);
    let first = h.send(Harness::get("/x", &[])).await;
    assert_eq!(
        first.answer.expect("answered").flag,
        Flag::UpstreamConnectFailure
    );
    let o = h.send(Harness::get("/x", &[])).await;
    let a = o.answer.expect("answered");
    assert_eq!(
        (a.status, a.flag, a.variant),
        (503, Flag::NoHealthyUpstream, Variant::NoEndpoint)
    );
    assert_eq!(o.record.attempts, 0);
    assert_eq!(o.took, Duration::ZERO);
}
