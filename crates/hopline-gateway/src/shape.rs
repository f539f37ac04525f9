//! The JSON shape of an aggregate call's fallback and of its answers, so that a fallback
//! of another shape is said once.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// The JSON kinds a call's answers and its fallback have, so that a fallback of another
/// shape than the answers (`[]` where the service answers an object) is said once, on
/// stderr and as an access-log event line, instead of reaching clients unnoticed.
#[derive(Debug)]
pub struct Shape {
    fallback: u8,
    answered: AtomicU8,
    said: AtomicBool,
}

/// The kind of a JSON text already checked to be one, from its first byte (0: not known).
fn kind_of_text(text: &[u8]) -> u8 {
    match text.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'n') => 1,
        Some(b't' | b'f') => 2,
        Some(b'-' | b'0'..=b'9') => 3,
        Some(b'"') => 4,
        Some(b'[') => 5,
        Some(b'{') => 6,
        _ => 0,
    }
}

/// A JSON value's kind as [`Shape`] keeps it (0: not known).
fn kind(v: &serde_json::Value) -> u8 {
    match v {
        serde_json::Value::Null => 1,
        serde_json::Value::Bool(_) => 2,
        serde_json::Value::Number(_) => 3,
        serde_json::Value::String(_) => 4,
        serde_json::Value::Array(_) => 5,
        serde_json::Value::Object(_) => 6,
    }
}

fn kind_name(k: u8) -> &'static str {
    match k {
        1 => "null",
        2 => "a boolean",
        3 => "a number",
        4 => "a string",
        5 => "an array",
        _ => "an object",
    }
}

impl Shape {
    /// The shape of a call whose fallback is the JSON text `fallback`.
    pub fn of_fallback(fallback: &str) -> Shape {
        Shape {
            fallback: serde_json::from_str(fallback).map_or(0, |v| kind(&v)),
            answered: AtomicU8::new(0),
            said: AtomicBool::new(false),
        }
    }

    /// Notes the kind of an answer the call got: `text`, already checked to be JSON.
    pub(crate) fn answered(&self, text: &[u8]) {
        self.answered.store(kind_of_text(text), Ordering::Relaxed);
    }

    /// When the call just fell back: the clash between its fallback's kind and its last
    /// answer's, the first time there is one.
    pub(crate) fn clash(&self) -> Option<(&'static str, &'static str)> {
        let answered = self.answered.load(Ordering::Relaxed);
        (answered != 0
            && self.fallback != 0
            && answered != self.fallback
            && !self.said.swap(true, Ordering::Relaxed))
        .then(|| (kind_name(self.fallback), kind_name(answered)))
    }
}
