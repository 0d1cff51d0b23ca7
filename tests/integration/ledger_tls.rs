//! TLS to the team ledger (issue 16, "a team database is usually remote"):
//! libpq's `sslmode` and `sslrootcert` through the CLI, against the real
//! PostgreSQL of the tests (TLS on, a certificate naming `localhost`:
//! `scripts/setup-postgres.sh`). The modes themselves (encrypted or not,
//! as `pg_stat_ssl` sees it) are checked beside the code
//! (`journal::pg::tests`); here, what a user sees.

use crate::support::{Project, TestDb, team_policy, transcript};

const WORKFLOW: &str = r#"version: 1
name: tls
steps:
  summarize: { task: summarize, prompt: "Summarize the news.", max_output_tokens: 50 }
"#;

/// A CA that signed nothing: the system store a test pins
/// (`SSL_CERT_FILE`), so the server's certificate is trusted by no one.
const OTHER_CA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tls/other-ca.pem");

/// The transcript with the renderer's line wrapping undone.
fn flat(out: &std::process::Output) -> String {
    transcript(out)
        .split_whitespace()
        .filter(|w| *w != "│")
        .collect::<Vec<_>>()
        .join(" ")
}

/// `verify-full` with the server's certificate as root opens the ledger
/// (from the URL, or from libpq's variables); without it — the machine's
/// CAs did not sign the server's certificate — the command exits 2 saying
/// why and what to do, never with the password.
#[test]
fn a_verified_ledger_opens_and_an_unverifiable_one_is_refused_saying_why() {
    let Some(db) = TestDb::create() else {
        return;
    };
    let Some(cert) = db.server_cert() else {
        return;
    };
    let cert = cert.display().to_string();
    let p = Project::empty();
    let runs = |url: &str, env: &[(&str, &str)]| {
        p.tollgate(&["runs"])
            .env("TOLLGATE_STATE_URL", url)
            .envs(env)
            .output()
    };

    let verified = db.url_with(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={cert}"),
    );
    let out = runs(&verified, &[]);
    let text = transcript(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!text.contains("warning"), "{text}");

    let out = runs(
        &db.url_with("localhost", ""),
        &[("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", &cert)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));

    let out = runs(
        &db.url_with("localhost", "sslmode=verify-full"),
        &[("SSL_CERT_FILE", OTHER_CA)],
    );
    let text = flat(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("cannot open the run journal postgres://tollgate@localhost:")
            && text.contains("invalid peer certificate: UnknownIssuer (sslmode=verify-full: the server's certificate is not signed by a CA this machine trusts; give the server's CA with sslrootcert=PATH (or PGSSLROOTCERT))"),
        "{text}"
    );
    assert!(!text.contains("tollgate-test"), "no password: {text}");

    // A bad root file is found before any connection.
    let out = runs(
        &db.url_with("localhost", "sslrootcert=/nonexistent/ca.pem"),
        &[],
    );
    let text = flat(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("TOLLGATE_STATE_URL: sslrootcert /nonexistent/ca.pem: no such file"),
        "{text}"
    );
}

/// A URL naming a remote ledger with a mode that does not verify it is
/// warned about once, before the command's own output, without the
/// password; the command goes on (a plan without budgets or cascades never
/// opens the ledger, so nothing is sent anywhere here).
#[test]
fn a_remote_ledger_reached_unverified_is_warned_about_once() {
    let p = Project::new(&team_policy("http://127.0.0.1:9", ""), WORKFLOW);
    for (mode, says) in [
        (
            "require",
            "sslmode=require: the team ledger at ledger.example is not verified",
        ),
        (
            "disable",
            "sslmode=disable: the team ledger at ledger.example is reached in plain text",
        ),
    ] {
        let out = p
            .tollgate(&["plan", "wf.yaml", "--policy", "policy.yaml"])
            .env(
                "TOLLGATE_STATE_URL",
                &format!("postgres://team:s3cret-pw@ledger.example/db?sslmode={mode}"),
            )
            .output();
        let text = flat(&out);
        assert_eq!(out.status.code(), Some(0), "{text}");
        assert_eq!(text.matches(says).count(), 1, "{text}");
        assert!(text.contains("sslrootcert=PATH"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
    }
    // Verified (the default for a remote host), or this machine: quiet.
    for url in [
        "postgres://team:s3cret-pw@ledger.example/db",
        "postgres://team:s3cret-pw@127.0.0.1/db?sslmode=disable",
    ] {
        let out = p
            .tollgate(&["plan", "wf.yaml", "--policy", "policy.yaml"])
            .env("TOLLGATE_STATE_URL", url)
            .output();
        let text = transcript(&out);
        assert_eq!(out.status.code(), Some(0), "{text}");
        assert!(!text.contains("TOLLGATE_STATE_URL"), "{text}");
    }
}

/// The client certificates `scripts/setup-postgres.sh` leaves for the role
/// `tollgate_cert` (certificate login only); `None`, said, without them —
/// a failure under CI, which runs the script.
fn client_certs() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("TOLLGATE_TEST_PG_CLIENT_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(
            || std::path::PathBuf::from("/var/lib/tollgate-test/pg-client"),
            std::path::PathBuf::from,
        );
    if dir.join("client.crt").is_file() && dir.join("client.key").is_file() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run scripts/setup-postgres.sh (client certificates in {})",
        dir.display()
    );
    eprintln!(
        "skipped the client certificate checks: none in {}",
        dir.display()
    );
    None
}

/// A ledger reached with a client certificate through the CLI: from the
/// URL or from `PGSSLCERT` / `PGSSLKEY`, no password anywhere. A copy of
/// the key that others may read is refused before any connection, with
/// the fix and never the key; no certificate at all is refused by the
/// server, and the message says what to give.
#[test]
fn a_client_certificate_opens_the_ledger_and_a_readable_key_is_refused() {
    let Some(db) = TestDb::create() else {
        return;
    };
    let Some(cert) = db.server_cert() else {
        return;
    };
    let Some(dir) = client_certs() else {
        return;
    };
    db.exec("GRANT CREATE, USAGE ON SCHEMA public TO tollgate_cert");
    let p = Project::empty();
    let runs = |query: &str, env: &[(&str, &str)]| {
        let mut url = url::Url::parse(&db.url_with(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={}{query}", cert.display()),
        ))
        .unwrap();
        url.set_username("tollgate_cert").unwrap();
        url.set_password(None).unwrap();
        p.tollgate(&["runs"])
            .env("TOLLGATE_STATE_URL", url.as_str())
            .envs(env)
            .output()
    };
    let (crt, key) = (dir.join("client.crt"), dir.join("client.key"));
    let out = runs(
        &format!("&sslcert={}&sslkey={}", crt.display(), key.display()),
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let (crt_s, key_s) = (crt.display().to_string(), key.display().to_string());
    let out = runs("", &[("PGSSLCERT", &crt_s), ("PGSSLKEY", &key_s)]);
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));

    let key_text = std::fs::read_to_string(&key).unwrap();
    let open_key = p.path().join("open.key");
    std::fs::write(&open_key, &key_text).unwrap();
    std::fs::set_permissions(
        &open_key,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let out = runs(
        &format!("&sslcert={}&sslkey={}", crt.display(), open_key.display()),
        &[],
    );
    let text = flat(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains(&format!("chmod 600 {}", open_key.display())),
        "{text}"
    );
    let out = runs("", &[]);
    let text = flat(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("requires a valid client certificate")
            && text.contains("give sslcert=PATH and sslkey=PATH (or PGSSLCERT and PGSSLKEY)"),
        "{text}"
    );
    for line in key_text.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!text.contains(line), "a line of the key was shown: {text}");
    }
}
