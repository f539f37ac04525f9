//! The one TOML walker: reads a parsed document table by table, remembers the keys it
//! used so every other key is reported as unknown, and collects every problem (missing
//! keys, wrong types, bad durations, out-of-range numbers) with its line, column and
//! dotted key instead of stopping at the first. The gateway config and the drill
//! scenarios are both read with it.

use std::ops::Range;
use std::time::Duration;

use toml_edit::{ImDocument, Item, Key, TableLike, Value};

use crate::duration::parse_duration;
use crate::source::{Location, Problem, ProblemKind};

/// What a duration key expects.
const DURATION: &str = "a duration string";

/// `key`'s line written as `expected`, guessed from the value given: a number where a
/// string is expected is quoted (`listen = 8080` → `listen = "127.0.0.1:8080"`, a
/// duration gets a unit: `timeout = 2` → `timeout = "2s"`), a lone string where a list
/// is expected is put in one, a quoted number or boolean is unquoted.
fn example(key: &str, expected: &str, given: &Value) -> Option<String> {
    let number = match given {
        Value::Integer(n) => Some(n.value().to_string()),
        Value::Float(f) => Some(f.value().to_string()),
        _ => None,
    };
    match (expected, number, given.as_str()) {
        (DURATION, Some(n), _) => Some(format!("{key} = \"{n}s\"")),
        ("a string", Some(n), _) if key == "listen" => Some(format!("{key} = \"127.0.0.1:{n}\"")),
        ("a string", Some(n), _) => Some(format!("{key} = \"{n}\"")),
        ("an array of strings", _, Some(s)) => Some(format!("{key} = [{:?}]", s)),
        ("an integer" | "a number", _, Some(s)) if s.trim().parse::<f64>().is_ok() => {
            Some(format!("{key} = {}", s.trim()))
        }
        ("true or false", _, Some(s)) if matches!(s, "true" | "false") => {
            Some(format!("{key} = {s}"))
        }
        _ => None,
    }
}

/// The known key nearest to `name` in spelling: at most two edits (one for names of four
/// letters or fewer), the nearest first, ties to the first read.
fn nearest(name: &str, known: &[&'static str]) -> Option<&'static str> {
    let limit = if name.chars().count() <= 4 { 1 } else { 2 };
    known
        .iter()
        .map(|k| (edits(name, k), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Edits (insert, delete, substitute, swap two neighbours) that turn `a` into `b`
/// (optimal string alignment distance).
fn edits(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// A value and where it is in the file.
pub type Spanned<'a> = (&'a str, Option<Range<usize>>);

/// Collects problems with their locations.
pub struct Cx<'t> {
    text: &'t str,
    problems: Vec<Problem>,
}

impl Cx<'_> {
    /// Records a problem at `span` (the file's start when unknown) for `key`.
    pub fn report(&mut self, span: Option<Range<usize>>, key: String, kind: ProblemKind) {
        let span = span.unwrap_or(0..0);
        self.problems.push(Problem {
            location: Location::of(self.text, span.start),
            span,
            key,
            kind,
        });
    }
}

impl<'t> Cx<'t> {
    /// A walk over `text`.
    pub fn new(text: &'t str) -> Self {
        Cx {
            text,
            problems: Vec::new(),
        }
    }

    /// Parses `text` as TOML; a syntax error is reported (with no key: it is the file's)
    /// and `None`.
    pub fn parse(&mut self, text: &str) -> Option<ImDocument<String>> {
        match ImDocument::parse(text.to_string()) {
            Ok(d) => Some(d),
            Err(e) => {
                // toml_edit's message may run over lines ("invalid table header\nexpected
                // `.`, `]`"): one line, so each problem stays one line.
                let message: Vec<&str> = e.message().lines().map(str::trim).collect();
                self.report(
                    e.span(),
                    String::new(),
                    ProblemKind::Syntax(message.join("; ")),
                );
                None
            }
        }
    }

    /// The problems found, in file order; `Ok` when there are none.
    pub fn finish(mut self) -> Result<(), Vec<Problem>> {
        if self.problems.is_empty() {
            return Ok(());
        }
        self.problems.sort_by_key(|p| p.span.start);
        Err(self.problems)
    }
}

/// A table being read: remembers which keys were used, so the rest can be reported.
pub struct Tbl<'a> {
    path: String,
    table: &'a dyn TableLike,
    span: Option<Range<usize>>,
    seen: Vec<&'static str>,
}

impl<'a> Tbl<'a> {
    fn new(path: String, table: &'a dyn TableLike, span: Option<Range<usize>>) -> Self {
        Tbl {
            path,
            table,
            span,
            seen: Vec::new(),
        }
    }

    /// The document's top-level table.
    pub fn root(doc: &'a ImDocument<String>) -> Self {
        Tbl::new(String::new(), doc.as_table(), Some(0..0))
    }

    /// The dotted path of `key` in this table, e.g. `upstreams.coupon.timeout`.
    pub fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// True when the table has `key` (read or not).
    pub fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    /// Where this table is in the file.
    pub fn span(&self) -> Option<Range<usize>> {
        self.span.clone()
    }

    fn get(&mut self, key: &'static str) -> Option<(&'a Key, &'a Item)> {
        self.seen.push(key);
        self.table.get_key_value(key)
    }

    fn item_span(key: &Key, item: &Item) -> Option<Range<usize>> {
        item.span().or_else(|| key.span())
    }

    /// `key`'s value when it is a boolean (without reading it: the key is still to be read
    /// as what it is).
    pub fn peek_bool(&self, key: &str) -> Option<bool> {
        self.table.get(key)?.as_value()?.as_bool()
    }

    /// The span of `key`'s value, for cross-checks after reading.
    pub fn value_span(&self, key: &str) -> Option<Range<usize>> {
        self.table
            .get_key_value(key)
            .and_then(|(k, i)| Self::item_span(k, i))
            .or_else(|| self.span.clone())
    }

    fn value(
        &mut self,
        cx: &mut Cx,
        key: &'static str,
        expected: &'static str,
    ) -> Option<(&'a Value, Option<Range<usize>>)> {
        let (k, item) = self.get(key)?;
        let span = Self::item_span(k, item);
        match item.as_value() {
            Some(v) => Some((v, span)),
            None => {
                let kind = ProblemKind::WrongType {
                    expected,
                    example: None,
                };
                cx.report(span, self.key_path(key), kind);
                None
            }
        }
    }

    /// Reports `key`'s value `given` as not the `expected` type, with an example of the
    /// line written as expected when one can be guessed from it.
    fn wrong_type(
        &self,
        cx: &mut Cx,
        span: Option<Range<usize>>,
        key: &str,
        expected: &'static str,
        given: &Value,
    ) {
        let kind = ProblemKind::WrongType {
            expected,
            example: example(key, expected, given),
        };
        cx.report(span, self.key_path(key), kind);
    }

    /// An optional string.
    pub fn str(
        &mut self,
        cx: &mut Cx,
        key: &'static str,
    ) -> Option<(&'a str, Option<Range<usize>>)> {
        self.str_as(cx, key, "a string")
    }

    /// An optional string, `expected` naming what it holds when it is not one.
    fn str_as(
        &mut self,
        cx: &mut Cx,
        key: &'static str,
        expected: &'static str,
    ) -> Option<(&'a str, Option<Range<usize>>)> {
        let (v, span) = self.value(cx, key, expected)?;
        match v.as_str() {
            Some(s) => Some((s, span)),
            None => {
                self.wrong_type(cx, span, key, expected, v);
                None
            }
        }
    }

    /// A required string: `Missing` when absent.
    pub fn req_str(
        &mut self,
        cx: &mut Cx,
        key: &'static str,
    ) -> Option<(&'a str, Option<Range<usize>>)> {
        if self.missing(cx, key) {
            return None;
        }
        self.str(cx, key)
    }

    /// An optional positive duration (`"250ms"`, `"2s"`); zero is a problem.
    pub fn opt_duration(&mut self, cx: &mut Cx, key: &'static str) -> Option<Duration> {
        let (s, span) = self.str_as(cx, key, DURATION)?;
        match parse_duration(s) {
            Ok(d) if d.is_zero() => {
                cx.report(span, self.key_path(key), ProblemKind::ZeroDuration);
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                cx.report(span, self.key_path(key), e.into());
                None
            }
        }
    }

    /// A positive duration, `default` when absent or wrong.
    pub fn duration(&mut self, cx: &mut Cx, key: &'static str, default: Duration) -> Duration {
        self.opt_duration(cx, key).unwrap_or(default)
    }

    /// An optional integer in `min..=max`.
    pub fn opt_uint(&mut self, cx: &mut Cx, key: &'static str, min: u64, max: u64) -> Option<u64> {
        let (v, span) = self.value(cx, key, "an integer")?;
        match v.as_integer() {
            Some(n) if n >= 0 && (n as u64) >= min && (n as u64) <= max => Some(n as u64),
            Some(_) => {
                cx.report(
                    span,
                    self.key_path(key),
                    ProblemKind::Invalid(format!("must be between {min} and {max}")),
                );
                None
            }
            None => {
                self.wrong_type(cx, span, key, "an integer", v);
                None
            }
        }
    }

    /// A byte rate: `"1KiB/s"`, `"512B/s"`, `"2MiB/s"` (also `KB`, `MB`: powers of 1000), or
    /// an integer of bytes per second; `0` turns what it limits off. `default` when absent
    /// or wrong.
    pub fn byte_rate(&mut self, cx: &mut Cx, key: &'static str, default: u64) -> u64 {
        const EXPECTED: &str = "a byte rate such as \"1KiB/s\" (or 0)";
        let Some((v, span)) = self.value(cx, key, EXPECTED) else {
            return default;
        };
        let parsed = match (v.as_integer(), v.as_str()) {
            (Some(n), _) => u64::try_from(n).ok(),
            (None, Some(s)) => parse_byte_rate(s),
            _ => {
                self.wrong_type(cx, span, key, EXPECTED, v);
                return default;
            }
        };
        parsed.unwrap_or_else(|| {
            cx.report(
                span,
                self.key_path(key),
                ProblemKind::Invalid(format!("expected {EXPECTED}")),
            );
            default
        })
    }

    /// An integer in `min..=max`, `default` when absent or wrong.
    pub fn uint(
        &mut self,
        cx: &mut Cx,
        key: &'static str,
        default: u64,
        min: u64,
        max: u64,
    ) -> u64 {
        self.opt_uint(cx, key, min, max).unwrap_or(default)
    }

    /// A number in `min..=max` (integers accepted), `default` when absent or wrong.
    pub fn float(
        &mut self,
        cx: &mut Cx,
        key: &'static str,
        default: f64,
        min: f64,
        max: f64,
    ) -> f64 {
        let Some((v, span)) = self.value(cx, key, "a number") else {
            return default;
        };
        let n = v.as_float().or_else(|| v.as_integer().map(|i| i as f64));
        match n {
            Some(n) if (min..=max).contains(&n) => n,
            Some(_) => {
                cx.report(
                    span,
                    self.key_path(key),
                    ProblemKind::Invalid(format!("must be between {min} and {max}")),
                );
                default
            }
            None => {
                self.wrong_type(cx, span, key, "a number", v);
                default
            }
        }
    }

    /// An optional array of strings (wrong elements reported, the rest kept).
    pub fn str_list(&mut self, cx: &mut Cx, key: &'static str) -> Option<Vec<Spanned<'a>>> {
        let (v, span) = self.value(cx, key, "an array of strings")?;
        let Some(arr) = v.as_array() else {
            self.wrong_type(cx, span, key, "an array of strings", v);
            return None;
        };
        let mut out = Vec::new();
        for (i, item) in arr.iter().enumerate() {
            match item.as_str() {
                Some(s) => out.push((s, item.span())),
                None => cx.report(
                    item.span(),
                    format!("{}[{i}]", self.key_path(key)),
                    ProblemKind::WrongType {
                        expected: "a string",
                        example: None,
                    },
                ),
            }
        }
        Some(out)
    }

    /// An optional non-empty array of integers in `min..=max` (wrong elements reported).
    pub fn uint_list(
        &mut self,
        cx: &mut Cx,
        key: &'static str,
        min: u64,
        max: u64,
    ) -> Option<Vec<u64>> {
        let expected = "an array of integers";
        let (v, span) = self.value(cx, key, expected)?;
        let Some(arr) = v.as_array().filter(|a| !a.is_empty()) else {
            cx.report(
                span,
                self.key_path(key),
                ProblemKind::WrongType {
                    expected,
                    example: None,
                },
            );
            return None;
        };
        let mut out = Vec::new();
        for (i, item) in arr.iter().enumerate() {
            match item.as_integer() {
                Some(n) if n >= 0 && (min..=max).contains(&(n as u64)) => out.push(n as u64),
                _ => cx.report(
                    item.span(),
                    format!("{}[{i}]", self.key_path(key)),
                    ProblemKind::Invalid(format!("must be an integer between {min} and {max}")),
                ),
            }
        }
        Some(out)
    }

    /// A required, non-empty array of strings: `Missing` when absent, `Invalid(empty)` when
    /// empty, wrong types reported; the strings that are there.
    pub fn required_list(
        &mut self,
        cx: &mut Cx,
        key: &'static str,
        empty: &str,
    ) -> Vec<Spanned<'a>> {
        match self.str_list(cx, key) {
            None => {
                if self.table.get(key).is_none() {
                    cx.report(self.span(), self.key_path(key), ProblemKind::Missing);
                }
                Vec::new()
            }
            Some(list) => {
                if list.is_empty() {
                    cx.report(
                        self.value_span(key),
                        self.key_path(key),
                        ProblemKind::Invalid(empty.into()),
                    );
                }
                list
            }
        }
    }

    /// An optional sub-table.
    pub fn sub(&mut self, cx: &mut Cx, key: &'static str) -> Option<Tbl<'a>> {
        let (k, item) = self.get(key)?;
        let span = Self::item_span(k, item).or_else(|| k.span());
        match item.as_table_like() {
            Some(t) => Some(Tbl::new(self.key_path(key), t, span)),
            None => {
                cx.report(
                    span,
                    self.key_path(key),
                    ProblemKind::WrongType {
                        expected: "a table",
                        example: None,
                    },
                );
                None
            }
        }
    }

    /// The entries of a table of tables, e.g. `[upstreams.NAME]`.
    pub fn entries(&mut self, cx: &mut Cx, key: &'static str) -> Vec<(&'a str, Tbl<'a>)> {
        let Some(parent) = self.sub(cx, key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (name, item) in parent.table.iter() {
            let k = parent.table.get_key_value(name).map(|(k, _)| k);
            let span = item.span().or_else(|| k.and_then(Key::span));
            match item.as_table_like() {
                Some(t) => out.push((name, Tbl::new(parent.key_path(name), t, span))),
                None => cx.report(
                    span,
                    parent.key_path(name),
                    ProblemKind::WrongType {
                        expected: "a table",
                        example: None,
                    },
                ),
            }
        }
        out
    }

    /// The elements of an array of tables, e.g. `[[routes]]`.
    pub fn array(&mut self, cx: &mut Cx, key: &'static str) -> Vec<Tbl<'a>> {
        let Some((k, item)) = self.get(key) else {
            return Vec::new();
        };
        let path = self.key_path(key);
        let mut out = Vec::new();
        if let Some(aot) = item.as_array_of_tables() {
            for (i, t) in aot.iter().enumerate() {
                out.push(Tbl::new(format!("{path}[{i}]"), t, t.span()));
            }
        } else if let Some(arr) = item.as_array() {
            for (i, v) in arr.iter().enumerate() {
                match v.as_inline_table() {
                    Some(t) => out.push(Tbl::new(format!("{path}[{i}]"), t, v.span())),
                    None => cx.report(
                        v.span(),
                        format!("{path}[{i}]"),
                        ProblemKind::WrongType {
                            expected: "a table",
                            example: None,
                        },
                    ),
                }
            }
        } else {
            cx.report(
                Self::item_span(k, item),
                path,
                ProblemKind::WrongType {
                    expected: "an array of tables",
                    example: None,
                },
            );
        }
        out
    }

    /// A boolean, `default` when absent or wrong.
    pub fn bool(&mut self, cx: &mut Cx, key: &'static str, default: bool) -> bool {
        let Some((v, span)) = self.value(cx, key, "true or false") else {
            return default;
        };
        v.as_bool().unwrap_or_else(|| {
            self.wrong_type(cx, span, key, "true or false", v);
            default
        })
    }

    /// Any TOML value, as JSON text.
    pub fn json(&mut self, _cx: &mut Cx, key: &'static str) -> Option<String> {
        self.json_value(key).map(|j| j.to_string())
    }

    /// An optional duration from the start of something (`"0s"` allowed): drill times.
    pub fn opt_offset(&mut self, cx: &mut Cx, key: &'static str) -> Option<Duration> {
        let (s, span) = self.str(cx, key)?;
        match parse_duration(s) {
            Ok(d) => Some(d),
            Err(e) => {
                cx.report(span, self.key_path(key), e.into());
                None
            }
        }
    }

    /// A required duration from the start of something (`"0s"` allowed).
    pub fn req_offset(&mut self, cx: &mut Cx, key: &'static str) -> Option<Duration> {
        if self.missing(cx, key) {
            return None;
        }
        self.opt_offset(cx, key)
    }

    /// An optional number in `min..=max` (integers accepted).
    pub fn opt_float(&mut self, cx: &mut Cx, key: &'static str, min: f64, max: f64) -> Option<f64> {
        self.table.get(key)?;
        let f = self.float(cx, key, f64::NAN, min, max);
        (!f.is_nan()).then_some(f)
    }

    /// One word of a fixed set, e.g. `lb = "round_robin"`: `default` when absent; any other
    /// word is reported (`"x" is not "a", "b" or "c"`) and gets `default` too.
    pub fn choice<T: Copy>(
        &mut self,
        cx: &mut Cx,
        key: &'static str,
        default: (&'static str, T),
        others: &[(&'static str, T)],
    ) -> T {
        let Some((word, span)) = self.str(cx, key) else {
            return default.1;
        };
        let all = || std::iter::once(&default).chain(others);
        if let Some((_, v)) = all().find(|(w, _)| *w == word) {
            return *v;
        }
        let words: Vec<String> = all().map(|(w, _)| format!("{w:?}")).collect();
        let list = match words.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
            _ => words.concat(),
        };
        let what = format!("{word:?} is not {list}");
        cx.report(span, self.key_path(key), ProblemKind::Invalid(what));
        default.1
    }

    /// A table of strings, e.g. `env = { A = "1" }`, wrong values reported.
    pub fn str_map(&mut self, cx: &mut Cx, key: &'static str) -> Vec<(&'a str, &'a str)> {
        let Some(t) = self.sub(cx, key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (name, item) in t.table.iter() {
            match item.as_str() {
                Some(v) => out.push((name, v)),
                None => cx.report(
                    item.span(),
                    t.key_path(name),
                    ProblemKind::WrongType {
                        expected: "a string",
                        example: None,
                    },
                ),
            }
        }
        out
    }

    /// Any TOML value, as JSON.
    pub fn json_value(&mut self, key: &'static str) -> Option<serde_json::Value> {
        let (_, item) = self.get(key)?;
        Some(crate::json::item_json(item))
    }

    /// The whole table as JSON (for settings validated in another shape, such as the
    /// chaos API's); marks nothing as read.
    pub fn to_json(&self) -> serde_json::Value {
        crate::json::table_json(self.table)
    }

    /// Marks `keys` as read (validated elsewhere, e.g. through [`Tbl::to_json`]).
    pub fn allow(&mut self, keys: &[&'static str]) {
        self.seen.extend_from_slice(keys);
    }

    /// Every key of the table with its span, read or not.
    pub fn keys(&self) -> Vec<(&'a str, Option<Range<usize>>)> {
        self.table
            .iter()
            .map(|(name, item)| {
                let k = self.table.get_key_value(name).map(|(k, _)| k);
                (name, k.and_then(Key::span).or_else(|| item.span()))
            })
            .collect()
    }

    /// True (and `Missing` reported) when `key` is absent.
    fn missing(&mut self, cx: &mut Cx, key: &'static str) -> bool {
        if self.table.get(key).is_some() {
            return false;
        }
        self.seen.push(key);
        cx.report(self.span.clone(), self.key_path(key), ProblemKind::Missing);
        true
    }

    /// Reports every key of this table that was not read, with the known key nearest in
    /// spelling (`idle_timout` → `idle_timeout`, `[[route]]` → `routes`).
    pub fn finish(self, cx: &mut Cx) {
        for (name, item) in self.table.iter() {
            if !self.seen.contains(&name) {
                let k = self.table.get_key_value(name).map(|(k, _)| k);
                let span = k.and_then(Key::span).or_else(|| item.span());
                let suggestion = nearest(name, &self.seen);
                cx.report(
                    span,
                    self.key_path(name),
                    ProblemKind::UnknownKey { suggestion },
                );
            }
        }
    }
}

/// `"1KiB/s"` → 1024: a whole number, a unit (`B`, `KiB`, `MiB`, `GiB`, `KB`, `MB`, `GB`)
/// and `/s`.
pub(crate) fn parse_byte_rate(s: &str) -> Option<u64> {
    let per = s.trim().strip_suffix("/s")?;
    let digits = per.find(|c: char| !c.is_ascii_digit()).unwrap_or(per.len());
    let (n, unit) = per.split_at(digits);
    let n: u64 = n.parse().ok()?;
    let scale: u64 = match unit.trim() {
        "B" | "" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(scale)
}

#[cfg(test)]
mod rate_tests {
    use super::parse_byte_rate;

    #[test]
    fn byte_rates_parse_with_their_units() {
        assert_eq!(parse_byte_rate("1KiB/s"), Some(1024));
        assert_eq!(parse_byte_rate("512B/s"), Some(512));
        assert_eq!(parse_byte_rate("2 MiB/s"), Some(2 << 20));
        assert_eq!(parse_byte_rate("10KB/s"), Some(10_000));
        assert_eq!(parse_byte_rate("0/s"), Some(0));
        for bad in [
            "1KiB",
            "KiB/s",
            "1 kib/s",
            "-1B/s",
            "1.5KiB/s",
            "99999999999999999999GiB/s",
        ] {
            assert_eq!(parse_byte_rate(bad), None, "{bad}");
        }
    }
}
