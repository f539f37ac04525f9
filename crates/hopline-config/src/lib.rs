#![recursion_limit = "256"]
//! Reads hopline TOML config files into validated hopline-core config, reporting every
//! problem with file:line:col and key.
//!
//! Parsing happens once, at the edge: the whole file is walked, every problem is collected
//! (unknown keys, missing keys, wrong types, bad durations, dangling references), and
//! only a fully valid file becomes a [`hopline_core::config::Config`].

pub mod audit;
pub mod duration;
pub mod json;
mod reader;
pub mod schema;
mod source;
pub mod walk;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use hopline_core::config::Config;

pub use duration::{parse_duration, DurationError};
pub use source::{Location, Problem, ProblemKind};

/// A config file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read config file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file was read but is not a valid config.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

/// Every problem found in one config file.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// The problems, in file order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "invalid config {}: {n} problem{}",
            self.path.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {}:{p}", self.path.display())?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Reads and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(parse(&text, path)?)
}

/// Validates config text read from `path` (used in messages, and as the base of relative
/// certificate and key paths).
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let mut config = reader::read(text).map_err(|problems| ConfigError {
        path: path.to_path_buf(),
        problems,
    })?;
    if let Some(dir) = path.parent() {
        relative_to(&mut config, dir);
    }
    Ok(config)
}

/// Makes the TLS file paths that are relative absolute against the config file's
/// directory `dir`, so a config works from any working directory.
fn relative_to(config: &mut Config, dir: &Path) {
    let fix = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = dir.join(&*p);
        }
    };
    if let Some(tls) = &mut config.server.tls {
        for c in &mut tls.certs {
            fix(&mut c.cert);
            fix(&mut c.key);
        }
    }
    for u in &mut config.upstreams {
        if let Some(tls) = &mut u.tls {
            for p in [&mut tls.ca, &mut tls.client_cert, &mut tls.client_key]
                .into_iter()
                .flatten()
            {
                fix(p);
            }
        }
    }
}
