//! Response flags: the short, closed set of codes that label why a response is what it is.

use std::fmt;

/// One response flag, as written in the access log, in metrics and in `x-hopline-flags`.
///
/// The names follow Envoy's response flags where one exists, so operators can read both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Flag {
    /// The deadline (or an attempt timeout) was reached while waiting on an upstream.
    UpstreamTimeout,
    /// The upstream connection could not be established (refused, timed out, unreachable).
    UpstreamConnectFailure,
    /// The upstream connection was reset or closed before the response completed.
    UpstreamConnectionTermination,
    /// The upstream sent something that is not valid HTTP/1.1.
    UpstreamProtocolError,
    /// The downstream client closed its connection before the response was complete.
    DownstreamConnectionTermination,
    /// The request head or body did not arrive within its server timeout.
    RequestTimeout,
    /// The request was malformed, ambiguous or over a size limit.
    DownstreamProtocolError,
    /// No route matched the request.
    NoRoute,
    /// An upstream or egress concurrency / connection-rate limit was full.
    UpstreamOverflow,
    /// An aggregate route answered with one or more fallbacks.
    Degraded,
    /// The gateway was shutting down and its drain period ran out.
    Shutdown,
    /// The client stopped reading: a write to it blocked longer than `write_timeout`.
    WriteTimeout,
    /// The upstream had no usable endpoint: none resolved, or every one ejected or
    /// failing its health checks.
    NoHealthyUpstream,
    /// The gateway was out of a resource of its own (`server.max_buffered_bytes`): the
    /// request was refused at once rather than let it run the process out of memory.
    Overload,
}

impl Flag {
    /// Every flag, in a stable order (for metrics pre-registration and docs).
    pub const ALL: [Flag; 14] = [
        Flag::UpstreamTimeout,
        Flag::UpstreamConnectFailure,
        Flag::UpstreamConnectionTermination,
        Flag::UpstreamProtocolError,
        Flag::DownstreamConnectionTermination,
        Flag::RequestTimeout,
        Flag::DownstreamProtocolError,
        Flag::NoRoute,
        Flag::UpstreamOverflow,
        Flag::Degraded,
        Flag::Shutdown,
        Flag::WriteTimeout,
        Flag::NoHealthyUpstream,
        Flag::Overload,
    ];

    /// The short code: `UT`, `UF`, `UC`, `UPE`, `DC`, `RT`, `DPE`, `NR`, `UO`, `DG`, `SD`, `WT`, `UH`, `OM`.
    pub const fn code(self) -> &'static str {
        match self {
            Flag::UpstreamTimeout => "UT",
            Flag::UpstreamConnectFailure => "UF",
            Flag::UpstreamConnectionTermination => "UC",
            Flag::UpstreamProtocolError => "UPE",
            Flag::DownstreamConnectionTermination => "DC",
            Flag::RequestTimeout => "RT",
            Flag::DownstreamProtocolError => "DPE",
            Flag::NoRoute => "NR",
            Flag::UpstreamOverflow => "UO",
            Flag::Degraded => "DG",
            Flag::Shutdown => "SD",
            Flag::WriteTimeout => "WT",
            Flag::NoHealthyUpstream => "UH",
            Flag::Overload => "OM",
        }
    }
}

impl fmt::Display for Flag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}
