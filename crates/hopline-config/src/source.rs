//! Problems found in a config file and where they are.

use std::fmt;
use std::ops::Range;

use crate::duration::DurationError;

/// A position in the file (1-based line and column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub column: usize,
}

impl Location {
    /// The location of byte `offset` in `text`.
    pub fn of(text: &str, offset: usize) -> Location {
        let offset = offset.min(text.len());
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Location { line, column }
    }
}

/// What is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProblemKind {
    /// The file is not valid TOML.
    #[error("TOML syntax: {0}")]
    Syntax(String),
    /// A key that hopline does not know.
    #[error("unknown key{}", did_you_mean(.suggestion))]
    UnknownKey {
        /// The known key of this table nearest in spelling, if one is near.
        suggestion: Option<&'static str>,
    },
    /// A required key is absent.
    #[error("missing required key")]
    Missing,
    /// A value of the wrong type.
    #[error("expected {expected}{}", for_example(.example))]
    WrongType {
        /// What was expected.
        expected: &'static str,
        /// The line written as expected, from the value given (`listen = "127.0.0.1:8080"`
        /// for `listen = 8080`), when one can be guessed.
        example: Option<String>,
    },
    /// A duration that does not parse.
    #[error(transparent)]
    Duration(#[from] DurationError),
    /// A duration that must be positive is zero.
    #[error("must be greater than zero (a timeout of 0 would mean no timeout)")]
    ZeroDuration,
    /// A value outside its allowed range or form.
    #[error("{0}")]
    Invalid(String),
    /// A route names an upstream that is not defined.
    #[error("unknown upstream {0:?} (define it as [upstreams.{0}])")]
    UnknownUpstream(String),
    /// Two items share a name.
    #[error("duplicate name {0:?}")]
    Duplicate(String),
    /// Keys that exclude each other.
    #[error("{0}")]
    Conflict(String),
}

fn did_you_mean(suggestion: &Option<&'static str>) -> String {
    suggestion.map_or(String::new(), |k| format!("; did you mean `{k}`?"))
}

fn for_example(example: &Option<String>) -> String {
    example
        .as_ref()
        .map_or(String::new(), |e| format!(", e.g. `{e}`"))
}

/// One problem: where, which key, what.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// Where in the file.
    pub location: Location,
    /// Byte range in the file, for snippets.
    pub span: Range<usize>,
    /// The dotted key, e.g. `upstreams.coupon.connect_timeout` or `routes[1].upstream`;
    /// empty for a problem of the file as a whole (TOML syntax).
    pub key: String,
    /// What is wrong.
    pub kind: ProblemKind,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Location { line, column } = self.location;
        if self.key.is_empty() {
            write!(f, "{line}:{column}: {}", self.kind)
        } else {
            write!(f, "{line}:{column}: key `{}`: {}", self.key, self.kind)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_one_based() {
        let t = "a = 1\nbb = 2\n";
        assert_eq!(Location::of(t, 0), Location { line: 1, column: 1 });
        assert_eq!(Location::of(t, 7), Location { line: 2, column: 2 });
    }
}
