//! The journal on PostgreSQL: one database a whole team shares (every
//! checkout and CI runner pointing `TOLLGATE_STATE_URL` at it), holding the
//! same runs, calls, holds and batches as the SQLite file, so budgets, the
//! response cache and `report` cover everyone.
//!
//! The client is the synchronous `postgres` crate. It runs a small runtime
//! of its own and must never be entered from a tokio worker (it panics
//! there), and the journal is called from async code; so every connection
//! lives on a thread of its own: the writer's (group commit, `writer`) and
//! one [`Worker`] for reads and budget holds. Callers wait on a channel, as
//! they wait on the SQLite connection's mutex.
//!
//! The URL may carry a password: it is a secret. It is never shown — the
//! journal's location is the URL without password or parameters
//! ([`StateUrl::display`]) and every error is scrubbed of the password
//! ([`scrub`]). A password may come from `PGPASSWORD` instead of the URL.
//!
//! TLS (`sslmode`, `sslrootcert`, a client certificate in `sslcert` and
//! `sslkey`, their `PGSSL…` variables) is [`super::pg_tls`]'s: a remote
//! ledger is verified by default.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres::types::ToSql;
use postgres::{Client, Config, Row, Statement};

use super::pg_tls::{Tls, TlsWarning};

use super::JournalError;

/// The newest schema this build knows (the `schema_version` table).
pub(super) const SCHEMA_VERSION: i64 = 4;

/// How long a connection may take to open unless the URL says otherwise.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one statement may run on the server unless the URL's
/// `options` set `statement_timeout` (`?options=-c%20statement_timeout%3D2s`).
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a caller waits beyond the statement timeout before it gives up on
/// a server that does not answer at all (a hung server never enforces its
/// own timeout; the sync client has no read timeout).
const GRACE: Duration = Duration::from_secs(2);

/// `statement_timeout` as the server reads it: milliseconds, or a number
/// with a unit (`ms`, `s`, `min`).
fn parse_pg_duration(v: &str) -> Option<Duration> {
    let v = v.trim().trim_matches(|c| c == '\'' || c == '"');
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: u64 = n.parse().ok()?;
    match unit.trim() {
        "" | "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "min" => Some(Duration::from_secs(n.saturating_mul(60))),
        _ => None,
    }
}

/// The `statement_timeout` an `options` string sets, if any.
fn statement_timeout_in(options: &str) -> Option<Option<Duration>> {
    let at = options.find("statement_timeout=")?;
    let rest = &options[at + "statement_timeout=".len()..];
    let value = rest.split_whitespace().next().unwrap_or("");
    Some(parse_pg_duration(value))
}

/// The migrations, in order: migration `i` takes a database from version
/// `i` to `i + 1`. Only ever appended to: a team's database is migrated by
/// whichever member's newer tollgate opens it first.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE runs (
    seq             BIGSERIAL UNIQUE,
    id              TEXT PRIMARY KEY,
    workflow        TEXT NOT NULL,
    workflow_path   TEXT NOT NULL,
    workflow_hash   TEXT NOT NULL,
    policy          TEXT NOT NULL,
    policy_path     TEXT NOT NULL,
    policy_hash     TEXT NOT NULL,
    inputs_hash     TEXT NOT NULL,
    inputs          TEXT NOT NULL,
    started_ms      BIGINT NOT NULL,
    finished_ms     BIGINT,
    status          TEXT NOT NULL,
    steps_total     BIGINT NOT NULL,
    estimate_usd    DOUBLE PRECISION NOT NULL,
    estimate_max_usd DOUBLE PRECISION NOT NULL,
    cost_usd        DOUBLE PRECISION NOT NULL DEFAULT 0,
    pid             BIGINT NOT NULL,
    pid_start       BIGINT,
    sessions        BIGINT NOT NULL DEFAULT 1,
    -- A pid means something only on its own machine: a run on another
    -- machine is never judged dead by a local pid check.
    machine         TEXT NOT NULL DEFAULT ''
);
CREATE INDEX runs_started ON runs(started_ms);
CREATE TABLE steps (
    run_id          TEXT NOT NULL REFERENCES runs(id),
    step            TEXT NOT NULL,
    status          TEXT NOT NULL,
    planned_model   TEXT,
    planned_calls   BIGINT NOT NULL,
    estimate_usd    DOUBLE PRECISION NOT NULL,
    estimate_max_usd DOUBLE PRECISION NOT NULL,
    flagship_estimate_usd DOUBLE PRECISION NOT NULL,
    finished_ms     BIGINT,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE calls (
    id              BIGSERIAL PRIMARY KEY,
    run_id          TEXT NOT NULL REFERENCES runs(id),
    session         TEXT NOT NULL,
    step            TEXT NOT NULL,
    item            BIGINT,
    attempt         BIGINT NOT NULL,
    request_hash    TEXT,
    prompt_hash     TEXT,
    model           TEXT NOT NULL,
    provider        TEXT NOT NULL,
    provider_model  TEXT NOT NULL,
    tier            TEXT NOT NULL,
    local           BOOLEAN NOT NULL,
    started_ms      BIGINT NOT NULL,
    finished_ms     BIGINT NOT NULL,
    latency_ms      BIGINT NOT NULL,
    outcome         TEXT NOT NULL,
    error           TEXT,
    input_tokens    BIGINT NOT NULL DEFAULT 0,
    output_tokens   BIGINT NOT NULL DEFAULT 0,
    cached_tokens   BIGINT NOT NULL DEFAULT 0,
    cache_write_tokens BIGINT NOT NULL DEFAULT 0,
    reasoning_tokens BIGINT NOT NULL DEFAULT 0,
    cache_write_1h_tokens BIGINT NOT NULL DEFAULT 0,
    cost_usd        DOUBLE PRECISION NOT NULL DEFAULT 0,
    list_cost_usd   DOUBLE PRECISION NOT NULL DEFAULT 0,
    flagship_cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
    estimate_usd    DOUBLE PRECISION NOT NULL DEFAULT 0,
    saved_usd       DOUBLE PRECISION NOT NULL DEFAULT 0,
    batch           BOOLEAN NOT NULL DEFAULT FALSE,
    from_cache      BOOLEAN NOT NULL DEFAULT FALSE,
    cacheable       BOOLEAN NOT NULL DEFAULT FALSE,
    response        TEXT,
    output          TEXT,
    usage_flag      TEXT
);
CREATE INDEX calls_run ON calls(run_id, step, item);
CREATE INDEX calls_request ON calls(request_hash, finished_ms);
CREATE INDEX calls_finished ON calls(finished_ms);
-- Worst cases of calls in flight. Across machines a pid says nothing, so a
-- hold is a lease: its session renews it while it lives (`HEARTBEAT`), and
-- one not renewed by `expires_at` (database time: machines' clocks may
-- disagree) belongs to a dead runner and no longer counts.
CREATE TABLE holds (
    id              BIGSERIAL PRIMARY KEY,
    session         TEXT NOT NULL,
    amount_usd      DOUBLE PRECISION NOT NULL,
    created_ms      BIGINT NOT NULL,
    expires_at      TIMESTAMPTZ NOT NULL,
    -- On the holder's own machine its process can be checked at once, as
    -- with SQLite: a killed run's hold does not wait for its lease there.
    machine         TEXT NOT NULL DEFAULT '',
    pid             BIGINT,
    pid_start       BIGINT
);
CREATE INDEX holds_session ON holds(session);
CREATE TABLE batches (
    key             TEXT PRIMARY KEY,
    provider        TEXT NOT NULL,
    batch_id        TEXT NOT NULL,
    submitted_ms    BIGINT NOT NULL,
    finished_ms     BIGINT
);
"#,
    // 2: cascades and context management.
    r#"
-- Cascades: the rule on a first call's rows; on an `escalated` row, the
-- target; on the escalated call's rows, the model it escalated from.
ALTER TABLE calls
    ADD COLUMN cascade_rule TEXT,
    ADD COLUMN escalate_to TEXT,
    ADD COLUMN escalated_from TEXT;
-- Context management (the plan's figures): input tokens without and with
-- it, and the expected saving on the step's model.
ALTER TABLE steps
    ADD COLUMN context_tokens_before BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN context_tokens_after BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN context_saved_usd DOUBLE PRECISION NOT NULL DEFAULT 0;
"#,
    // 3: who ran it (`report --by`, per-user budgets); `machine` is there
    // since 1. "" for runs and holds written before.
    r#"
ALTER TABLE runs
    ADD COLUMN user_name TEXT NOT NULL DEFAULT '',
    ADD COLUMN ci TEXT NOT NULL DEFAULT '';
ALTER TABLE holds ADD COLUMN user_name TEXT NOT NULL DEFAULT '';
CREATE INDEX runs_user ON runs(user_name, started_ms);
-- A running run's lease, renewed by its process while it lives (as holds'
-- are): once it lapses, a run another machine started may be resumed here.
-- NULL (a run an older build started) never lapses.
ALTER TABLE runs ADD COLUMN lease_expires TIMESTAMPTZ;
"#,
    // 4: the endpoint of a pool that answered a call (`report`'s
    // endpoints); NULL for calls not made through a pool.
    r#"
ALTER TABLE calls ADD COLUMN endpoint TEXT;
"#,
];

/// How long a hold counts without being renewed: longer than any pause of
/// a live runner (its worker thread renews every [`HEARTBEAT`]), short
/// enough that a killed runner's worst cases stop blocking the team soon.
pub(super) const LEASE_SECONDS: i64 = 60;

/// How often a live session renews its holds' leases.
const HEARTBEAT: Duration = Duration::from_secs(10);

/// One advisory lock serialises every budget check-and-hold on a database
/// (and the migrations, under another key): see [`try_hold`].
const BUDGET_LOCK: i64 = 0x746f_6c6c_6761_7465; // "tollgate"
const MIGRATION_LOCK: i64 = 0x746f_6c6c_6d69_6772; // "tollmigr"
/// Serialises the syncs of spilled records (see `spill`).
pub(super) const SPILL_LOCK: i64 = 0x746f_6c6c_7370_696c; // "tollspil"

/// A `postgres://` state URL: the connection settings, and how the journal
/// is named in messages (never with its password).
#[derive(Clone)]
pub struct StateUrl {
    /// Shared: the settings are large, and copied to each journal thread.
    pub(super) config: std::sync::Arc<Config>,
    display: String,
    /// The password (as written and decoded), only to scrub it from error
    /// messages.
    secrets: Vec<String>,
    /// How long a caller waits for any one use of the database (a statement,
    /// a commit, a connection) before it gives up: the statement timeout
    /// and a grace.
    pub(super) bound: Duration,
    /// What `sslmode` and `sslrootcert` mean for this URL.
    tls: Arc<Tls>,
    /// Said once by the CLI: a remote ledger reached unverified or plain.
    warning: Option<TlsWarning>,
    /// Where call records go when the ledger cannot take them (see
    /// `spill`): a file in the state folder; `None`, nowhere (they fail).
    spill: Option<PathBuf>,
}

impl std::fmt::Debug for StateUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

impl StateUrl {
    /// Parses a `postgres://` or `postgresql://` URL; a password not in
    /// the URL is taken from `PGPASSWORD`, as libpq does.
    pub fn parse(url: &str) -> Result<StateUrl, JournalError> {
        let bad = |why: String| JournalError::StateUrl(why);
        let parsed = url::Url::parse(url).map_err(|e| {
            bad(format!(
                "TOLLGATE_STATE_URL is not a URL ({e}); expected postgres://USER@HOST/DATABASE"
            ))
        })?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(bad(format!(
                "TOLLGATE_STATE_URL has the scheme `{}`; expected postgres://USER@HOST/DATABASE",
                parsed.scheme()
            )));
        }
        let mut secrets: Vec<String> = Vec::new();
        if let Some(p) = parsed.password() {
            secrets.push(p.to_owned());
            secrets.extend(percent_decode(p));
        }
        for (k, v) in parsed.query_pairs() {
            if k == "password" {
                secrets.push(v.into_owned());
            }
        }
        // sslmode's verify-* values and sslrootcert are not the client's
        // to parse: taken out, and kept in `Tls`.
        let params = super::pg_tls::take_params(url).map_err(|e| bad(scrub(&e, &secrets)))?;
        let mut config: Config = params.url.parse().map_err(|e: postgres::Error| {
            bad(scrub(&format!("TOLLGATE_STATE_URL: {e}"), &secrets))
        })?;
        let tls = Tls::new(&params, &config).map_err(|e| bad(scrub(&e, &secrets)))?;
        config.ssl_mode(tls.client_mode(&config));
        if config.get_password().is_none() {
            if let Some(p) = std::env::var_os("PGPASSWORD").filter(|p| !p.is_empty()) {
                let p = p.to_string_lossy().into_owned();
                config.password(p.as_bytes());
                secrets.push(p);
            }
        }
        // A host that drops packets would otherwise hold every command
        // (`plan` included, which reads budgets and escalation history) for
        // the system's TCP timeout, minutes: the URL's `connect_timeout`
        // wins when given.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        // Every statement bounded on the server, unless the URL chose its
        // own bound; callers wait that long and a grace at most (see
        // `Worker::call`), since a hung server enforces nothing.
        let statement = match config.get_options().and_then(statement_timeout_in) {
            Some(Some(d)) => d,
            Some(None) => {
                return Err(bad(
                    "TOLLGATE_STATE_URL: statement_timeout in options is not a duration (milliseconds, or 2s, 1min)"
                        .to_owned(),
                ));
            }
            None => {
                let options = format!(
                    "{} -c statement_timeout={}",
                    config.get_options().unwrap_or_default(),
                    STATEMENT_TIMEOUT.as_millis()
                );
                config.options(options.trim());
                STATEMENT_TIMEOUT
            }
        };
        // A network that drops packets: unacknowledged data fails the
        // connection instead of waiting for the system's retransmissions.
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(statement + GRACE);
        }
        let bound = if statement.is_zero() {
            // 0 turns the server's bound off; the caller's stays.
            STATEMENT_TIMEOUT + GRACE
        } else {
            statement + GRACE
        };
        // Shown without password and parameters (which may hold one).
        let mut shown = parsed.clone();
        let _ = shown.set_password(None);
        shown.set_query(None);
        shown.set_fragment(None);
        let warning = tls.warning(parsed.host_str().unwrap_or("its host"));
        Ok(StateUrl {
            config: std::sync::Arc::new(config),
            display: shown.to_string(),
            secrets,
            bound,
            tls: Arc::new(tls),
            warning,
            spill: None,
        })
    }

    /// This URL with its spill file in the state folder `dir`.
    pub fn with_spill_dir(mut self, dir: &std::path::Path) -> StateUrl {
        self.spill = Some(super::spill::path_for(dir, &self.display));
        self
    }

    /// The spill file of this ledger, if it has one.
    pub fn spill_path(&self) -> Option<&std::path::Path> {
        self.spill.as_deref()
    }

    /// The error of a caller that waited [`StateUrl::bound`] in vain.
    pub(super) fn timed_out(&self) -> JournalError {
        JournalError::LedgerTimeout {
            url: self.display.clone(),
            secs: self.bound.as_secs_f64(),
        }
    }

    /// The URL as it may be shown.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// Why this connection could be read or impersonated on the network
    /// (a remote host with `sslmode` below verification), for the CLI to
    /// say once; `None` when it cannot.
    pub fn warning(&self) -> Option<&TlsWarning> {
        self.warning.as_ref()
    }

    /// The `sslmode` in force (the URL's, `PGSSLMODE`, or the default).
    pub fn sslmode(&self) -> &'static str {
        self.tls.mode.as_str()
    }

    pub(super) fn scrub(&self, text: &str) -> String {
        scrub(text, &self.secrets)
    }

    /// Connects (on the calling thread, which must not be a tokio worker).
    fn connect(&self) -> Result<PgConn, JournalError> {
        let failed = |message: String| JournalError::PgOpen {
            url: self.display.clone(),
            message: self.scrub(&message),
        };
        let tls = self.tls.connector().map_err(failed)?;
        let client = self.config.connect(tls).map_err(|e| {
            failed(match self.tls.hint(&e) {
                Some(hint) => format!("{} ({hint})", message(&e)),
                None => message(&e),
            })
        })?;
        Ok(PgConn {
            client,
            statements: HashMap::new(),
            url: self.clone(),
        })
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `text` with every occurrence of the password masked.
fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_owned();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(s.as_str(), "***");
    }
    out
}

/// What a PostgreSQL error says, the server's own message included (the
/// client's `Display` says only "db error").
fn message(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut m = format!("{}: {}", db.severity(), db.message());
        if let Some(d) = db.detail() {
            m.push_str(&format!(" ({d})"));
        }
        return m;
    }
    let mut m = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        m.push_str(&format!(": {s}"));
        source = s.source();
    }
    m
}

/// One connection and its prepared statements (a statement is prepared
/// once per connection: the hot path pays one round trip per call, not two).
pub(super) struct PgConn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
    url: StateUrl,
}

impl PgConn {
    pub(super) fn err(&self, e: postgres::Error) -> JournalError {
        JournalError::Pg(self.url.scrub(&message(&e)))
    }

    fn statement(&mut self, sql: &'static str) -> Result<Statement, JournalError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql).map_err(|e| self.err(e))?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }

    pub(super) fn execute(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, JournalError> {
        let s = self.statement(sql)?;
        self.client.execute(&s, params).map_err(|e| self.err(e))
    }

    pub(super) fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, JournalError> {
        let s = self.statement(sql)?;
        self.client.query(&s, params).map_err(|e| self.err(e))
    }

    pub(super) fn query_opt(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, JournalError> {
        let s = self.statement(sql)?;
        self.client.query_opt(&s, params).map_err(|e| self.err(e))
    }

    pub(super) fn query_one(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, JournalError> {
        let s = self.statement(sql)?;
        self.client.query_one(&s, params).map_err(|e| self.err(e))
    }

    pub(super) fn batch(&mut self, sql: &str) -> Result<(), JournalError> {
        self.client.batch_execute(sql).map_err(|e| self.err(e))
    }

    /// Whether the connection is gone (the server closed it, or the
    /// network failed).
    pub(super) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// A lost connection is made again before the next use (the server
    /// restarted, a network blip); until it is back every use fails —
    /// budgets fail closed.
    pub(super) fn reconnect_if_closed(&mut self) {
        if self.client.is_closed() {
            if let Ok(fresh) = self.url.connect() {
                *self = fresh;
            }
        }
    }
}

/// Reads a column, as the journal's error.
pub(super) fn get<'a, T: postgres::types::FromSql<'a>>(
    row: &'a Row,
    i: usize,
) -> Result<T, JournalError> {
    row.try_get(i)
        .map_err(|e| JournalError::Pg(format!("reading column {i}: {}", message(&e))))
}

/// Opens a connection on a new thread and migrates the database: what the
/// writer thread owns. Called on the thread that will own it.
pub(super) fn connect_migrated(url: &StateUrl) -> Result<PgConn, JournalError> {
    let mut conn = url.connect()?;
    migrate(&mut conn)?;
    Ok(conn)
}

/// Brings the database to [`SCHEMA_VERSION`] under an advisory lock (a
/// team's runners may open a fresh database at once), or refuses one a
/// newer tollgate wrote.
pub(super) fn migrate(conn: &mut PgConn) -> Result<(), JournalError> {
    conn.batch("BEGIN")?;
    let result = (|| {
        conn.batch(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))?;
        conn.batch("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")?;
        let found: Option<i64> =
            match conn.query_opt("SELECT MAX(version) FROM schema_version", &[])? {
                Some(r) => get(&r, 0)?,
                None => None,
            };
        let found = found.unwrap_or(0);
        if found > SCHEMA_VERSION {
            return Err(JournalError::NewerSchema {
                path: PathBuf::from(conn.url.display()),
                found,
                known: SCHEMA_VERSION,
            });
        }
        for (v, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            conn.batch(sql)?;
            conn.batch(&format!(
                "INSERT INTO schema_version (version) VALUES ({})",
                v + 1
            ))?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => conn.batch("COMMIT"),
        Err(e) => {
            let _ = conn.batch("ROLLBACK");
            Err(e)
        }
    }
}

type Job = Box<dyn FnOnce(&mut PgConn) + Send>;

/// Since when the connection's thread has been busy with one use (`None`:
/// idle): a caller finding it stuck past the bound gives up at once
/// instead of queueing behind a server that does not answer.
pub(super) type Busy = Arc<Mutex<Option<Instant>>>;

/// A thread that owns one connection and runs what it is sent, in order;
/// between jobs it renews its session's hold leases.
pub(super) struct Worker {
    tx: Option<Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    busy: Busy,
    /// Signalled when the thread ends (dropping waits for it, bounded).
    done: Mutex<Receiver<()>>,
    url: StateUrl,
}

/// Waits for a thread's readiness at most the connection's bounds: a server
/// that accepts and never answers holds the handshake, which the client's
/// `connect_timeout` (a socket-level bound) does not cover.
pub(super) fn wait_ready(
    url: &StateUrl,
    ready: &Receiver<Result<(), JournalError>>,
) -> Result<(), JournalError> {
    let connect = url
        .config
        .get_connect_timeout()
        .copied()
        .unwrap_or(CONNECT_TIMEOUT);
    match ready.recv_timeout(connect + url.bound) {
        Ok(r) => r,
        Err(RecvTimeoutError::Timeout) => Err(JournalError::PgOpen {
            url: url.display.clone(),
            message: format!(
                "no answer within {}s (the database may be hung or unreachable)",
                (connect + url.bound).as_secs_f64()
            ),
        }),
        Err(RecvTimeoutError::Disconnected) => Err(JournalError::WriterStopped),
    }
}

impl Worker {
    /// Connects (and migrates) on the new thread; `session`'s holds are
    /// renewed every [`HEARTBEAT`] while the worker lives.
    pub(super) fn start(
        url: &StateUrl,
        session: String,
        machine: String,
    ) -> Result<Worker, JournalError> {
        let (tx, rx) = channel::<Job>();
        let (ready_tx, ready_rx) = sync_channel(1);
        let (done_tx, done) = sync_channel(1);
        let busy: Busy = Arc::default();
        let thread_url = url.clone();
        let thread_busy = Arc::clone(&busy);
        let thread = std::thread::Builder::new()
            .name("tollgate-journal-pg".into())
            .spawn(move || {
                match connect_migrated(&thread_url) {
                    Ok(conn) => {
                        let _ = ready_tx.send(Ok(()));
                        serve(conn, rx, &session, &machine, &thread_busy);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
                let _ = done_tx.send(());
            })
            .map_err(JournalError::WriterStart)?;
        wait_ready(url, &ready_rx)?;
        Ok(Worker {
            tx: Some(tx),
            thread: Some(thread),
            busy,
            done: Mutex::new(done),
            url: url.clone(),
        })
    }

    /// Runs `job` on the worker's connection and waits for its answer — at
    /// most the URL's bound: a server that stopped answering fails the
    /// call (budgets then refuse paid calls) instead of holding it.
    pub(super) fn call<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut PgConn) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, JournalError> {
        if stuck(&self.busy, self.url.bound) {
            return Err(self.url.timed_out());
        }
        let (tx, rx) = sync_channel(1);
        let sender = self.tx.as_ref().ok_or(JournalError::WriterStopped)?;
        // A job whose caller gave up is not run late (a hold nobody
        // waits for would only block others).
        let deadline = Instant::now() + self.url.bound;
        sender
            .send(Box::new(move |c: &mut PgConn| {
                if Instant::now() < deadline {
                    let _ = tx.send(job(c));
                }
            }))
            .map_err(|_| JournalError::WriterStopped)?;
        match rx.recv_timeout(self.url.bound) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => Err(self.url.timed_out()),
            Err(RecvTimeoutError::Disconnected) => Err(JournalError::WriterStopped),
        }
    }
}

/// Whether the connection's thread has been in one use longer than `bound`.
pub(super) fn stuck(busy: &Busy, bound: Duration) -> bool {
    busy.lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_some_and(|since| since.elapsed() >= bound)
}

/// Runs `f` with `busy` marking the connection in use.
pub(super) fn busy_with<T>(busy: &Busy, f: impl FnOnce() -> T) -> T {
    *busy.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    let out = f();
    *busy.lock().unwrap_or_else(|e| e.into_inner()) = None;
    out
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.tx.take();
        // A thread stuck on a server that does not answer is left behind
        // (the process exiting ends it): exiting must not hang on it.
        let done = self.done.get_mut().unwrap_or_else(|e| e.into_inner());
        if done.recv_timeout(self.url.bound).is_ok() {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
}

fn serve(mut conn: PgConn, rx: Receiver<Job>, session: &str, machine: &str, busy: &Busy) {
    let mut next_beat = Instant::now() + HEARTBEAT;
    loop {
        let wait = next_beat.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(job) => busy_with(busy, || {
                conn.reconnect_if_closed();
                job(&mut conn);
            }),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if Instant::now() >= next_beat {
            busy_with(busy, || {
                conn.reconnect_if_closed();
                // A failed renewal is retried at the next beat; a lease
                // lapsing meanwhile only lets others spend what this call
                // may still cost — the same as a runner that died.
                let _ = renew_holds(&mut conn, session);
                let _ = renew_runs(&mut conn, machine);
            });
            next_beat = Instant::now() + HEARTBEAT;
        }
    }
    // Holds of a session that ends are ended with it (its calls settled or
    // failed: each was released, or the lease lapses).
    let _ = conn.execute("DELETE FROM holds WHERE session = $1", &[&session]);
}

/// Renews the leases of the runs this process is running.
fn renew_runs(conn: &mut PgConn, machine: &str) -> Result<u64, JournalError> {
    conn.execute(
        "UPDATE runs SET lease_expires = clock_timestamp() + make_interval(secs => $4)
         WHERE status = 'running' AND machine = $1 AND pid = $2
           AND pid_start IS NOT DISTINCT FROM $3",
        &[
            &machine,
            &i64::from(std::process::id()),
            &crate::process::own_start(),
            &(LEASE_SECONDS as f64),
        ],
    )
}

fn renew_holds(conn: &mut PgConn, session: &str) -> Result<u64, JournalError> {
    conn.execute(
        "UPDATE holds SET expires_at = clock_timestamp() + make_interval(secs => $2)
         WHERE session = $1",
        &[&session, &(LEASE_SECONDS as f64)],
    )
}

/// The check and the hold of a call's worst case, in one transaction that
/// no other check-and-hold on the database can interleave with.
///
/// Why an advisory lock rather than SERIALIZABLE: a serializable check
/// would conflict with every concurrent call record (the check reads the
/// sum of `calls`), so it would fail with serialization errors under load
/// and need a retry loop, and it would protect nothing unless every writer
/// ran serializable too. `pg_advisory_xact_lock` makes the checks queue one
/// behind another for the few milliseconds each takes, is released by the
/// commit or by the connection's death, and leaves the writers' group
/// commits alone: they only insert calls and delete holds, and the check
/// reads holds before calls (under READ COMMITTED each statement sees what
/// was committed when it began), so a call that settled between the two
/// reads is counted twice for a moment, never not at all.
pub(super) fn try_hold(
    conn: &mut PgConn,
    session: &str,
    who: &super::who::Who,
    now: i64,
    amount: f64,
    checks: &[super::SpendCheck],
) -> Result<Result<i64, (usize, f64, f64)>, JournalError> {
    conn.batch("BEGIN")?;
    let result = (|| {
        conn.query_one("SELECT pg_advisory_xact_lock($1)", &[&BUDGET_LOCK])?;
        // Holds of dead runners: leases nobody renewed.
        conn.execute(
            "DELETE FROM holds WHERE expires_at < clock_timestamp()",
            &[],
        )?;
        let (mut in_flight, mut users_in_flight) = (0.0, 0.0);
        for row in conn.query(
            "SELECT id, amount_usd, machine, pid, pid_start, user_name FROM holds WHERE session != $1",
            &[&session],
        )? {
            let (id, amount, on, pid, start, user): (
                i64,
                f64,
                String,
                Option<i64>,
                Option<i64>,
                String,
            ) = (
                get(&row, 0)?,
                get(&row, 1)?,
                get(&row, 2)?,
                get(&row, 3)?,
                get(&row, 4)?,
                get(&row, 5)?,
            );
            let dead_here = on == who.machine
                && pid.is_some_and(|p| !crate::process::process_alive_since(p as u32, start));
            if dead_here {
                // Left by a process of this machine that died mid-call.
                conn.execute("DELETE FROM holds WHERE id = $1", &[&id])?;
            } else {
                in_flight += amount;
                if user == who.user {
                    users_in_flight += amount;
                }
            }
        }
        for (index, check) in checks.iter().enumerate() {
            let (spent, held): (f64, f64) = if check.user {
                let row = conn.query_one(
                    "SELECT COALESCE(SUM(GREATEST(c.cost_usd, 0)), 0) FROM calls c
                     JOIN runs r ON r.id = c.run_id
                     WHERE c.finished_ms >= $1 AND c.session != $2 AND r.user_name = $3",
                    &[&check.since, &session, &who.user],
                )?;
                (get(&row, 0)?, users_in_flight)
            } else {
                let row = conn.query_one(
                    "SELECT COALESCE(SUM(GREATEST(cost_usd, 0)), 0) FROM calls
                     WHERE finished_ms >= $1 AND session != $2",
                    &[&check.since, &session],
                )?;
                (get(&row, 0)?, in_flight)
            };
            if spent + held + check.local + amount > check.limit + 1e-12 {
                return Ok(Err((index, spent, held)));
            }
        }
        let row = conn.query_one(
            "INSERT INTO holds (session, amount_usd, created_ms, expires_at, machine, pid, pid_start,
                user_name)
             VALUES ($1, $2, $3, clock_timestamp() + make_interval(secs => $4), $5, $6, $7, $8)
             RETURNING id",
            &[
                &session,
                &amount,
                &now,
                &(LEASE_SECONDS as f64),
                &who.machine,
                &i64::from(std::process::id()),
                &crate::process::own_start(),
                &who.user,
            ],
        )?;
        Ok(Ok(get(&row, 0)?))
    })();
    match result {
        Ok(r) => {
            conn.batch("COMMIT")?;
            Ok(r)
        }
        Err(e) => {
            let _ = conn.batch("ROLLBACK");
            Err(e)
        }
    }
}

/// A fresh database per test on the server `TOLLGATE_TEST_PG_URL` names
/// (`.ci/run` starts one), dropped when the test ends.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use postgres::NoTls;

    pub(crate) struct TestDb {
        admin: String,
        name: String,
        pub(crate) url: StateUrl,
    }

    /// The test server, or `None` (with a message) when there is none —
    /// except under CI, which must provide one.
    pub(crate) fn server() -> Option<String> {
        match std::env::var("TOLLGATE_TEST_PG_URL") {
            Ok(u) if !u.is_empty() => Some(u),
            _ => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "CI must start PostgreSQL and set TOLLGATE_TEST_PG_URL (see .ci/run)"
                );
                eprintln!("skipped the PostgreSQL half: TOLLGATE_TEST_PG_URL is not set");
                None
            }
        }
    }

    /// Runs `f` on a thread of its own: the client must not run on a tokio
    /// worker, and tests may be async.
    fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(f).join().expect("the admin thread")
    }

    impl TestDb {
        pub(crate) fn create() -> Option<TestDb> {
            let admin = server()?;
            let name = format!("tollgate_test_{:016x}", fastrand::u64(..));
            let (a, n) = (admin.clone(), name.clone());
            off_runtime(move || {
                let mut c = Client::connect(&a, NoTls).expect("the test server");
                c.batch_execute(&format!("CREATE DATABASE {n}")).unwrap();
            });
            let mut url = url::Url::parse(&admin).unwrap();
            url.set_path(&format!("/{name}"));
            Some(TestDb {
                admin,
                name,
                url: StateUrl::parse(url.as_str()).unwrap(),
            })
        }

        /// This database's URL (the test role's password in it) with
        /// another host and more parameters.
        pub(crate) fn url_with(&self, host: &str, query: &str) -> String {
            let mut url = url::Url::parse(&self.admin).unwrap();
            url.set_path(&format!("/{}", self.name));
            url.set_host(Some(host)).unwrap();
            let q: Vec<&str> = [url.query().unwrap_or(""), query]
                .into_iter()
                .filter(|q| !q.is_empty())
                .collect();
            let q = q.join("&");
            url.set_query((!q.is_empty()).then_some(q.as_str()));
            url.to_string()
        }

        /// The server's certificate file when it has TLS on (`None`, said,
        /// when it has not — except under CI, whose server must:
        /// `scripts/setup-postgres.sh` turns it on).
        pub(crate) fn server_cert(&self) -> Option<PathBuf> {
            let admin = self.admin.clone();
            let (ssl, file) = off_runtime(move || {
                let mut c = Client::connect(&admin, NoTls).expect("the test server");
                let show = |c: &mut Client, what: &str| -> String {
                    c.query_one(&format!("SHOW {what}"), &[]).unwrap().get(0)
                };
                (show(&mut c, "ssl"), show(&mut c, "ssl_cert_file"))
            });
            let file = PathBuf::from(file);
            if ssl == "on" && file.is_absolute() && file.is_file() {
                return Some(file);
            }
            assert!(
                std::env::var_os("CI").is_none(),
                "CI's PostgreSQL must have ssl = on with a readable certificate (scripts/setup-postgres.sh)"
            );
            eprintln!(
                "skipped the TLS checks: the test server has ssl = {ssl} ({})",
                file.display()
            );
            None
        }

        /// The client certificates `scripts/setup-postgres.sh` leaves for
        /// the role `tollgate_cert` (`ca.crt`, `client.crt`, `client.key`,
        /// and `rogue.*` signed by another CA), in
        /// `TOLLGATE_TEST_PG_CLIENT_DIR` or its default; `None`, said, when
        /// they are absent — except under CI, which runs the script.
        pub(crate) fn client_certs() -> Option<PathBuf> {
            let dir = std::env::var_os("TOLLGATE_TEST_PG_CLIENT_DIR")
                .filter(|d| !d.is_empty())
                .map_or_else(
                    || PathBuf::from("/var/lib/tollgate-test/pg-client"),
                    PathBuf::from,
                );
            if ["client.crt", "client.key", "rogue.crt", "rogue.key"]
                .iter()
                .all(|f| dir.join(f).is_file())
            {
                return Some(dir);
            }
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run scripts/setup-postgres.sh, which leaves client certificates in {}",
                dir.display()
            );
            eprintln!(
                "skipped the client certificate checks: no certificates in {} (run scripts/setup-postgres.sh)",
                dir.display()
            );
            None
        }

        /// This database's URL for the role `tollgate_cert` (no password)
        /// at `localhost`, with more parameters.
        pub(crate) fn cert_url(&self, query: &str) -> String {
            let mut url = url::Url::parse(&self.url_with("localhost", query)).unwrap();
            url.set_username("tollgate_cert").unwrap();
            url.set_password(None).unwrap();
            url.to_string()
        }

        /// Runs SQL on the test database directly (what another build or a
        /// crashed runner left).
        pub(crate) fn exec(&self, sql: &str) {
            let (u, sql) = (self.url.clone(), sql.to_owned());
            off_runtime(move || {
                let mut c = u.config.connect(NoTls).unwrap();
                c.batch_execute(&sql).unwrap();
            });
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the connection `url` opens is encrypted, as the server sees
    /// it (`pg_stat_ssl`).
    fn encrypted(url: &str) -> Result<bool, JournalError> {
        let url = StateUrl::parse(url)?;
        std::thread::spawn(move || {
            let mut c = url.connect()?;
            let row = c.query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )?;
            get::<bool>(&row, 0)
        })
        .join()
        .expect("the connecting thread")
    }

    /// libpq's modes against the real server (ssl = on, Debian's snakeoil
    /// certificate for `localhost`): `require` and the default on loopback
    /// encrypt, `disable` does not, `verify-full` takes the server's
    /// certificate as root and the name it holds; a name it does not hold
    /// is refused by `verify-full` and accepted by `verify-ca`; a root that
    /// did not sign it is refused even by `require` (libpq checks the chain
    /// once a root is given). Errors say why, never the password.
    #[test]
    fn sslmodes_against_the_real_server() {
        let Some(db) = testing::TestDb::create() else {
            return;
        };
        let Some(cert) = db.server_cert() else {
            return;
        };
        let cert = cert.display();
        let local = |q: &str| encrypted(&db.url_with("127.0.0.1", q));
        assert!(local("sslmode=require").unwrap());
        assert!(!local("sslmode=disable").unwrap());
        assert!(local("").unwrap(), "prefer: TLS when the server offers it");
        let full = format!("sslmode=verify-full&sslrootcert={cert}");
        assert!(encrypted(&db.url_with("localhost", &full)).unwrap());
        // `system` roots are this machine's, which may or may not hold the
        // snakeoil certificate: the CLI test pins them (SSL_CERT_FILE).
        let password = url::Url::parse(&db.url_with("localhost", ""))
            .unwrap()
            .password()
            .map(str::to_owned)
            .filter(|p| !p.is_empty());
        let refused = |url: String| {
            let e = encrypted(&url).unwrap_err().to_string();
            if let Some(p) = &password {
                assert!(!e.contains(p.as_str()), "{e}");
            }
            e
        };
        let e = refused(db.url_with("127.0.0.1", &full));
        assert!(
            e.contains("sslmode=verify-full: the server's certificate does not name the host"),
            "{e}"
        );
        assert!(local(&format!("sslmode=verify-ca&sslrootcert={cert}")).unwrap());
        let other = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tls/other-ca.pem");
        let e = refused(db.url_with("127.0.0.1", &format!("sslmode=require&sslrootcert={other}")));
        assert!(
            e.contains("invalid peer certificate")
                && e.contains(&format!(
                    "sslmode=require: the server's certificate is not signed by the CA in sslrootcert {other}"
                )),
            "{e}"
        );
    }

    /// The whole journal (writer and worker, migrations, a budget hold)
    /// over a verified connection.
    #[test]
    fn the_journal_works_over_verified_tls() {
        let Some(db) = testing::TestDb::create() else {
            return;
        };
        let Some(cert) = db.server_cert() else {
            return;
        };
        let url = StateUrl::parse(&db.url_with(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={}", cert.display()),
        ))
        .unwrap();
        assert_eq!(url.sslmode(), "verify-full");
        let j =
            super::super::Journal::open_postgres(&url, super::super::Clock::Fixed(1_000)).unwrap();
        let hold = j.try_hold(0.5, &[]).unwrap().unwrap();
        // The writer's connection too.
        j.release_hold(hold).unwrap();
        j.flush_blocking().unwrap();
    }

    /// Client certificates against the real server: the role
    /// `tollgate_cert` may log in only with a certificate the server's CA
    /// signed (`hostssl … cert`). With it the whole journal works, no
    /// password anywhere; with another CA's certificate, or none, the
    /// connection is refused with what to do, and no message holds the key.
    #[test]
    fn a_client_certificate_logs_in_and_a_wrong_or_missing_one_is_refused_saying_why() {
        let Some(db) = testing::TestDb::create() else {
            return;
        };
        let Some(server_cert) = db.server_cert() else {
            return;
        };
        let Some(dir) = testing::TestDb::client_certs() else {
            return;
        };
        db.exec("GRANT CREATE, USAGE ON SCHEMA public TO tollgate_cert");
        let verified = format!("sslmode=verify-full&sslrootcert={}", server_cert.display());
        let with = |name: &str| {
            format!(
                "{verified}&sslcert={}&sslkey={}",
                dir.join(format!("{name}.crt")).display(),
                dir.join(format!("{name}.key")).display()
            )
        };
        let url = StateUrl::parse(&db.cert_url(&with("client"))).unwrap();
        assert!(url.config.get_password().is_none());
        let j =
            super::super::Journal::open_postgres(&url, super::super::Clock::Fixed(1_000)).unwrap();
        let hold = j.try_hold(0.5, &[]).unwrap().unwrap();
        j.release_hold(hold).unwrap();
        j.flush_blocking().unwrap();
        drop(j);

        // No line of either key file is ever in a message.
        let key_lines: Vec<String> = ["client.key", "rogue.key"]
            .iter()
            .flat_map(|f| {
                std::fs::read_to_string(dir.join(f))
                    .unwrap_or_default()
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let refused = |query: &str| {
            let e = encrypted(&db.cert_url(query)).unwrap_err().to_string();
            assert!(!key_lines.iter().any(|l| e.contains(l.as_str())), "{e}");
            e
        };
        let e = refused(&with("rogue"));
        assert!(
            e.contains(&format!(
                "the server refused the client certificate in sslcert {}",
                dir.join("rogue.crt").display()
            )),
            "{e}"
        );
        let e = refused(&verified);
        assert!(e.contains("requires a valid client certificate"), "{e}");
        assert!(e.contains("give sslcert=PATH and sslkey=PATH"), "{e}");
    }

    /// Every statement is bounded on the server: the URL's own
    /// `statement_timeout` wins, else the default is added to its options;
    /// callers wait that and a grace. A bound that is not a duration is
    /// refused.
    #[test]
    fn every_statement_is_bounded() {
        let url = StateUrl::parse("postgres://u@h/db").unwrap();
        assert_eq!(url.config.get_options(), Some("-c statement_timeout=10000"));
        assert_eq!(url.bound, STATEMENT_TIMEOUT + GRACE);
        let url = StateUrl::parse("postgres://u@h/db?options=-c%20statement_timeout%3D2s").unwrap();
        assert_eq!(url.config.get_options(), Some("-c statement_timeout=2s"));
        assert_eq!(url.bound, Duration::from_secs(2) + GRACE);
        let url = StateUrl::parse(
            "postgres://u@h/db?options=-c%20search_path%3Dx%20-c%20statement_timeout%3D750",
        )
        .unwrap();
        assert_eq!(url.bound, Duration::from_millis(750) + GRACE);
        assert!(
            StateUrl::parse("postgres://u@h/db?options=-c%20statement_timeout%3Dsoon").is_err()
        );
        assert_eq!(parse_pg_duration("1min"), Some(Duration::from_secs(60)));
    }
}
