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
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
}

/// Reads `path` into `T`; `env_prefix` (e.g. `PGFAN_TICKER`) names the overriding variables,
/// such as `PGFAN_TICKER__POLL_PERIOD=5ms`.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
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
                .source(Some(overrides())),
        )
        .build()
        .map_err(load_err)?
        .try_deserialize()
        .map_err(load_err)
}

/// The `PGFAN_<SECTION>__<KEY>` variables. Others with the prefix, such as `PGFAN_LOG`,
/// are not settings and would otherwise be read as unknown top-level keys.
fn overrides() -> config::Map<String, String> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("PGFAN_") && k["PGFAN_".len()..].contains("__"))
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
            u64::try_from(v).map(Duration::from_secs).map_err(E::custom)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }
    }
    d.deserialize_any(V)
}

/// Serde adapter for lists given as a TOML array or a comma-separated INI string.
pub fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    Ok(match serde::Deserialize::deserialize(d)? {
        Raw::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        Raw::Many(v) => v,
    })
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
}
