//! A fault-injection TCP/HTTP proxy with Toxiproxy's toxics, a NAT-gateway model and a
//! Toxiproxy-compatible API.
//!
//! Faults are data ([`Toxic`]): a type, a direction, a probability, attributes.
//! They can be declared in a file ([`load`]) or managed live through the REST API
//! ([`serve`]); randomness is seeded so a drill can be replayed. This crate never depends on
//! the gateway: it is the gateway's adversary.

mod api;
mod file;
mod http;
mod pipe;
mod registry;
mod rng;
mod toxic;

pub use api::{serve, Options};
pub use file::{load, ChaosFile, FileError};
pub use registry::{ApiError, ProxySpec, Registry};
pub use toxic::{Stream, Toxic, ToxicKind};
