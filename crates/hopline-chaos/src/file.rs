//! `chaos.toml`: proxies and their toxics declared up front, in the same shapes as the API.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use hopline_config::json::table_json;
use hopline_config::Location;
use toml_edit::{ImDocument, Item, TableLike};

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
        /// `line:col: key `k`: message` entries.
        problems: Vec<String>,
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

/// Validates chaos file text.
pub fn parse(text: &str) -> Result<ChaosFile, Vec<String>> {
    let doc = ImDocument::parse(text.to_string()).map_err(|e| {
        let l = Location::of(text, e.span().map_or(0, |s| s.start));
        vec![format!(
            "{}:{}: TOML syntax: {}",
            l.line,
            l.column,
            e.message().trim()
        )]
    })?;
    let mut problems = Vec::new();
    let mut report = |span: Option<Range<usize>>, key: &str, msg: String| {
        let l = Location::of(text, span.map_or(0, |s| s.start));
        problems.push(format!("{}:{}: key `{key}`: {msg}", l.line, l.column));
    };
    let root = doc.as_table();
    let span_of = |t: &dyn TableLike, k: &str| {
        t.get_key_value(k)
            .and_then(|(key, item)| key.span().or_else(|| item.span()))
    };
    for (k, _) in root.iter() {
        if !["seed", "api", "proxies"].contains(&k) {
            report(span_of(root, k), k, "unknown key".into());
        }
    }
    let seed = match root.get("seed") {
        None => None,
        Some(i) => match i.as_integer().filter(|n| *n >= 0) {
            Some(n) => Some(n as u64),
            None => {
                report(
                    span_of(root, "seed"),
                    "seed",
                    "expected a non-negative integer".into(),
                );
                None
            }
        },
    };
    let api = match root
        .get("api")
        .map(|i| i.as_str().map(str::parse::<SocketAddr>))
    {
        None => None,
        Some(Some(Ok(a))) => Some(a),
        Some(_) => {
            report(
                span_of(root, "api"),
                "api",
                "expected an IP:port address".into(),
            );
            None
        }
    };
    let mut proxies = Vec::new();
    if let Some(item) = root.get("proxies") {
        let tables: Vec<&dyn TableLike> = match item {
            Item::ArrayOfTables(a) => a.iter().map(|t| t as &dyn TableLike).collect(),
            _ => {
                report(
                    span_of(root, "proxies"),
                    "proxies",
                    "expected [[proxies]] tables".into(),
                );
                Vec::new()
            }
        };
        for (i, t) in tables.into_iter().enumerate() {
            let key = format!("proxies[{i}]");
            for (k, _) in t.iter() {
                if !["name", "listen", "upstream", "enabled", "http", "toxics"].contains(&k) {
                    report(span_of(t, k), &format!("{key}.{k}"), "unknown key".into());
                }
            }
            let spec = match ProxySpec::from_json(&table_json(t)) {
                Ok(s) => Some(s),
                Err(e) => {
                    report(
                        span_of(t, "name")
                            .or_else(|| t.iter().next().and_then(|(k, _)| span_of(t, k))),
                        &key,
                        e.to_string(),
                    );
                    None
                }
            };
            let mut toxics = Vec::new();
            if let Some(Item::ArrayOfTables(list)) = t.get("toxics") {
                for (j, tt) in list.iter().enumerate() {
                    let tkey = format!("{key}.toxics[{j}]");
                    for (k, _) in tt.iter() {
                        if !["name", "type", "stream", "toxicity", "attributes"].contains(&k) {
                            report(span_of(tt, k), &format!("{tkey}.{k}"), "unknown key".into());
                        }
                    }
                    // Unknown attributes are errors here, like unknown keys everywhere else
                    // (the API ignores them, as Toxiproxy's does).
                    let ty = tt.get("type").and_then(|v| v.as_str()).unwrap_or("");
                    if let (Some(known), Some(attrs)) = (
                        ToxicKind::attribute_names(ty),
                        tt.get("attributes").and_then(|a| a.as_table_like()),
                    ) {
                        for (k, _) in attrs.iter() {
                            if !known.contains(&k) {
                                report(
                                    span_of(attrs, k),
                                    &format!("{tkey}.attributes.{k}"),
                                    format!(
                                        "unknown attribute of a {ty} toxic (known: {})",
                                        known.join(", ")
                                    ),
                                );
                            }
                        }
                    }
                    let http = t.get("http").and_then(|v| v.as_bool()).unwrap_or(false);
                    match Toxic::from_json(&table_json(tt)) {
                        Ok(x) if x.kind.is_http() && !http => report(
                            span_of(tt, "type"),
                            &tkey,
                            format!(
                                "a {} toxic needs the proxy to set http = true",
                                x.kind.type_name()
                            ),
                        ),
                        Ok(x) if toxics.iter().any(|y: &Toxic| y.name == x.name) => report(
                            span_of(tt, "type"),
                            &tkey,
                            format!("duplicate toxic name {:?}", x.name),
                        ),
                        Ok(x) => toxics.push(x),
                        Err(e) => report(
                            span_of(tt, "type").or_else(|| span_of(tt, "attributes")),
                            &tkey,
                            e.to_string(),
                        ),
                    }
                }
            } else if t.get("toxics").is_some() {
                report(
                    span_of(t, "toxics"),
                    &format!("{key}.toxics"),
                    "expected [[proxies.toxics]] tables".into(),
                );
            }
            if let Some(s) = spec {
                if proxies
                    .iter()
                    .any(|(p, _): &(ProxySpec, Vec<Toxic>)| p.name == s.name)
                {
                    report(
                        span_of(t, "name"),
                        &format!("{key}.name"),
                        format!("duplicate proxy name {:?}", s.name),
                    );
                }
                proxies.push((s, toxics));
            }
        }
    }
    if problems.is_empty() {
        Ok(ChaosFile { seed, api, proxies })
    } else {
        Err(problems)
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
        let p = parse("colour = 1\n[[proxies]]\nname = \"x\"\nupstream = \"u:1\"\nflavour = 2\n[[proxies.toxics]]\ntype = \"nope\"\n")
            .expect_err("invalid");
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].starts_with("1:1: key `colour`"), "{p:?}");
        assert!(p[1].starts_with("5:1: key `proxies[0].flavour`"), "{p:?}");
        assert!(
            p[2].starts_with("7:1: key `proxies[0].toxics[0]`: unknown toxic type"),
            "{p:?}"
        );
    }
}
