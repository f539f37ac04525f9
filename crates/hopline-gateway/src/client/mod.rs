//! The client side, the top floor: a client connection's timers and parking, the HTTP/1
//! and HTTP/2 servers that read requests and carry responses, the TLS listener. It hands
//! each request to the request core ([`crate::request`]) through the seam in
//! [`crate::front`], and nothing below uses it.

pub(crate) mod conn;
pub(crate) mod h1;
pub(crate) mod h2;
pub(crate) mod park;
pub(crate) mod tls;
