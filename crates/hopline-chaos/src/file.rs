//! `chaos.toml`: proxies and their toxics declared up front, in the same shapes as the API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hopline_config::walk::{Cx, Tbl};
use hopline_config::{Problem, ProblemKind};

use crate::registry::ProxySpec;
use crate::toxic::{Toxic, ToxicKind};

/// A parsed chaos file.
#[derive(Debug, Clone, PartialEq)]
pub struct ChaosFile {
    /// `seed`, if set.
    pub seed: Option<u64>,
    /// `api`, if set.
    pub api: Option<SocketAddr>,
    /// `[[proxies]]` with their `[[proxies.toxics]]`.
    pub proxies: Vec<(ProxySpec, Vec<Toxic>)>,
}

/// A chaos file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read.
    #[error("cannot read chaos file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid chaos file; every problem as `file:line:col: key: what`.
    #[error("invalid chaos file {}:{}", path.display(), problems.iter().map(|p| format!("\n  {}:{p}", path.display())).collect::<String>())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem, in file order.
        problems: Vec<Problem>,
    },
}

/// Reads and validates a chaos file.
pub fn load(path: &Path) -> Result<ChaosFile, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text).map_err(|problems| FileError::Invalid {
        path: path.to_path_buf(),
        problems,
    })
}

/// Validates chaos file text, with the same walker as the gateway config: every
/// problem at once, each with its line, column and key.
pub(crate) fn parse(text: &str) -> Result<ChaosFile, Vec<Problem>> {
    let mut cx = Cx::new(text);
    let file = cx.parse(text).map(|doc| {
        let mut root = Tbl::root(&doc);
        let f = chaos_file(&mut cx, &mut root);
        root.finish(&mut cx);
        f
    });
    match (cx.finish(), file) {
        (Ok(()), Some(f)) => Ok(f),
        (r, _) => Err(r.err().unwrap_or_default()),
    }
}

fn chaos_file(cx: &mut Cx, root: &mut Tbl) -> ChaosFile {
    let seed = root.opt_uint(cx, "seed", 0, i64::MAX as u64);
    let api = root.str(cx, "api").and_then(|(a, span)| match a.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            let what = "expected an IP:port address".into();
            cx.report(span, "api".into(), ProblemKind::Invalid(what));
            None
        }
    });
    let mut proxies: Vec<(ProxySpec, Vec<Toxic>)> = Vec::new();
    for mut t in root.array(cx, "proxies") {
        let spec = ProxySpec::from_json(&t.to_json());
        t.allow(&["name", "listen", "upstream", "enabled", "http"]);
        // Its type was checked with the rest of the proxy's keys.
        let http = t.to_json()["http"].as_bool().unwrap_or(false);
        let mut toxics: Vec<Toxic> = Vec::new();
        for tt in t.array(cx, "toxics") {
            if let Some(x) = toxic(cx, tt, http, &toxics) {
                toxics.push(x);
            }
        }
        match spec {
            Ok(s) => {
                if proxies.iter().any(|(p, _)| p.name == s.name) {
                    let what = format!("duplicate proxy name {:?}", s.name);
                    cx.report(
                        t.value_span("name"),
                        t.key_path("name"),
                        ProblemKind::Invalid(what),
                    );
                }
                proxies.push((s, toxics));
            }
            Err(e) => {
                let path = t.key_path("").trim_end_matches('.').to_string();
                cx.report(t.span(), path, ProblemKind::Invalid(e.to_string()));
            }
        }
        t.finish(cx);
    }
    ChaosFile { seed, api, proxies }
}

/// One `[[proxies.toxics]]`, validated as the API validates it; unknown attributes are
/// errors here, like unknown keys everywhere else (the API ignores them, as Toxiproxy's
/// does).
fn toxic(cx: &mut Cx, mut tt: Tbl, http: bool, before: &[Toxic]) -> Option<Toxic> {
    let parsed = Toxic::from_json(&tt.to_json());
    tt.allow(&["name", "type", "stream", "toxicity"]);
    let ty = tt.str(cx, "type").map_or("", |(t, _)| t);
    if let (Some(known), Some(attrs)) = (ToxicKind::attribute_names(ty), tt.sub(cx, "attributes")) {
        for (k, span) in attrs.keys() {
            if !known.contains(&k) {
                let what = format!(
                    "unknown attribute of a {ty} toxic (known: {})",
                    known.join(", ")
                );
                cx.report(span, attrs.key_path(k), ProblemKind::Invalid(what));
            }
        }
    }
    tt.allow(&["attributes"]);
    let at = tt.value_span("type");
    let key = tt.key_path("").trim_end_matches('.').to_string();
    tt.finish(cx);
    match parsed {
        Ok(x) if x.kind.is_http() && !http => {
            let what = format!(
                "a {} toxic needs the proxy to set http = true",
                x.kind.type_name()
            );
            cx.report(at, key, ProblemKind::Invalid(what));
            None
        }
        Ok(x) if before.iter().any(|y| y.name == x.name) => {
            let what = format!("duplicate toxic name {:?}", x.name);
            cx.report(at, key, ProblemKind::Invalid(what));
            None
        }
        Ok(x) => Some(x),
        Err(e) => {
            cx.report(at, key, ProblemKind::Invalid(e.to_string()));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::toxic::ToxicKind;

    #[test]
    fn reads_proxies_and_toxics() {
        let f = parse(
            "seed = 7\n[[proxies]]\nname = \"nat\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:9001\"\n\
             [[proxies.toxics]]\ntype = \"conn_rate_limit\"\nattributes = { rate = 5, max_stall = 3000 }\n",
        )
        .expect("valid");
        assert_eq!(f.seed, Some(7));
        let (spec, toxics) = &f.proxies[0];
        assert_eq!(spec.upstream, "127.0.0.1:9001");
        assert_eq!(
            toxics[0].kind,
            ToxicKind::ConnRateLimit {
                rate: 5,
                burst: 5,
                max_stall: 3000
            }
        );
    }

    #[test]
    fn problems_have_lines_and_keys() {
        let p: Vec<String> = parse("colour = 1\n[[proxies]]\nname = \"x\"\nupstream = \"u:1\"\nflavour = 2\n[[proxies.toxics]]\ntype = \"nope\"\n")
            .expect_err("invalid")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].starts_with("1:1: key `colour`"), "{p:?}");
        assert!(p[1].starts_with("5:1: key `proxies[0].flavour`"), "{p:?}");
        assert!(
            p[2].starts_with("7:8: key `proxies[0].toxics[0]`: unknown toxic type"),
            "{p:?}"
        );
    }
}
