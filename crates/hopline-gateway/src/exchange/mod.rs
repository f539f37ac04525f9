//! Exchanges with upstreams, below the request core: the attempt layer (limits, budget,
//! retries, one span per attempt), the upstream request rendered from the client's,
//! HTTP/1.1 and HTTP/2 proxying, and WebSocket tunnels. It uses the assembled gateway,
//! the seam's types and the upstreams' endpoints and pools below it.

pub(crate) mod attempt;
pub(crate) mod forward;
pub(crate) mod proxy;
pub(crate) mod proxy_h2;
pub(crate) mod websocket;
