//! The journal's two backends in the integration tests: a test written once
//! over a [`Ledger`] runs on the project's SQLite file and on a fresh
//! PostgreSQL database (`TOLLGATE_TEST_PG_URL`, which `.ci/run` sets after
//! starting a server; each test creates its own database and drops it).
//! Without a server a PostgreSQL run says so and passes — except under CI,
//! where a missing server is a failure.

use std::sync::Arc;

use postgres::{Client, NoTls};

/// Where a test's projects journal.
#[derive(Clone)]
pub enum Ledger {
    Sqlite,
    Postgres(Arc<TestDb>),
}

impl Ledger {
    /// A fresh PostgreSQL database, or `None` when there is no test server
    /// (and this is not CI).
    pub fn postgres() -> Option<Ledger> {
        TestDb::create().map(|db| Ledger::Postgres(Arc::new(db)))
    }

    pub(super) fn db(&self) -> Option<Arc<TestDb>> {
        match self {
            Ledger::Sqlite => None,
            Ledger::Postgres(db) => Some(Arc::clone(db)),
        }
    }
}

/// A database created for one test, dropped at its end.
pub struct TestDb {
    admin: String,
    name: String,
    /// Its URL (with the test role's password: a test secret).
    pub url: String,
}

/// Runs `f` on a thread of its own: the client must not run on a tokio
/// worker, and the tests are async.
fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(f).join().expect("the admin thread")
}

impl TestDb {
    pub fn create() -> Option<TestDb> {
        let admin = match std::env::var("TOLLGATE_TEST_PG_URL") {
            Ok(u) if !u.is_empty() => u,
            _ => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "CI must start PostgreSQL and set TOLLGATE_TEST_PG_URL (see .ci/run)"
                );
                eprintln!("skipped on PostgreSQL: TOLLGATE_TEST_PG_URL is not set");
                return None;
            }
        };
        let name = format!("tollgate_it_{:016x}", fastrand::u64(..));
        let (a, n) = (admin.clone(), name.clone());
        off_runtime(move || {
            let mut c = Client::connect(&a, NoTls).expect("the test PostgreSQL server");
            c.batch_execute(&format!("CREATE DATABASE {n}"))
                .expect("a fresh database");
        });
        let mut url = url::Url::parse(&admin).expect("TOLLGATE_TEST_PG_URL is a URL");
        url.set_path(&format!("/{name}"));
        Some(TestDb {
            admin,
            name,
            url: url.to_string(),
        })
    }

    /// Every row of every table, as text (to look for what must never be
    /// stored, such as a key).
    pub fn all_text(&self) -> String {
        let url = self.url.clone();
        off_runtime(move || {
            let mut c = Client::connect(&url, NoTls).expect("the test database");
            let mut text = String::new();
            for table in [
                "runs",
                "steps",
                "calls",
                "holds",
                "batches",
                "schema_version",
            ] {
                for row in c
                    .query(&format!("SELECT t::text FROM {table} t"), &[])
                    .expect("a table of the journal")
                {
                    text.push_str(&row.get::<_, String>(0));
                    text.push('\n');
                }
            }
            text
        })
    }

    /// Runs SQL on the database directly (what time or another machine
    /// would have done).
    pub fn exec(&self, sql: &str) {
        let (url, sql) = (self.url.clone(), sql.to_owned());
        off_runtime(move || {
            let mut c = Client::connect(&url, NoTls).expect("the test database");
            c.batch_execute(&sql).expect("the test's SQL");
        });
    }

    /// This database's URL with another host and more parameters.
    pub fn url_with(&self, host: &str, query: &str) -> String {
        let mut url = url::Url::parse(&self.url).expect("the test database's URL");
        url.set_host(Some(host)).expect("a host");
        let q: Vec<&str> = [url.query().unwrap_or(""), query]
            .into_iter()
            .filter(|q| !q.is_empty())
            .collect();
        let q = q.join("&");
        url.set_query((!q.is_empty()).then_some(q.as_str()));
        url.to_string()
    }

    /// The server's certificate file, when it has TLS on; `None` (said)
    /// when it has not — a failure under CI, whose server must
    /// (`scripts/setup-postgres.sh`).
    pub fn server_cert(&self) -> Option<std::path::PathBuf> {
        let admin = self.admin.clone();
        let (ssl, file) = off_runtime(move || {
            let mut c = Client::connect(&admin, NoTls).expect("the test server");
            let mut show = |what: &str| -> String {
                c.query_one(&format!("SHOW {what}"), &[])
                    .expect("a setting")
                    .get(0)
            };
            (show("ssl"), show("ssl_cert_file"))
        });
        let file = std::path::PathBuf::from(file);
        if ssl == "on" && file.is_absolute() && file.is_file() {
            return Some(file);
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "CI's PostgreSQL must have ssl = on with a readable certificate (scripts/setup-postgres.sh)"
        );
        eprintln!("skipped the TLS checks: the test server has ssl = {ssl}");
        None
    }

    pub fn state_url(&self) -> tollgate::journal::StateUrl {
        tollgate::journal::StateUrl::parse(&self.url).expect("the test database's URL")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (a, n) = (self.admin.clone(), self.name.clone());
        off_runtime(move || {
            if let Ok(mut c) = Client::connect(&a, NoTls) {
                let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {n} WITH (FORCE)"));
            }
        });
    }
}

/// Test functions written once over a [`Ledger`], run on both backends:
/// `on_both_ledgers!(name, …)` makes `name::sqlite` and `name::postgres`
/// from `async fn name(ledger: Ledger)`.
#[macro_export]
macro_rules! on_both_ledgers {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use $crate::support::Ledger;
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name(Ledger::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if let Some(ledger) = Ledger::postgres() {
                        super::$name(ledger).await
                    }
                }
            }
        )*
    };
}
