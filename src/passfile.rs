//! Passwords from a libpq password file, so configs never need them inline.
//!
//! tokio-postgres does not read `~/.pgpass`; operators expect it (and `PGPASSFILE`) to
//! work as with psql. Same format and rules as libpq: `host:port:database:user:password`
//! lines, `*` matches anything, `\` escapes `:` and `\`, the first matching line wins, a
//! Unix-socket host matches `localhost`, and a file readable by group or others is
//! ignored with a warning. A password given in the connection string is left alone.

use std::path::{Path, PathBuf};

use tokio_postgres::config::Host;
use tokio_postgres::Config;

/// Fills in the password of `cfg` from the password file, if it has none.
pub fn apply(cfg: &mut Config) {
    if cfg.get_password().is_some() {
        return;
    }
    let Some(path) = location() else { return };
    let Some(text) = read_private(&path) else {
        return;
    };
    let host = match cfg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        _ => "localhost".to_string(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432).to_string();
    let user = cfg.get_user().unwrap_or_default().to_string();
    let db = cfg.get_dbname().unwrap_or(&user).to_string();
    if let Some(password) = lookup(&text, [&host, &port, &db, &user]) {
        cfg.password(password);
    }
}

/// `PGPASSFILE`, else `~/.pgpass`.
fn location() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PGPASSFILE") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".pgpass"))
}

/// The file's text, unless it is missing or others can read it.
fn read_private(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "Password file has group or world access; ignoring it (chmod 0600)");
            return None;
        }
    }
    let _ = meta;
    std::fs::read_to_string(path).ok()
}

/// The password of the first line whose four fields match `want`.
fn lookup(text: &str, want: [&str; 4]) -> Option<String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(fields)
        .find(|f| f.len() == 5 && f.iter().zip(want).all(|(f, w)| f == "*" || f == w))
        .map(|mut f| f.remove(4))
}

/// Splits a line at unescaped `:`, removing the escapes.
fn fields(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let (Some(next), Some(last)) = (chars.next(), out.last_mut()) {
                    last.push(next);
                }
            }
            ':' if out.len() < 5 => out.push(String::new()),
            c => {
                if let Some(last) = out.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# comment\n\
                        db1.example:5432:app:relay:first\n\
                        *:*:app:relay:second\n\
                        localhost:6432:*:*:pa\\:ss\\\\word\n";

    #[test]
    fn first_matching_line_wins_with_wildcards_and_escapes() {
        assert_eq!(
            lookup(FILE, ["db1.example", "5432", "app", "relay"]).as_deref(),
            Some("first")
        );
        assert_eq!(
            lookup(FILE, ["db2", "5433", "app", "relay"]).as_deref(),
            Some("second")
        );
        assert_eq!(
            lookup(FILE, ["localhost", "6432", "x", "y"]).as_deref(),
            Some("pa:ss\\word")
        );
        assert_eq!(lookup(FILE, ["db2", "5432", "other", "relay"]), None);
    }

    #[test]
    fn apply_uses_the_file_only_without_a_password() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        std::fs::write(&path, "127.0.0.1:5999:app:u:secret\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let text = read_private(&path).unwrap();
        assert_eq!(
            lookup(&text, ["127.0.0.1", "5999", "app", "u"]).as_deref(),
            Some("secret")
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(
                read_private(&path).is_none(),
                "a readable-by-others file is ignored"
            );
        }
    }
}
