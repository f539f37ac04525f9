//! The one failure policy: given a failure and how far the exchange with the client got,
//! what to log, whether to answer, and whether the connection survives. Every protocol
//! front-end (HTTP/1 today) renders what this decides and decides nothing itself — the
//! role Pingora's `fail_to_proxy` plays there.

use crate::error::ProxyError;
use crate::flag::Flag;

/// How much of the request had been read from the client when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Its head could not be read whole (timed out, malformed, too large): the connection's
    /// framing is lost.
    Head,
    /// Its head was read, its body was not (wholly): bytes of it may still be arriving.
    Body,
    /// The whole request was read: the connection is at a request boundary.
    Done,
}

impl Stage {
    /// As the policy table in docs/errors.md spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Stage::Head => "head unread",
            Stage::Body => "body unread",
            Stage::Done => "read whole",
        }
    }
}

/// How far the exchange with the client had got when the request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// How much of the request was read.
    pub stage: Stage,
    /// The response head already went to the client.
    pub response_started: bool,
    /// The client wants to keep the connection and the gateway is not draining.
    pub keep_alive: bool,
    /// The upstream's status, when its response head was forwarded.
    pub upstream_status: Option<u16>,
}

/// What to do about a failed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The status to log (what the client got or would have got; 499 when it left).
    pub status: u16,
    /// The flag to log.
    pub flag: Flag,
    /// Write an error response (never once the response head went out, never to a client
    /// that left or stopped reading).
    pub respond: bool,
    /// Keep the connection for the next request.
    pub keep: bool,
    /// After the response, close our side and read and drop what the client still sends
    /// for a while (lingering close), so it reads the answer instead of a reset.
    pub linger: bool,
}

/// True for failures after which the connection cannot carry another request, whatever
/// the request's stage: its framing is lost or untrustworthy, or the gateway is going away.
fn breaks_connection(err: &ProxyError) -> bool {
    matches!(
        err,
        ProxyError::HeaderReadTimeout { .. }
            | ProxyError::BodyReadTimeout { .. }
            | ProxyError::BodyTooSlow { .. }
            | ProxyError::Malformed(_)
            | ProxyError::UriTooLong { .. }
            | ProxyError::HeadersTooLarge { .. }
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::NotImplemented { .. }
            | ProxyError::Shutdown { .. }
    )
}

/// The decision for `err` at `progress`.
pub fn fail_to_proxy(err: &ProxyError, progress: Progress) -> Decision {
    let d = err.disposition();
    let ended = Decision {
        status: d.status,
        flag: d.flag,
        respond: false,
        keep: false,
        linger: false,
    };
    match err {
        // Nobody to answer: the client left.
        ProxyError::ClientGone { .. } => ended,
        // The head went out, or the client stopped reading it: the client sees the response
        // cut short; the log keeps the status it got, with the failure's flag and cause.
        _ if progress.response_started
            || matches!(
                err,
                ProxyError::ClientWriteTimeout { .. } | ProxyError::ClientTooSlow { .. }
            ) =>
        {
            Decision {
                status: progress.upstream_status.unwrap_or(d.status),
                ..ended
            }
        }
        _ => {
            let keep =
                progress.keep_alive && progress.stage == Stage::Done && !breaks_connection(err);
            Decision {
                respond: true,
                keep,
                // Closing after an answer: linger, unless the gateway is going away.
                linger: !keep && !matches!(err, ProxyError::Shutdown { .. }),
                ..ended
            }
        }
    }
}

/// The `grpc-status` a failure becomes for a gRPC request (`content-type:
/// application/grpc…`): hopline then answers HTTP 200, trailers-only, with this code and
/// the short reason as `grpc-message`; a client that left is logged as 1 CANCELLED.
pub const fn grpc_status(flag: Flag) -> u8 {
    match flag {
        Flag::Degraded => 0,
        Flag::DownstreamConnectionTermination => 1,
        Flag::RequestTimeout | Flag::DownstreamProtocolError => 3,
        Flag::UpstreamTimeout | Flag::WriteTimeout => 4,
        Flag::NoRoute => 12,
        Flag::UpstreamProtocolError => 13,
        Flag::UpstreamConnectFailure
        | Flag::UpstreamConnectionTermination
        | Flag::UpstreamOverflow
        | Flag::NoHealthyUpstream
        | Flag::Overload
        | Flag::Shutdown => 14,
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::time::Duration;

    use super::*;
    use crate::error::{upstream, Overflow, Phase, TimeoutSource, UpstreamErrorKind};

    /// One row of the policy table: a failure, where it happened, and the decision.
    struct Row {
        failure: &'static str,
        err: ProxyError,
        progress: Progress,
        want: Decision,
    }

    const fn at(stage: Stage, started: bool, keep_alive: bool, upstream: Option<u16>) -> Progress {
        Progress {
            stage,
            response_started: started,
            keep_alive,
            upstream_status: upstream,
        }
    }

    const fn decide(status: u16, flag: Flag, respond: bool, keep: bool, linger: bool) -> Decision {
        Decision {
            status,
            flag,
            respond,
            keep,
            linger,
        }
    }

    fn rows() -> Vec<Row> {
        use Flag::*;
        use Stage::*;
        let gone = || ProxyError::ClientGone {
            elapsed: Duration::from_millis(5),
            waiting_on: None,
            source: io::Error::from(io::ErrorKind::UnexpectedEof),
        };
        let row = |failure, err, progress, want| Row {
            failure,
            err,
            progress,
            want,
        };
        vec![
            row(
                "header_read_timeout",
                ProxyError::HeaderReadTimeout {
                    limit: Duration::from_secs(5),
                },
                at(Head, false, true, None),
                decide(408, RequestTimeout, true, false, true),
            ),
            row(
                "malformed head",
                ProxyError::Malformed("bad".into()),
                at(Head, false, true, None),
                decide(400, DownstreamProtocolError, true, false, true),
            ),
            row(
                "request line too long",
                ProxyError::UriTooLong { limit: 8192 },
                at(Head, false, true, None),
                decide(414, DownstreamProtocolError, true, false, true),
            ),
            row(
                "head too large",
                ProxyError::HeadersTooLarge { limit: 65536 },
                at(Head, false, true, None),
                decide(431, DownstreamProtocolError, true, false, true),
            ),
            row(
                "not implemented (CONNECT, gzip)",
                ProxyError::NotImplemented { what: "CONNECT" },
                at(Body, false, true, None),
                decide(501, DownstreamProtocolError, true, false, true),
            ),
            row(
                "no route",
                ProxyError::NoRoute,
                at(Done, false, true, None),
                decide(404, NoRoute, true, true, false),
            ),
            row(
                "no route, body unread",
                ProxyError::NoRoute,
                at(Body, false, true, None),
                decide(404, NoRoute, true, false, true),
            ),
            row(
                "no route, client said close",
                ProxyError::NoRoute,
                at(Done, false, false, None),
                decide(404, NoRoute, true, false, true),
            ),
            row(
                "method not allowed",
                ProxyError::MethodNotAllowed {
                    route: "r".into(),
                    allow: "GET".into(),
                },
                at(Done, false, true, None),
                decide(405, DownstreamProtocolError, true, true, false),
            ),
            row(
                "body_read_timeout",
                ProxyError::BodyReadTimeout {
                    limit: Duration::from_secs(30),
                    setting: "body_read_timeout",
                    received: 10,
                },
                at(Body, false, true, None),
                decide(408, RequestTimeout, true, false, true),
            ),
            row(
                "body too large",
                ProxyError::BodyTooLarge { limit: 10 },
                at(Body, false, true, None),
                decide(413, DownstreamProtocolError, true, false, true),
            ),
            row(
                "streamed body passes max_body_bytes (upstream exchange aborted)",
                ProxyError::BodyTooLarge { limit: 10 },
                at(Body, false, true, None),
                decide(413, DownstreamProtocolError, true, false, true),
            ),
            row(
                "body sender below min_recv_rate",
                ProxyError::BodyTooSlow {
                    rate: 1024,
                    window: Duration::from_secs(10),
                    got: 100,
                    received: 100,
                },
                at(Body, false, true, None),
                decide(408, RequestTimeout, true, false, true),
            ),
            row(
                "buffer budget full (max_buffered_bytes)",
                ProxyError::BufferBudget {
                    kind: "request_body",
                    limit: 1 << 28,
                },
                at(Body, false, true, None),
                decide(503, Overload, true, false, true),
            ),
            row(
                "malformed chunked body",
                ProxyError::Malformed("bad chunk".into()),
                at(Body, false, true, None),
                decide(400, DownstreamProtocolError, true, false, true),
            ),
            row(
                "client gone while reading the body",
                gone(),
                at(Body, false, true, None),
                decide(499, DownstreamConnectionTermination, false, false, false),
            ),
            row(
                "upstream limit full",
                ProxyError::Overflow(Overflow::EgressInFlight { limit: 5 }),
                at(Done, false, true, None),
                decide(503, UpstreamOverflow, true, true, false),
            ),
            row(
                "deadline spent",
                ProxyError::DeadlineSpent {
                    budget: Duration::ZERO,
                },
                at(Done, false, true, None),
                decide(504, UpstreamTimeout, true, true, false),
            ),
            row(
                "caller budget below min_caller",
                ProxyError::CallerBudgetTooShort {
                    budget: Duration::from_millis(3),
                    min: Duration::from_millis(10),
                },
                at(Done, false, true, None),
                decide(504, UpstreamTimeout, true, true, false),
            ),
            row(
                "upstream connect/TLS failure",
                upstream(UpstreamErrorKind::ConnectRefused(io::Error::from(
                    io::ErrorKind::ConnectionRefused,
                ))),
                at(Done, false, true, None),
                decide(502, UpstreamConnectFailure, true, true, false),
            ),
            row(
                "upstream timeout",
                upstream(UpstreamErrorKind::Timeout {
                    phase: Phase::ResponseHeaders,
                    limit: Duration::from_millis(300),
                    source_limit: TimeoutSource::Deadline,
                }),
                at(Done, false, true, None),
                decide(504, UpstreamTimeout, true, true, false),
            ),
            row(
                "upstream timeout, client said close",
                upstream(UpstreamErrorKind::Timeout {
                    phase: Phase::ResponseHeaders,
                    limit: Duration::from_millis(300),
                    source_limit: TimeoutSource::Deadline,
                }),
                at(Done, false, false, None),
                decide(504, UpstreamTimeout, true, false, true),
            ),
            row(
                "upstream reset mid-body",
                upstream(UpstreamErrorKind::Reset {
                    phase: Phase::ResponseBody,
                    source: io::Error::from(io::ErrorKind::ConnectionReset),
                }),
                at(Done, true, true, Some(200)),
                decide(200, UpstreamConnectionTermination, false, false, false),
            ),
            row(
                "required aggregate call failed",
                ProxyError::BadCallResponse {
                    call: "c".into(),
                    detail: "500".into(),
                },
                at(Done, false, true, None),
                decide(502, UpstreamProtocolError, true, true, false),
            ),
            row(
                "client gone while waiting",
                gone(),
                at(Done, false, true, None),
                decide(499, DownstreamConnectionTermination, false, false, false),
            ),
            row(
                "client gone mid-response",
                gone(),
                at(Done, true, true, Some(200)),
                decide(499, DownstreamConnectionTermination, false, false, false),
            ),
            row(
                "client stopped reading",
                ProxyError::ClientWriteTimeout {
                    limit: Duration::from_secs(30),
                },
                at(Done, true, true, Some(200)),
                decide(200, WriteTimeout, false, false, false),
            ),
            row(
                "client reading below min_send_rate",
                ProxyError::ClientTooSlow {
                    rate: 1024,
                    window: Duration::from_secs(30),
                    got: 4096,
                    sent: 1 << 20,
                },
                at(Done, true, true, Some(200)),
                decide(200, WriteTimeout, false, false, false),
            ),
            row(
                "drain over, no response yet",
                ProxyError::Shutdown {
                    drain: Duration::from_secs(10),
                },
                at(Done, false, true, None),
                decide(503, Shutdown, true, false, false),
            ),
            row(
                "drain over mid-response",
                ProxyError::Shutdown {
                    drain: Duration::from_secs(10),
                },
                at(Done, true, true, Some(200)),
                decide(200, Shutdown, false, false, false),
            ),
        ]
    }

    #[test]
    fn every_row_of_the_policy_table() {
        for r in rows() {
            assert_eq!(fail_to_proxy(&r.err, r.progress), r.want, "{}", r.failure);
        }
    }

    /// The table as docs/errors.md shows it.
    fn table() -> String {
        let yes = |b: bool| if b { "yes" } else { "no" };
        let mut out = String::from(
            "| failure | request | response head sent | client keep-alive | logged status | flag | error response | connection |\n|---|---|---|---|---|---|---|---|\n",
        );
        for r in rows() {
            let p = r.progress;
            let d = fail_to_proxy(&r.err, p);
            let connection = match (d.keep, d.linger) {
                (true, _) => "kept",
                (false, true) => "closed, lingering",
                (false, false) => "closed",
            };
            let status = match (p.upstream_status, p.response_started) {
                (Some(s), true) if d.status == s => format!("{s} (upstream's)"),
                _ => d.status.to_string(),
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | `{}` | {} | {} |\n",
                r.failure,
                p.stage.as_str(),
                yes(p.response_started),
                yes(p.keep_alive),
                status,
                d.flag.code(),
                yes(d.respond),
                connection
            ));
        }
        out
    }

    #[test]
    fn docs_errors_md_shows_exactly_this_policy() {
        let doc = include_str!("../../../docs/errors.md");
        let section = doc
            .split_once("<!-- policy:begin -->\n")
            .and_then(|(_, rest)| rest.split_once("<!-- policy:end -->"))
            .map(|(table, _)| table);
        assert_eq!(
            section,
            Some(table().as_str()),
            "docs/errors.md's policy table differs; it should read:\n{}",
            table()
        );
    }

    #[test]
    fn grpc_statuses_follow_the_flag() {
        let want = [
            (Flag::UpstreamTimeout, 4),
            (Flag::UpstreamConnectFailure, 14),
            (Flag::UpstreamConnectionTermination, 14),
            (Flag::UpstreamOverflow, 14),
            (Flag::Shutdown, 14),
            (Flag::UpstreamProtocolError, 13),
            (Flag::NoRoute, 12),
            (Flag::RequestTimeout, 3),
            (Flag::DownstreamProtocolError, 3),
            (Flag::DownstreamConnectionTermination, 1),
            (Flag::WriteTimeout, 4),
            (Flag::Degraded, 0),
            (Flag::NoHealthyUpstream, 14),
            (Flag::Overload, 14),
        ];
        assert_eq!(want.len(), Flag::ALL.len());
        for (flag, code) in want {
            assert_eq!(grpc_status(flag), code, "{flag}");
        }
    }
}
