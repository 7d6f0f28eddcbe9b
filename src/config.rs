//! Configuration files: TOML or INI (chosen by extension), with `PGFAN_` environment overrides.
//!
//! Each daemon reads one section (`[ticker]`, ...). Durations are written as `10ms`, `1.5s`,
//! `2m`, `1h`, or as a bare number of seconds as in pgqd.ini.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use thiserror::Error;

/// Errors loading a configuration.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{path}: unsupported file type (use .toml or .ini)")]
    Format { path: PathBuf },
    #[error("{path}: {source}")]
    Load {
        path: PathBuf,
        #[source]
        source: config::ConfigError,
    },
    /// A value the file has but the daemon rejects (unknown key, wrong type), at its line.
    #[error("{path}, line {line}: {source}")]
    At {
        path: PathBuf,
        line: usize,
        #[source]
        source: Box<config::ConfigError>,
    },
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
    /// A value set by an environment variable that the daemon rejects.
    #[error("environment variable {var} (overriding {path}): {source}")]
    Env {
        path: PathBuf,
        var: String,
        #[source]
        source: Box<config::ConfigError>,
    },
}

/// Reads `path` into `T`, the daemon's `section` overridden by its `PGFAN_<SECTION>__<KEY>`
/// variables (`PGFAN_TICKER__POLL_PERIOD=5ms`). Variables of other daemons' sections are
/// not read, so daemons can share an environment as they share a file.
pub fn load<T: DeserializeOwned>(path: &Path, section: &str) -> Result<T, ConfigError> {
    let format = match path.extension().and_then(|e| e.to_str()) {
        Some("toml") => config::FileFormat::Toml,
        Some("ini") => config::FileFormat::Ini,
        _ => return Err(ConfigError::Format { path: path.into() }),
    };
    let load_err = |source| ConfigError::Load {
        path: path.into(),
        source,
    };
    config::Config::builder()
        .add_source(config::File::from(path).format(format).required(true))
        .add_source(
            config::Environment::with_prefix("PGFAN")
                .prefix_separator("_")
                .separator("__")
                .source(Some(overrides(section))),
        )
        .build()
        .map_err(load_err)?
        .try_deserialize()
        .map_err(|source| locate(path, section, source))
}

/// Adds where the offending key was set to a deserialize error: the environment variable
/// that set it, or its line in the file. A file that cannot be read again gets no line.
fn locate(path: &Path, section: &str, source: config::ConfigError) -> ConfigError {
    let msg = source.to_string();
    let offending = offending_key(&msg);
    let var = offending.and_then(|(_, key)| {
        let name = format!("PGFAN_{}__{}", section.to_uppercase(), key.to_uppercase());
        overrides(section)
            .into_keys()
            .find(|k| k.to_uppercase() == name)
    });
    if let Some(var) = var {
        return ConfigError::Env {
            path: path.into(),
            var,
            source: Box::new(source),
        };
    }
    let line = offending.and_then(|(section, key)| {
        let text = std::fs::read_to_string(path).ok()?;
        key_line(&text, section, key)
    });
    match line {
        Some(line) if !msg.contains("the environment") => ConfigError::At {
            path: path.into(),
            line,
            source: Box::new(source),
        },
        _ => ConfigError::Load {
            path: path.into(),
            source,
        },
    }
}

/// The (section, key) a deserialize error is about: "unknown field `k` ... for key `s`" or
/// "... for key `s.k`" (array indexes such as `s.list[0]` name the list).
fn offending_key(msg: &str) -> Option<(Option<&str>, &str)> {
    let quoted = |marker: &str| {
        let rest = &msg[msg.find(marker)? + marker.len()..];
        Some(&rest[..rest.find('`')?])
    };
    let path = quoted("for key `");
    if let Some(field) = quoted("unknown field `") {
        return Some((path, field));
    }
    let path = path?;
    let path = path.split('[').next().unwrap_or(path);
    Some(match path.rsplit_once('.') {
        Some((section, key)) => (Some(section), key),
        None => (None, path),
    })
}

/// The 1-based line of `key = ...` (or INI's `key: ...`) in `text`, preferring one inside
/// `[section]` (or `[[section]]`); None when the file does not have the key.
fn key_line(text: &str, section: Option<&str>, key: &str) -> Option<usize> {
    let mut current = "";
    let mut anywhere = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(header) = line.strip_prefix('[') {
            current = header
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim();
            continue;
        }
        let Some(rest) = line.strip_prefix(key) else {
            continue;
        };
        if !rest.trim_start().starts_with(['=', ':']) {
            continue;
        }
        if section.is_none_or(|s| s == current) {
            return Some(i + 1);
        }
        anywhere = anywhere.or(Some(i + 1));
    }
    anywhere
}

/// `cfg` when its cross-field `check` passes, else an error naming `path`.
pub fn checked<T>(
    path: &Path,
    cfg: T,
    check: impl FnOnce(&T) -> Result<(), String>,
) -> Result<T, ConfigError> {
    check(&cfg).map_err(|msg| ConfigError::Invalid {
        path: path.into(),
        msg,
    })?;
    Ok(cfg)
}

/// The `PGFAN_<SECTION>__<KEY>` variables of `section`. Others with the prefix, such as
/// `PGFAN_LOG` or another daemon's `PGFAN_NODE__...`, are not this daemon's settings.
fn overrides(section: &str) -> config::Map<String, String> {
    let prefix = format!("PGFAN_{}__", section.to_uppercase());
    std::env::vars()
        .filter(|(k, _)| k.to_uppercase().starts_with(&prefix))
        .collect()
}

/// Parses `10ms`, `1.5s`, `2m`, `1h`, `1d`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {text:?}"))?;
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 0.001,
        "us" => 0.000_001,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        other => return Err(format!("invalid duration unit {other:?} in {text:?}")),
    };
    Duration::try_from_secs_f64(value * scale).map_err(|_| format!("invalid duration {text:?}"))
}

/// Serde adapter for durations given as a string or a number of seconds.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration such as 10ms, 1.5s, 2m, or a number of seconds")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            parse_duration(v).map_err(E::custom)
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
            Duration::try_from_secs_f64(v).map_err(E::custom)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::custom(format!("negative duration {v}")))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }
    }
    d.deserialize_any(V)
}

/// Serde adapter for lists given as a TOML array or a comma-separated INI string.
///
/// A visitor rather than an untagged enum: serde's untagged error ("data did not match any
/// variant") names neither what was given nor what is expected.
pub fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of names (an array, or a comma-separated string)")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Vec<String>, E> {
            Ok(s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect())
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut out = Vec::new();
            while let Some(name) = seq.next_element::<String>()? {
                out.push(name);
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_bare_seconds() {
        assert_eq!(parse_duration("10ms"), Ok(Duration::from_millis(10)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("60"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn offending_keys_are_found_in_error_messages() {
        assert_eq!(
            offending_key("unknown field `workerz`, expected one of `name` for key `node`"),
            Some((Some("node"), "workerz"))
        );
        assert_eq!(
            offending_key("invalid type: string \"x\", expected usize for key `node.workers`"),
            Some((Some("node"), "workers"))
        );
        assert_eq!(
            offending_key("invalid type for key `relay.producers[0].db`"),
            Some((Some("relay"), "producers"))
        );
        assert_eq!(offending_key("missing configuration field \"name\""), None);
        assert_eq!(offending_key("unknown field `x"), None);
    }

    #[test]
    fn key_lines_prefer_the_section_and_ignore_lookalikes() {
        let text = "# workers = 1\n[ticker]\nworkers = 2\n[node]\nworkersx = 3\n  workers= 4\n";
        assert_eq!(key_line(text, Some("node"), "workers"), Some(6));
        assert_eq!(key_line(text, Some("ticker"), "workers"), Some(3));
        assert_eq!(key_line(text, Some("relay"), "workers"), Some(3));
        assert_eq!(key_line(text, None, "workers"), Some(3));
        assert_eq!(key_line("[node]\nname: n\n", Some("node"), "name"), Some(2));
        assert_eq!(key_line(text, Some("node"), "absent"), None);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_file_and_line() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct File {
            s: Section,
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Section {
            #[serde(default)]
            n: u32,
        }
        let dir = tempfile::tempdir().unwrap();
        for (name, text, line) in [
            ("a.toml", "[s]\nn = 1\n\nbogus = 2\n", 4),
            ("b.ini", "[s]\nbogus = 2\n", 2),
            ("c.toml", "# n\n[s]\nn = \"x\"\n", 3),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            let err = load::<File>(&path, "s").unwrap_err().to_string();
            let want = format!("{}, line {line}: ", path.display());
            assert!(err.starts_with(&want), "{err:?} should start with {want:?}");
        }
    }
}
