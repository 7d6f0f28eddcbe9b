//! TLS for every connection: libpq's `sslmode`, `sslrootcert`, `sslcert`, `sslkey`,
//! `sslcrl` and `sslcrldir`.
//!
//! tokio-postgres knows only `sslmode` disable/prefer/require and rejects the other keys, so
//! they are taken out of the connection string here (also from `PGSSLMODE`,
//! `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`, `PGSSLCRL`, `PGSSLCRLDIR`, as libpq reads
//! them) and turned into an OpenSSL connector:
//!
//! - `disable`: no TLS; `prefer` (the default): TLS when the server offers it, unverified;
//!   `require`: TLS or no connection, unverified;
//! - `verify-ca`: the server's certificate must chain to `sslrootcert`;
//! - `verify-full`: that, and its name (SAN DNS name or IP address) must match `host`.
//!
//! The root certificate defaults to `~/.postgresql/root.crt`, as in libpq. A client
//! certificate is presented when `sslcert` and `sslkey` are both given.
//!
//! Revocation, as in libpq, only where the server's certificate is verified: the CRLs of
//! `sslcrl` (a PEM file, default `~/.postgresql/root.crl` when that exists) and of
//! `sslcrldir` (a directory prepared with `openssl rehash`) are loaded into the verifier's
//! store and checked for every certificate of the chain, so a revoked server certificate,
//! or one whose issuer has no CRL there, is refused. Unlike libpq, which skips a CRL file
//! or directory it cannot find, a named one that does not exist is an error: a mistyped
//! path must not turn revocation checking off unnoticed.

use std::path::PathBuf;

use openssl::error::ErrorStack;
use openssl::ssl::{SslConnector, SslConnectorBuilder, SslFiletype, SslMethod, SslVerifyMode};
use openssl::x509::store::X509Lookup;
use openssl::x509::verify::X509VerifyFlags;
use postgres_openssl::MakeTlsConnector;
use tokio_postgres::config::SslMode;

/// How strictly the server is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl Mode {
    fn parse(text: &str) -> Option<Mode> {
        Some(match text {
            "disable" | "allow" => Mode::Disable,
            "prefer" => Mode::Prefer,
            "require" => Mode::Require,
            "verify-ca" => Mode::VerifyCa,
            "verify-full" => Mode::VerifyFull,
            _ => return None,
        })
    }

    /// What tokio-postgres itself is told: it only decides whether TLS is mandatory.
    pub fn ssl_mode(self) -> SslMode {
        match self {
            Mode::Disable => SslMode::Disable,
            Mode::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        }
    }
}

/// The TLS settings of one connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub mode: Mode,
    pub root_cert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// `sslcrl`: a PEM file of certificate revocation lists.
    pub crl: Option<PathBuf>,
    /// `sslcrldir`: a directory of CRLs named by hash (`openssl rehash`).
    pub crl_dir: Option<PathBuf>,
}

/// Why the TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("invalid sslmode {0:?} (disable, allow, prefer, require, verify-ca, verify-full)")]
    Mode(String),
    #[error("root certificate file {0:?} does not exist; either provide the file or change sslmode to disable server certificate verification")]
    NoRootCert(PathBuf),
    #[error("{setting} {path:?} does not exist; provide it or remove {setting} (certificate revocation is checked only with the CRLs it names)")]
    NoCrl {
        setting: &'static str,
        path: PathBuf,
    },
    #[error("{setting} {path:?} is not valid UTF-8, which OpenSSL needs here")]
    CrlPath {
        setting: &'static str,
        path: PathBuf,
    },
    #[error("TLS setup: {0}")]
    OpenSsl(#[from] ErrorStack),
}

/// Keys of the connection string this module handles instead of tokio-postgres.
const KEYS: [&str; 6] = [
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslcrl",
    "sslcrldir",
];

/// Splits `conninfo` (keyword/value form, or a `postgresql://` URI with the settings as
/// query parameters) into what tokio-postgres parses and the TLS settings.
pub fn split(conninfo: &str) -> Result<(String, Settings), TlsError> {
    let pick = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
    let mut mode = pick("PGSSLMODE");
    let mut root_cert = pick("PGSSLROOTCERT");
    let mut cert = pick("PGSSLCERT");
    let mut key = pick("PGSSLKEY");
    let mut crl = pick("PGSSLCRL");
    let mut crl_dir = pick("PGSSLCRLDIR");
    let uri = conninfo.trim_start().contains("://");
    let (found, rest) = if uri {
        uri_pairs(conninfo)
    } else {
        let mut found = Vec::new();
        let mut kept = Vec::new();
        for (k, v) in pairs(conninfo) {
            if KEYS.contains(&k.as_str()) {
                found.push((k, v));
            } else {
                kept.push(format!("{k}={}", quote(&v)));
            }
        }
        (found, kept.join(" "))
    };
    for (k, v) in found {
        match k.as_str() {
            "sslmode" => mode = Some(v),
            "sslrootcert" => root_cert = Some(v),
            "sslcert" => cert = Some(v),
            "sslkey" => key = Some(v),
            "sslcrl" => crl = Some(v).filter(|v| !v.is_empty()),
            "sslcrldir" => crl_dir = Some(v).filter(|v| !v.is_empty()),
            _ => {}
        }
    }
    let mode = match mode {
        None => Mode::Prefer,
        Some(m) => Mode::parse(&m).ok_or(TlsError::Mode(m))?,
    };
    Ok((
        rest,
        Settings {
            mode,
            root_cert: root_cert.map(PathBuf::from),
            cert: cert.map(PathBuf::from),
            key: key.map(PathBuf::from),
            crl: crl.map(PathBuf::from),
            crl_dir: crl_dir.map(PathBuf::from),
        },
    ))
}

/// The OpenSSL connector for `settings`.
pub fn connector(settings: &Settings) -> Result<MakeTlsConnector, TlsError> {
    let mut builder = SslConnector::builder(SslMethod::tls_client())?;
    let verify = matches!(settings.mode, Mode::VerifyCa | Mode::VerifyFull);
    if verify {
        let root = settings.root_cert.clone().unwrap_or_else(default_root_cert);
        if !root.exists() {
            return Err(TlsError::NoRootCert(root));
        }
        load_crls(&mut builder, settings)?;
        builder.set_ca_file(&root)?;
        builder.set_verify(SslVerifyMode::PEER);
    } else {
        builder.set_verify(SslVerifyMode::NONE);
    }
    if let (Some(cert), Some(key)) = (&settings.cert, &settings.key) {
        builder.set_certificate_chain_file(cert)?;
        builder.set_private_key_file(key, SslFiletype::PEM)?;
    }
    let mut connector = MakeTlsConnector::new(builder.build());
    if settings.mode != Mode::VerifyFull {
        // OpenSSL checks the host name by default; only verify-full asks for that.
        connector.set_callback(|config, _host| {
            config.set_verify_hostname(false);
            Ok(())
        });
    }
    Ok(connector)
}

/// Loads the CRLs of `sslcrl` / `sslcrldir` (or the default `~/.postgresql/root.crl` when it
/// exists) into the verifier's store and turns revocation checking on for the whole chain,
/// as libpq does (`X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL`).
fn load_crls(builder: &mut SslConnectorBuilder, settings: &Settings) -> Result<(), TlsError> {
    let default = Some(default_postgresql_file("root.crl")).filter(|p| p.exists());
    let file = match (&settings.crl, &default) {
        (Some(path), _) => Some(existing("sslcrl", path)?),
        (None, Some(path)) => Some(existing("sslcrl", path)?),
        (None, None) => None,
    };
    let dir = match &settings.crl_dir {
        Some(path) => Some(existing("sslcrldir", path)?),
        None => None,
    };
    if file.is_none() && dir.is_none() {
        return Ok(());
    }
    let store = builder.cert_store_mut();
    if let Some(file) = file {
        store
            .add_lookup(X509Lookup::file())?
            .load_crl_file(file, SslFiletype::PEM)?;
    }
    if let Some(dir) = dir {
        store
            .add_lookup(X509Lookup::hash_dir())?
            .add_dir(dir, SslFiletype::PEM)?;
    }
    store.set_flags(X509VerifyFlags::CRL_CHECK | X509VerifyFlags::CRL_CHECK_ALL)?;
    Ok(())
}

/// `path` as the UTF-8 text OpenSSL's lookups take, if it exists.
fn existing<'a>(setting: &'static str, path: &'a std::path::Path) -> Result<&'a str, TlsError> {
    if !path.exists() {
        return Err(TlsError::NoCrl {
            setting,
            path: path.to_path_buf(),
        });
    }
    path.to_str().ok_or_else(|| TlsError::CrlPath {
        setting,
        path: path.to_path_buf(),
    })
}

fn default_root_cert() -> PathBuf {
    default_postgresql_file("root.crt")
}

/// `~/.postgresql/<name>`, where libpq looks for its TLS files by default.
fn default_postgresql_file(name: &str) -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".postgresql").join(name)
}

/// The TLS settings among a URI's query parameters (percent-decoded), and the URI without
/// them.
fn uri_pairs(uri: &str) -> (Vec<(String, String)>, String) {
    let Some((base, query)) = uri.split_once('?') else {
        return (Vec::new(), uri.to_string());
    };
    let mut found = Vec::new();
    let mut kept = Vec::new();
    for param in query.split('&') {
        let (k, v) = param.split_once('=').unwrap_or((param, ""));
        if KEYS.contains(&k) {
            let v = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
            found.push((k.to_string(), v.into_owned()));
        } else {
            kept.push(param);
        }
    }
    match kept.is_empty() {
        true => (found, base.to_string()),
        false => (found, format!("{base}?{}", kept.join("&"))),
    }
}

/// Quotes a value for tokio-postgres' keyword/value parser.
fn quote(value: &str) -> String {
    let mut out = String::from("'");
    for ch in value.chars() {
        if ch == '\'' || ch == '\\' {
            out.push('\\');
        }
        out.push(ch);
    }
    out.push('\'');
    out
}

/// The `key=value` pairs of a keyword/value connection string, values unquoted as libpq
/// does (single quotes, backslash escapes). Malformed text is kept as a pair with an empty
/// key, so tokio-postgres reports it.
fn pairs(conninfo: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = conninfo.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return out;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next_if_eq(&'=').is_none() {
            out.push((String::new(), key));
            continue;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '\'' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_keys_are_taken_out_and_the_rest_is_kept() {
        let (rest, s) = split(
            "host=db.example port=5433 user=app password='s3\\'cret' sslmode=verify-full sslrootcert=/etc/ca.crt",
        )
        .unwrap();
        assert_eq!(s.mode, Mode::VerifyFull);
        assert_eq!(s.root_cert, Some(PathBuf::from("/etc/ca.crt")));
        assert!(!rest.contains("ssl"), "{rest}");
        let cfg: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(cfg.get_ports(), &[5433]);
        assert_eq!(cfg.get_user(), Some("app"));
    }

    #[test]
    fn quoted_values_survive() {
        let (rest, _) = split("user=a password='p w\\'x\\\\' dbname=d").unwrap();
        let cfg: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(cfg.get_password(), Some(&b"p w'x\\"[..]));
        assert_eq!(cfg.get_dbname(), Some("d"));
    }

    #[test]
    fn uris_have_their_tls_parameters_taken_out() {
        let (rest, s) = split(
            "postgresql://app@db.example:5433/app?sslmode=verify-ca&connect_timeout=5&sslrootcert=%2Fetc%2Fca.crt",
        )
        .unwrap();
        assert_eq!(s.mode, Mode::VerifyCa);
        assert_eq!(s.root_cert, Some(PathBuf::from("/etc/ca.crt")));
        assert_eq!(
            rest,
            "postgresql://app@db.example:5433/app?connect_timeout=5"
        );
        let cfg: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(cfg.get_dbname(), Some("app"));
        let (rest, s) = split("postgres://h/d?sslmode=disable").unwrap();
        assert_eq!((rest.as_str(), s.mode), ("postgres://h/d", Mode::Disable));
    }

    #[test]
    fn crl_settings_are_taken_out() {
        let (rest, s) =
            split("host=h sslmode=verify-full sslcrl=/etc/pg/root.crl sslcrldir=/etc/pg/crl")
                .unwrap();
        assert_eq!(s.crl, Some(PathBuf::from("/etc/pg/root.crl")));
        assert_eq!(s.crl_dir, Some(PathBuf::from("/etc/pg/crl")));
        assert_eq!(rest, "host='h'");
    }

    #[test]
    fn a_named_crl_that_does_not_exist_is_refused() {
        let (_, mut s) = split("sslmode=verify-ca sslcrl=/nonexistent/root.crl").unwrap();
        s.root_cert = Some(PathBuf::from("/dev/null"));
        assert!(matches!(
            connector(&s),
            Err(TlsError::NoCrl {
                setting: "sslcrl",
                ..
            })
        ));
    }

    #[test]
    fn bad_modes_are_refused() {
        assert!(matches!(
            split("sslmode=sometimes"),
            Err(TlsError::Mode(m)) if m == "sometimes"
        ));
        assert_eq!(split("").unwrap().1.mode, Mode::Prefer);
    }
}
