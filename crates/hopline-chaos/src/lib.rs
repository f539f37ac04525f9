//! A fault-injection TCP/HTTP proxy with Toxiproxy's toxics, a NAT-gateway model and a
//! Toxiproxy-compatible API.
//!
//! Faults are data ([`toxic::Toxic`]): a type, a direction, a probability, attributes.
//! They can be declared in a file ([`file`]) or managed live through the REST API
//! ([`api`]); randomness is seeded so a drill can be replayed. This crate never depends on
//! the gateway: it is the gateway's adversary.

pub mod api;
pub mod file;
pub mod http;
pub mod pipe;
pub mod registry;
pub mod rng;
pub mod toxic;

pub use registry::{ApiError, ProxySpec, Registry};
pub use toxic::{Stream, Toxic, ToxicKind};
