//! Durations as configs write them: `250ms`, `5s`, `1.5s`, `2m`, `1h`, `100us`.

use std::time::Duration;

/// A duration string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// No unit after the number.
    #[error("missing unit in {0:?} (use ms, s, m, h or us, e.g. \"250ms\")")]
    MissingUnit(String),
    /// An unknown unit.
    #[error("unknown unit {unit:?} in {text:?} (use ms, s, m, h or us)")]
    UnknownUnit {
        /// The whole text.
        text: String,
        /// The unit given.
        unit: String,
    },
    /// Not a non-negative number.
    #[error("{0:?} is not a duration (expected e.g. \"250ms\" or \"5s\")")]
    NotANumber(String),
    /// Too large.
    #[error("{0:?} is too large")]
    TooLarge(String),
}

/// Parses `"<number><unit>"`, with units `us`, `ms`, `s`, `m`, `h`.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| DurationError::MissingUnit(text.to_string()))?;
    let (num, unit) = t.split_at(split);
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') || num.matches('.').count() > 1
    {
        return Err(DurationError::NotANumber(text.to_string()));
    }
    let value: f64 = num
        .parse()
        .map_err(|_| DurationError::NotANumber(text.to_string()))?;
    let nanos_per_unit = match unit.trim() {
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" => 60e9,
        "h" => 3600e9,
        other => {
            return Err(DurationError::UnknownUnit {
                text: text.to_string(),
                unit: other.to_string(),
            })
        }
    };
    let nanos = value * nanos_per_unit;
    if nanos > 1e18 {
        return Err(DurationError::TooLarge(text.to_string()));
    }
    Ok(Duration::from_nanos(nanos.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_config_forms() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("100us"), Ok(Duration::from_micros(100)));
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            parse_duration("5"),
            Err(DurationError::MissingUnit(_))
        ));
        assert!(matches!(
            parse_duration("5 sec"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_duration("-1s"),
            Err(DurationError::NotANumber(_))
        ));
        assert!(matches!(
            parse_duration("s"),
            Err(DurationError::NotANumber(_))
        ));
        assert!(matches!(
            parse_duration("1.2.3s"),
            Err(DurationError::NotANumber(_))
        ));
        assert!(matches!(
            parse_duration("99999999999h"),
            Err(DurationError::TooLarge(_))
        ));
    }
}
