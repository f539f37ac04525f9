//! The gateway's one clock: tokio's. Every time read in this crate is
//! `tokio::time::Instant::now()` (`crates/hopline-gateway/clippy.toml` refuses
//! `std::time::Instant`), so timers, deadlines, pools and ejections all follow a paused
//! test clock together, and a deadline is the same instant the timer waiting on it wakes at.

/// A request's deadline, read on tokio's clock.
pub(crate) type Deadline = hopline_core::Deadline<tokio::time::Instant>;
