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

/// Validates config text; `path` is used in messages only.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    reader::read(text).map_err(|problems| ConfigError {
        path: path.to_path_buf(),
        problems,
    })
}
