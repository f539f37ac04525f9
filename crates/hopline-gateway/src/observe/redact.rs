//! What the access log shows of a request target: the path, and the query with the values
//! of sensitive names (`log.redact_query`) written `REDACTED`. Spans carry the path alone.

use bytes::Bytes;

/// What a redacted value is written as.
const REDACTED: &[u8] = b"REDACTED";

/// Splits `target` at its first `?` into the path and the query (without the `?`), the
/// query's values of names in `names` (lower-case) replaced. Borrows `target`'s bytes
/// unless a value is redacted.
pub(crate) fn split(target: &Bytes, names: &[Box<str>]) -> (Bytes, Option<Bytes>) {
    let Some(at) = target.iter().position(|&b| b == b'?') else {
        return (target.clone(), None);
    };
    let path = target.slice(..at);
    let query = &target[at + 1..];
    let query = match redact(query, names) {
        Some(owned) => Bytes::from(owned),
        None => target.slice(at + 1..),
    };
    (path, Some(query))
}

/// The query with sensitive values replaced; `None` when it has none.
fn redact(query: &[u8], names: &[Box<str>]) -> Option<Vec<u8>> {
    // Where a pair's value starts, when its name is sensitive.
    let value_at = |pair: &[u8]| {
        let eq = pair.iter().position(|&b| b == b'=')?;
        let name = &pair[..eq];
        names
            .iter()
            .any(|n| name_is(name, n.as_bytes()))
            .then_some(eq + 1)
    };
    if names.is_empty() || !query.split(|&b| b == b'&').any(|p| value_at(p).is_some()) {
        return None;
    }
    let mut out = Vec::with_capacity(query.len());
    for (i, pair) in query.split(|&b| b == b'&').enumerate() {
        if i > 0 {
            out.push(b'&');
        }
        match value_at(pair) {
            Some(at) => {
                out.extend_from_slice(&pair[..at]);
                out.extend_from_slice(REDACTED);
            }
            None => out.extend_from_slice(pair),
        }
    }
    Some(out)
}

/// Whether a raw (percent-encoded, `+` for space) query name is `wanted` (lower-case),
/// case-insensitively, once decoded.
fn name_is(raw: &[u8], wanted: &[u8]) -> bool {
    let mut decoded = Decoded { raw, at: 0 };
    let mut want = wanted.iter();
    loop {
        match (decoded.next(), want.next()) {
            (None, None) => return true,
            (Some(a), Some(&b)) if a.to_ascii_lowercase() == b => {}
            _ => return false,
        }
    }
}

/// The bytes of a query component, `%XX` and `+` decoded (a `%` without two hex digits
/// stands for itself).
struct Decoded<'a> {
    raw: &'a [u8],
    at: usize,
}

impl Iterator for Decoded<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        let b = *self.raw.get(self.at)?;
        self.at += 1;
        match b {
            b'+' => Some(b' '),
            b'%' => {
                let hex = |i: usize| self.raw.get(i).and_then(|&c| (c as char).to_digit(16));
                match (hex(self.at), hex(self.at + 1)) {
                    (Some(h), Some(l)) => {
                        self.at += 2;
                        Some((h * 16 + l) as u8)
                    }
                    _ => Some(b'%'),
                }
            }
            b => Some(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<Box<str>> {
        ["access_token", "sig", "x-amz-signature"]
            .map(Box::from)
            .to_vec()
    }

    fn logged(target: &str) -> (String, Option<String>) {
        let (p, q) = split(&Bytes::copy_from_slice(target.as_bytes()), &names());
        let text = |b: Bytes| String::from_utf8(b.to_vec()).expect("utf8");
        (text(p), q.map(text))
    }

    #[test]
    fn the_path_and_query_are_split_and_sensitive_values_redacted() {
        assert_eq!(logged("/a"), ("/a".into(), None));
        assert_eq!(logged("/a?"), ("/a".into(), Some(String::new())));
        assert_eq!(logged("/a?q=1&b"), ("/a".into(), Some("q=1&b".into())));
        assert_eq!(
            logged("/a?q=1&access_token=abc&x=2"),
            ("/a".into(), Some("q=1&access_token=REDACTED&x=2".into()))
        );
        // Names match case-insensitively and once decoded; values may be empty.
        for (target, query) in [
            ("/a?Access_Token=abc", "Access_Token=REDACTED"),
            ("/a?access%5Ftoken=abc", "access%5Ftoken=REDACTED"),
            (
                "/a?X-Amz-Signature=f00&sig=",
                "X-Amz-Signature=REDACTED&sig=REDACTED",
            ),
            ("/a?sig=1&sig=2", "sig=REDACTED&sig=REDACTED"),
            ("/a?sig=a=b", "sig=REDACTED"),
        ] {
            assert_eq!(logged(target).1.as_deref(), Some(query), "{target}");
        }
        // Not these: other names, a name without a value, a longer or shorter name.
        for target in [
            "/a?sig",
            "/a?sigs=1",
            "/a?si=1",
            "/a?%=1",
            "/a?sig%=1",
            "/a?&&",
        ] {
            let query = &target[3..];
            assert_eq!(logged(target).1.as_deref(), Some(query), "{target}");
        }
    }

    #[test]
    fn odd_bytes_never_panic() {
        for target in ["/?%", "/?%4", "/?=", "/?=&=", "/?sig=\u{e9}", "/?\u{ff}=1"] {
            let _ = logged(target);
        }
    }
}
