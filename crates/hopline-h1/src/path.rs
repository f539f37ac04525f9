//! Request paths as routes must see them: one spelling for one resource, so that a prefix
//! rule cannot be walked around with `..`, `%2e%2e` or `..;` (the Envoy CVE-2019-9901
//! class: the gateway matches the raw path, the upstream normalizes it and serves
//! another resource).
//!
//! [`normalize`] works on an origin-form target (path and query). In this order:
//! 1. Percent-encodings are upper-cased, and those of unreserved characters decoded
//!    (RFC 3986 §6.2.2.1–2: `%2e` → `.`, `%61` → `a`). A `%` not followed by two hex
//!    digits is refused.
//! 2. `%2F` and `%5C` (an encoded `/` or `\`) are refused, kept, or decoded to `/`, as
//!    [`EscapedSlashes`] says.
//! 3. A segment that starts with `..;` or `.;` is refused (Tomcat and Spring read
//!    `/..;/` as `/../`).
//! 4. Dot segments are removed (RFC 3986 §5.2.4).
//! 5. With `merge_slashes`, runs of `/` become one.
//!
//! The query is passed on as it is. A path with nothing to do is returned borrowed.

use std::borrow::Cow;

pub use hopline_core::config::EscapedSlashes;

/// How paths are normalized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PathRules {
    /// `server.escaped_slashes`.
    pub escaped_slashes: EscapedSlashes,
    /// `server.merge_slashes`: `//` becomes `/`.
    pub merge_slashes: bool,
}

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A `%` not followed by two hex digits.
    #[error("request path: `%` not followed by two hex digits")]
    BadPercent,
    /// `%2F` or `%5C` with `escaped_slashes = "reject"`.
    #[error("request path: an escaped slash (%2F or %5C), refused by server.escaped_slashes = \"reject\"")]
    EscapedSlash,
    /// A segment starting `..;` or `.;`.
    #[error(
        "request path: a segment starting `..;` or `.;` (read as a dot segment by some servers)"
    )]
    DotSemicolon,
}

/// `target` (origin form: a path, then an optional `?query`) normalized by `rules`;
/// borrowed when nothing changed. `*` (for `OPTIONS *`) is returned as it is.
pub fn normalize(target: &[u8], rules: PathRules) -> Result<Cow<'_, [u8]>, PathError> {
    let split = target
        .iter()
        .position(|&b| b == b'?')
        .unwrap_or(target.len());
    let (path, query) = target.split_at(split);
    if !path.starts_with(b"/") || !needs_work(path, rules) {
        return Ok(Cow::Borrowed(target));
    }
    let decoded = decode(path, rules.escaped_slashes)?;
    check_semicolon_dots(&decoded)?;
    let mut out = remove_dot_segments(&decoded);
    if rules.merge_slashes {
        out.dedup_by(|a, b| *a == b'/' && *b == b'/');
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out.extend_from_slice(query);
    if out == target {
        return Ok(Cow::Borrowed(target));
    }
    Ok(Cow::Owned(out))
}

/// True when `path` has a `%`, a segment starting with `.`, or (with `merge_slashes`) a
/// `//`: the common path has none and costs one scan.
fn needs_work(path: &[u8], rules: PathRules) -> bool {
    let mut prev = 0u8;
    for &b in path {
        match b {
            b'%' => return true,
            b'.' if prev == b'/' => return true,
            b'/' if prev == b'/' && rules.merge_slashes => return true,
            _ => {}
        }
        prev = b;
    }
    false
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 §2.3: `ALPHA / DIGIT / "-" / "." / "_" / "~"`.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Step 1 and 2: percent-encodings upper-cased, unreserved ones decoded, escaped
/// slashes as `rule` says.
fn decode(path: &[u8], rule: EscapedSlashes) -> Result<Vec<u8>, PathError> {
    const UPPER: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            path.get(i + 1).copied().and_then(hex),
            path.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(PathError::BadPercent);
        };
        let c = hi << 4 | lo;
        match c {
            b'/' | b'\\' => match rule {
                EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                EscapedSlashes::Decode => out.push(b'/'),
                EscapedSlashes::Keep => {
                    out.extend_from_slice(&[b'%', UPPER[usize::from(hi)], UPPER[usize::from(lo)]])
                }
            },
            c if unreserved(c) => out.push(c),
            _ => out.extend_from_slice(&[b'%', UPPER[usize::from(hi)], UPPER[usize::from(lo)]]),
        }
        i += 3;
    }
    Ok(out)
}

/// Step 3: no segment may start `..;` or `.;`.
fn check_semicolon_dots(path: &[u8]) -> Result<(), PathError> {
    let bad = path
        .split(|&b| b == b'/')
        .any(|s| s.starts_with(b".;") || s.starts_with(b"..;"));
    if bad {
        Err(PathError::DotSemicolon)
    } else {
        Ok(())
    }
}

/// Step 4, RFC 3986 §5.2.4 for an absolute path, with a stack of output segments: `.`
/// segments are dropped, `..` drops the last output segment (never above the root), and
/// a path ending in `.` or `..` keeps its trailing `/`.
pub fn remove_dot_segments(path: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(path.len());
    // Segments after the leading '/'; each output segment is written as "/seg".
    let segments = path[1.min(path.len())..].split(|&b| b == b'/');
    let mut last_was_dot = false;
    for seg in segments {
        match seg {
            b"." => last_was_dot = true,
            b".." => {
                let cut = out.iter().rposition(|&b| b == b'/').unwrap_or(0);
                out.truncate(cut);
                last_was_dot = true;
            }
            _ => {
                out.push(b'/');
                out.extend_from_slice(seg);
                last_was_dot = false;
            }
        }
    }
    if last_was_dot || out.is_empty() {
        out.push(b'/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize(p.as_bytes(), PathRules::default())
            .map(|c| String::from_utf8_lossy(&c).into_owned())
    }

    fn with(p: &str, escaped_slashes: EscapedSlashes, merge_slashes: bool) -> String {
        let rules = PathRules {
            escaped_slashes,
            merge_slashes,
        };
        let out = normalize(p.as_bytes(), rules).expect("normalizes");
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn the_prefix_bypasses_are_normalized_or_refused() {
        assert_eq!(norm("/public/../internal/x").as_deref(), Ok("/internal/x"));
        assert_eq!(
            norm("/public/%2e%2e/internal/x").as_deref(),
            Ok("/internal/x")
        );
        assert_eq!(
            norm("/public/%2E%2E/internal/x").as_deref(),
            Ok("/internal/x")
        );
        assert_eq!(
            norm("/public/./../internal/x").as_deref(),
            Ok("/internal/x")
        );
        assert_eq!(
            norm("/public/.%2e/internal/x").as_deref(),
            Ok("/internal/x")
        );
        assert_eq!(norm("/%70ublic/x").as_deref(), Ok("/public/x"));
        assert_eq!(
            norm("/public/..%2finternal/x"),
            Err(PathError::EscapedSlash)
        );
        assert_eq!(norm("/public/..;/internal/x"), Err(PathError::DotSemicolon));
        assert_eq!(norm("/public/.;/internal/x"), Err(PathError::DotSemicolon));
        assert_eq!(norm("/public/%2e%2e;/x"), Err(PathError::DotSemicolon));
    }

    #[test]
    fn common_paths_are_borrowed_and_queries_untouched() {
        let p = b"/api/coupons/42?uid=1&next=/../x";
        assert!(matches!(
            normalize(p, PathRules::default()),
            Ok(Cow::Borrowed(_))
        ));
        assert_eq!(norm("/a/%2e/b?q=%2e%2e").as_deref(), Ok("/a/b?q=%2e%2e"));
        // A segment that merely contains dots is a name.
        assert_eq!(norm("/a/..b/.c/x..").as_deref(), Ok("/a/..b/.c/x.."));
        assert_eq!(norm("*").as_deref(), Ok("*"));
    }

    #[test]
    fn percent_encodings_are_upper_cased_and_unreserved_ones_decoded() {
        assert_eq!(
            norm("/a%2db%7e%41%20%c3%a9").as_deref(),
            Ok("/a-b~A%20%C3%A9")
        );
        assert_eq!(norm("/100%"), Err(PathError::BadPercent));
        assert_eq!(norm("/%zz"), Err(PathError::BadPercent));
        assert_eq!(norm("/%2"), Err(PathError::BadPercent));
        // %25 is '%', which is not unreserved: it stays encoded.
        assert_eq!(norm("/%252e%252e/x").as_deref(), Ok("/%252e%252e/x"));
    }

    #[test]
    fn dot_segments_go_as_rfc_3986_says() {
        for (input, want) in [
            ("/a/b/c/./../../g", "/a/g"),
            ("/..", "/"),
            ("/../..", "/"),
            ("/.", "/"),
            ("/a/..", "/"),
            ("/a/.", "/a/"),
            ("/a/b/..", "/a/"),
            ("/a//../b", "/a/b"),
            ("/mid/content=5/../6", "/mid/6"),
        ] {
            assert_eq!(norm(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn escaped_slashes_and_merged_slashes_follow_the_settings() {
        assert_eq!(
            with("/a%2fb/%5c", EscapedSlashes::Keep, false),
            "/a%2Fb/%5C"
        );
        assert_eq!(
            with("/a/..%2F../b", EscapedSlashes::Keep, false),
            "/a/..%2F../b"
        );
        assert_eq!(with("/a%2f..%2fb", EscapedSlashes::Decode, false), "/b");
        assert_eq!(
            with("/a//b///c", EscapedSlashes::Reject, false),
            "/a//b///c"
        );
        assert_eq!(with("/a//b///c", EscapedSlashes::Reject, true), "/a/b/c");
        assert_eq!(with("//..//x", EscapedSlashes::Reject, true), "/x");
    }

    #[test]
    fn normalizing_twice_changes_nothing() {
        for p in [
            "/a/%2e%2E/b/./c//d/..",
            "/%7Euser/%41b%2fc",
            "/x/.%2e/%2E./y",
            "//a/../..//b",
        ] {
            for rule in [EscapedSlashes::Keep, EscapedSlashes::Decode] {
                for merge in [false, true] {
                    let once = with(p, rule, merge);
                    assert_eq!(with(&once, rule, merge), once, "{p} {rule:?} {merge}");
                }
            }
        }
    }
}
