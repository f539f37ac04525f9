//! Request bodies streamed to the upstream, on tokio's paused clock: read only once an
//! upstream connection is up, at the upstream's pace, under the client-side limits; the
//! start kept for a stale-connection resend; `request_buffering` and the buffer budget.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hopline_core::{Flag, Phase, TimeoutSource};

use super::tests::{A, B};
use crate::testkit::{ok, serve, Harness, Peer, Received, Variant};
use crate::upstream::endpoint::State;

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

/// Upstream `u` (A and B, round robin, connect_timeout 100 ms, attempt timeout 1 s)
/// behind route `r` (timeout 60 s, for uploads). `server`, `upstream` and `route` are
/// extra lines for each table.
fn uploads(server: &str, upstream: &str, route: &str) -> Harness {
    let endpoints = if upstream.contains("endpoints =") {
        String::new()
    } else {
        format!("endpoints = [\"{A}\", \"{B}\"]")
    };
    Harness::new(&format!(
        r#"
[log]
access = "off"
[server]
{server}
[retry_budget]
ratio = 1.0
min_per_sec = 100
[upstreams.u]
{endpoints}
lb = "round_robin"
connect_timeout = "100ms"
timeout = "1s"
{upstream}
[[routes]]
name = "r"
path_prefix = "/"
upstream = "u"
timeout = "60s"
{route}
"#
    ))
}

/// A peer that keeps each request it reads and answers `ok(body)`.
fn keeps(seen: Arc<Mutex<Vec<Received>>>) -> Peer {
    serve(move |mut s| {
        let seen = seen.clone();
        async move {
            while let Some(r) = s.request().await {
                seen.lock().expect("lock").push(r);
                s.send(&ok("done")).await;
            }
        }
    })
}

fn bodies(seen: &Mutex<Vec<Received>>) -> Vec<Vec<u8>> {
    seen.lock()
        .expect("lock")
        .iter()
        .map(|r| r.body.clone())
        .collect()
}

fn post(method: &str) -> crate::front::Request {
    Harness::request(method, "/up", &[])
}

#[tokio::test(start_paused = true)]
async fn a_connect_failure_reads_nothing_of_the_body_and_any_method_is_retried() {
    let h = uploads("", "", "");
    h.net.set(A, Peer::Blackhole);
    let seen = Arc::new(Mutex::new(Vec::new()));
    h.net.set(B, keeps(seen.clone()));
    let o = h
        .upload(post("POST"), Some(10), |c| async move {
            c.send(b"0123456789");
            c.end_body();
            // A black hole until connect_timeout: not a byte was read meanwhile.
            tokio::time::sleep(99 * MS).await;
            assert_eq!(c.taken(), 0, "nothing read before a connection is up");
        })
        .await;
    assert_eq!(o.status, Some(200));
    assert_eq!(
        o.record.attempts, 2,
        "the POST went to B after A's connect failed"
    );
    assert_eq!(bodies(&seen), vec![b"0123456789".to_vec()]);
}

#[tokio::test(start_paused = true)]
async fn a_body_moves_at_the_upstreams_pace() {
    let h = uploads("", "", "");
    // The upstream reads the head and then nothing: what the gateway read of the body is
    // at most what the in-memory connection buffers (64 KiB), not the 1 MiB sent.
    h.net.set(
        A,
        serve(|mut s| async move {
            while s.unread() == 0 {
                if !s.fill().await {
                    return;
                }
            }
            std::future::pending::<()>().await;
        }),
    );
    let o = h
        .upload(post("POST"), Some(1 << 20), |c| async move {
            for _ in 0..64 {
                c.send(&[b'x'; 16 << 10]);
            }
            tokio::time::sleep(500 * MS).await;
            let taken = c.taken();
            assert!(
                taken <= 96 << 10,
                "the gateway read {taken} bytes ahead of an upstream that reads nothing"
            );
        })
        .await;
    // Then the attempt times out: the upstream's, in phase `request`.
    let a = o.answer.expect("answered");
    assert_eq!((a.status, a.flag), (504, Flag::UpstreamTimeout));
    assert_eq!(a.phase, Some(Phase::Request));
}

#[tokio::test(start_paused = true)]
async fn time_spent_waiting_on_the_client_is_not_the_upstreams_timeout() {
    let h = uploads("", "endpoints = [\"10.0.0.1:80\"]", "");
    let seen = Arc::new(Mutex::new(Vec::new()));
    h.net.set(A, keeps(seen.clone()));
    // 16 KiB over 3.5 s (4.6 KiB/s, above min_recv_rate), the attempt timeout 1 s.
    let o = h
        .upload(post("PUT"), Some(16 << 10), |c| async move {
            for i in 0..8 {
                if i > 0 {
                    tokio::time::sleep(500 * MS).await;
                }
                c.send(&[b'a' + i; 2 << 10]);
            }
        })
        .await;
    assert_eq!(o.status, Some(200), "{:?}", o.answer);
    assert_eq!(o.took, 3500 * MS);
    assert_eq!(bodies(&seen)[0].len(), 16 << 10);
}

#[tokio::test(start_paused = true)]
async fn the_upstreams_timeout_runs_again_once_the_client_is_done() {
    let h = uploads("", "endpoints = [\"10.0.0.1:80\"]", "");
    h.net.set(A, crate::testkit::silent());
    let o = h
        .upload(post("PUT"), Some(4 << 10), |c| async move {
            c.send(&[b'a'; 2 << 10]);
            tokio::time::sleep(3 * SEC).await;
            c.send(&[b'b'; 2 << 10]);
        })
        .await;
    let a = o.answer.expect("answered");
    assert_eq!((a.status, a.flag), (504, Flag::UpstreamTimeout));
    assert_eq!(a.timeout, Some(TimeoutSource::AttemptTimeout));
    assert_eq!(
        o.took,
        4 * SEC,
        "3 s waiting on the client, then the 1 s attempt timeout"
    );
    // Not the endpoint's failure to have waited on the client.
    assert_eq!(o.record.attempts, 1);
}

#[tokio::test(start_paused = true)]
async fn a_trickling_sender_is_cut_at_min_recv_rate_and_no_upstream_is_blamed() {
    let h = uploads("", "", "");
    let seen = Arc::new(Mutex::new(Vec::new()));
    h.net.set(A, keeps(seen.clone()));
    h.net.set(B, keeps(seen.clone()));
    // 100 bytes a second: below 1 KiB/s over the 10 s window that follows the 5 s grace.
    let o = h
        .upload(post("POST"), Some(1 << 20), |c| async move {
            for _ in 0..60 {
                c.send(&[b'x'; 100]);
                tokio::time::sleep(SEC).await;
            }
        })
        .await;
    let a = o.answer.expect("answered");
    assert_eq!((a.status, a.flag), (408, Flag::RequestTimeout));
    assert_eq!(o.record.duration, 15 * SEC);
    let cause = o.record.cause.expect("cause");
    assert!(
        cause.contains("below min_recv_rate 1024 bytes/s"),
        "{cause}"
    );
    // The upstream saw its request cut: its connection closed, and it is not ejected.
    h.net.until("upstream closed", |c| c.closed >= 1).await;
    let states = h.gw.upstreams[0].endpoints.states();
    assert!(states.iter().all(|(_, s)| *s == State::Usable));
}

#[tokio::test(start_paused = true)]
async fn a_sender_within_the_rate_is_never_cut_however_long_it_takes() {
    let h = uploads("", "endpoints = [\"10.0.0.1:80\"]", "");
    let seen = Arc::new(Mutex::new(Vec::new()));
    h.net.set(A, keeps(seen.clone()));
    // 2 KiB a second for 30 s.
    let o = h
        .upload(post("POST"), Some(60 << 10), |c| async move {
            for _ in 0..30 {
                c.send(&[b'x'; 2 << 10]);
                tokio::time::sleep(SEC).await;
            }
        })
        .await;
    assert_eq!(o.status, Some(200), "{:?}", o.record.cause);
    assert_eq!(bodies(&seen)[0].len(), 60 << 10);
}

#[tokio::test(start_paused = true)]
async fn a_streamed_body_past_max_body_bytes_aborts_the_exchange_with_413() {
    let h = uploads("max_body_bytes = 4096", "endpoints = [\"10.0.0.1:80\"]", "");
    h.net.set(A, serve(|s| async move { s.hold().await }));
    let o = h
        .upload(post("POST"), None, |c| async move {
            for _ in 0..4 {
                c.send(&[b'x'; 1500]);
            }
        })
        .await;
    let a = o.answer.expect("answered");
    assert_eq!((a.status, a.flag), (413, Flag::DownstreamProtocolError));
    assert_eq!(o.next, crate::front::Next::Close);
    h.net.until("upstream closed", |c| c.closed == 1).await;
}

#[tokio::test(start_paused = true)]
async fn a_stale_connection_resend_replays_the_kept_start_of_the_body() {
    stale_resend(uploads("", "endpoints = [\"10.0.0.1:80\"]", ""), 20 << 10).await;
}

#[tokio::test(start_paused = true)]
async fn a_large_buffered_body_is_sent_apart_from_its_head_and_resent_whole() {
    let h = uploads(
        "",
        "endpoints = [\"10.0.0.1:80\"]",
        "request_buffering = true",
    );
    stale_resend(h, 300 << 10).await;
}

/// A PUT of `len` bytes whose pooled connection turns out stale: resent whole on a new one.
async fn stale_resend(h: Harness, len: usize) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let keep = seen.clone();
    // The first connection answers one request and closes on reading the second; the
    // next keeps what it reads.
    let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    h.net.set(
        A,
        serve(move |mut s| {
            let (keep, conns) = (keep.clone(), conns.clone());
            async move {
                let first = conns.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
                while let Some(r) = s.request().await {
                    if first && !keep.lock().expect("lock").is_empty() {
                        return;
                    }
                    keep.lock().expect("lock").push(r);
                    s.send(&ok("done")).await;
                }
            }
        }),
    );
    assert_eq!(h.send(Harness::get("/warm", &[])).await.status, Some(200));
    let o = h
        .upload(post("PUT"), Some(len as u64), |c| async move {
            c.send(&vec![b'p'; len]);
        })
        .await;
    assert_eq!(o.status, Some(200), "{:?}", o.record.cause);
    assert_eq!(o.record.attempts, 2);
    assert_eq!(bodies(&seen)[1], vec![b'p'; len], "resent whole");
}

#[tokio::test(start_paused = true)]
async fn a_body_that_outgrew_the_retry_buffer_is_not_resent_and_the_log_says_so() {
    let h = uploads(
        "",
        "endpoints = [\"10.0.0.1:80\"]\nretry_buffer_bytes = 1024",
        "",
    );
    let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    h.net.set(A, super::tests::closes_on_second(conns.clone()));
    assert_eq!(h.send(Harness::get("/warm", &[])).await.status, Some(200));
    let o = h
        .upload(post("PUT"), Some(4 << 10), |c| async move {
            c.send(&[b'p'; 4 << 10]);
        })
        .await;
    let a = o.answer.expect("answered");
    assert_eq!(
        (a.status, a.flag),
        (502, Flag::UpstreamConnectionTermination)
    );
    assert_eq!(o.record.attempts, 1);
    let cause = o.record.cause.expect("cause");
    assert!(
        cause.ends_with("; not retried: 4 KiB of the body already sent"),
        "{cause}"
    );
}

#[tokio::test(start_paused = true)]
async fn request_buffering_reads_the_body_whole_before_the_upstream_is_called() {
    let h = uploads(
        "",
        "endpoints = [\"10.0.0.1:80\"]",
        "request_buffering = true",
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    h.net.set(A, keeps(seen.clone()));
    let o = h
        .upload(post("POST"), None, |c| async move {
            c.send(b"hello ");
            tokio::time::sleep(SEC).await;
            assert_eq!(c.taken(), 6, "read before any upstream is called");
            c.send(b"world");
            c.end_body();
        })
        .await;
    assert_eq!(o.status, Some(200));
    assert_eq!(h.net.counts().dials, 1);
    // Sent with its length now known, not chunked.
    let first = seen.lock().expect("lock")[0].clone();
    assert_eq!(first.header("content-length"), Some("11"));
    assert_eq!(first.body, b"hello world");
}

#[tokio::test(start_paused = true)]
async fn a_buffered_body_the_budget_cannot_hold_is_refused_at_once_with_om() {
    let h = uploads(
        "max_buffered_bytes = 1048576",
        "endpoints = [\"10.0.0.1:80\"]",
        "request_buffering = true",
    );
    h.net.set(A, crate::testkit::answers(Duration::ZERO, "x"));
    let o = h
        .upload(post("POST"), Some(2 << 20), |c| async move {
            c.send(&[b'x'; 1024]);
        })
        .await;
    let a = o.answer.expect("answered");
    assert_eq!(
        (a.status, a.flag, a.variant),
        (503, Flag::Overload, Variant::Other)
    );
    assert_eq!(o.took, Duration::ZERO, "refused at once");
    assert_eq!(h.net.counts().dials, 0);
    assert_eq!(h.gw.buffers.used(), 0, "nothing is left held");
    let text = h.gw.metrics.encode(&[], &[], &[]);
    assert!(
        text.contains("hopline_buffer_budget_refused_total{kind=\"request_body\"} 1"),
        "{text}"
    );
}
