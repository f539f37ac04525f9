//! Error kinds, sides, flags, deadlines and validated config types of the hopline gateway (no I/O).
//!
//! Everything here is plain data: the gateway, the config reader and the audit all speak
//! these types, so a cause is classified once and means the same thing everywhere.

pub mod config;
pub mod deadline;
pub mod error;
pub mod flag;
pub mod policy;
pub mod text;
pub mod time;
pub mod trace;

pub use deadline::{Deadline, DeadlineSource, Moment};
pub use error::{
    Disposition, Overflow, Phase, ProxyError, SharedRefusal, Side, TimeoutSource, TlsFailure,
    UpstreamError, UpstreamErrorKind,
};
pub use flag::Flag;
