//! Certificate revocation: libpq's `sslcrl`, `sslcrldir` and `PGSSLCRL` (src/tls.rs). A
//! cluster serves a certificate of a self-signed test CA; the CA's CRL first lists nothing,
//! then the server's certificate.

use std::path::Path;

use pgfan::cluster::Cluster;

fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("/usr/bin/openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run /usr/bin/openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (ca.crt, ca.key) with the bookkeeping `openssl ca` needs to revoke and to write
/// CRLs, and server.crt/server.key for 127.0.0.1 signed by it.
fn make_pki(dir: &Path) {
    std::fs::write(
        dir.join("ca.cnf"),
        "[ca]\ndefault_ca = test_ca\n\
         [test_ca]\ndatabase = index.txt\ncrlnumber = crlnumber\ncertificate = ca.crt\n\
         private_key = ca.key\ndefault_md = sha256\ndefault_crl_days = 2\n",
    )
    .unwrap();
    std::fs::write(dir.join("index.txt"), "").unwrap();
    std::fs::write(dir.join("crlnumber"), "01\n").unwrap();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            "/CN=pgfan crl test ca",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName = IP:127.0.0.1\nbasicConstraints = CA:FALSE\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            "server.crt",
            "-extfile",
            "server.ext",
        ],
    );
}

/// Writes the CA's current CRL to `out`.
fn gen_crl(dir: &Path, out: &str) {
    openssl(dir, &["ca", "-config", "ca.cnf", "-gencrl", "-out", out]);
}

/// A cluster with TLS on, serving `certs`/server.crt (files handed to the server's user
/// when the tests run as root, as tests/security.rs does).
fn start_with_tls(certs: &Path) -> Cluster {
    use std::os::unix::fs::PermissionsExt;
    if unsafe { libc::geteuid() } == 0 {
        let user = std::env::var("PGFAN_PG_USER").unwrap_or_else(|_| "postgres".into());
        let name = std::ffi::CString::new(user).unwrap();
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        assert!(!pw.is_null(), "the server's user exists");
        let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
        for file in ["server.crt", "server.key"] {
            std::os::unix::fs::chown(certs.join(file), Some(uid), Some(gid)).unwrap();
        }
    }
    std::fs::set_permissions(certs, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (file, mode) in [("server.crt", 0o644), ("server.key", 0o600)] {
        std::fs::set_permissions(certs.join(file), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let literal = |file: &str| format!("'{}'", certs.join(file).display());
    let (cert, key) = (literal("server.crt"), literal("server.key"));
    Cluster::start_with(&[
        ("ssl", "on"),
        ("ssl_cert_file", &cert),
        ("ssl_key_file", &key),
    ])
    .expect("a cluster with TLS starts")
}

async fn connects(conninfo: &str) -> Result<(), tokio_postgres::Error> {
    let c = pgfan::db::connect_client(conninfo).await?;
    let ssl: bool = c
        .query_one(
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
            &[],
        )
        .await?
        .get(0);
    assert!(ssl, "the connection uses TLS");
    Ok(())
}

fn refused_as_revoked(err: tokio_postgres::Error) {
    let text = format!("{err:?}");
    assert!(text.contains("certificate revoked"), "{text}");
}

#[tokio::test]
async fn a_revoked_server_certificate_is_refused() {
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    make_pki(dir);
    gen_crl(dir, "empty.crl");
    openssl(dir, &["ca", "-config", "ca.cnf", "-revoke", "server.crt"]);
    gen_crl(dir, "revoked.crl");
    let crl_dir = dir.join("crls");
    std::fs::create_dir(&crl_dir).unwrap();
    std::fs::copy(dir.join("revoked.crl"), crl_dir.join("revoked.crl")).unwrap();
    openssl(dir, &["rehash", "crls"]);
    let owned = dir.to_path_buf();
    let cluster = tokio::task::spawn_blocking(move || start_with_tls(&owned))
        .await
        .unwrap();
    let base = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=verify-full sslrootcert='{}'",
        cluster.port(),
        dir.join("ca.crt").display()
    );
    let with = |extra: String| format!("{base} {extra}");

    connects(&with(format!(
        "sslcrl='{}'",
        dir.join("empty.crl").display()
    )))
    .await
    .expect("a CRL that does not list the server's certificate lets it through");
    refused_as_revoked(
        connects(&with(format!(
            "sslcrl='{}'",
            dir.join("revoked.crl").display()
        )))
        .await
        .expect_err("sslcrl: the revoked certificate is refused"),
    );
    refused_as_revoked(
        connects(&with(format!("sslcrldir='{}'", crl_dir.display())))
            .await
            .expect_err("sslcrldir: the revoked certificate is refused"),
    );
    // The URI form carries it as a query parameter.
    let uri = format!(
        "postgresql://postgres@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert={}&sslcrl={}",
        cluster.port(),
        dir.join("ca.crt").display(),
        dir.join("revoked.crl").display()
    );
    refused_as_revoked(connects(&uri).await.expect_err("uri sslcrl"));
    // A named CRL that is missing is an error naming the setting, not a silent "no check".
    let missing = connects(&with("sslcrl=/nonexistent/root.crl".into()))
        .await
        .expect_err("a missing CRL file is refused");
    let cause = std::error::Error::source(&missing).map(|c| c.to_string());
    assert!(
        cause.as_deref().is_some_and(|c| c.contains("sslcrl")),
        "{missing:?}"
    );
    // PGSSLCRL, as libpq reads it (the only test of this binary, so the environment is ours).
    std::env::set_var("PGSSLCRL", dir.join("revoked.crl"));
    let from_env = connects(&base).await;
    std::env::remove_var("PGSSLCRL");
    refused_as_revoked(from_env.expect_err("PGSSLCRL: the revoked certificate is refused"));
    connects(&base)
        .await
        .expect("without a CRL the certificate is not checked for revocation");
}
