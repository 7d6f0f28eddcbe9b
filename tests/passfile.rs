//! Passwords come from PGPASSFILE (libpq's password file), never needed inline: a daemon's
//! connection string without a password authenticates against a server that demands one.

use pgfan::cluster::Cluster;

#[tokio::test]
async fn passwords_come_from_the_password_file() {
    let cluster = tokio::task::spawn_blocking(Cluster::start)
        .await
        .unwrap()
        .unwrap();
    let admin = pgfan::db::connect_client(&cluster.conninfo("postgres"))
        .await
        .unwrap();
    admin
        .batch_execute("create role pw_user login password 'S3cret:pass'")
        .await
        .unwrap();
    // Make this role authenticate with a password over TCP; everyone else stays on trust.
    let hba = cluster.dir().join("data").join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host all pw_user 127.0.0.1/32 scram-sha-256\n{rules}"),
    )
    .unwrap();
    admin
        .batch_execute("select pg_reload_conf()")
        .await
        .unwrap();
    let conninfo = cluster
        .conninfo("postgres")
        .replace("user=postgres", "user=pw_user");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgpass");
    std::env::set_var("PGPASSFILE", &file);
    let refused = pgfan::db::connect_client(&conninfo).await;
    assert!(refused.is_err(), "without the file the password is missing");

    std::fs::write(
        &file,
        format!("127.0.0.1:{}:*:pw_user:S3cret\\:pass\n", cluster.port()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let c = pgfan::db::connect_client(&conninfo)
        .await
        .expect("the password file's entry authenticates");
    let user: String = c
        .query_one("select current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(user, "pw_user");
}
