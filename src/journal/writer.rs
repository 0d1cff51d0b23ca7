//! Group commit: one thread owns the journal's write connection, takes the
//! writes queued by every caller and commits everything queued in one
//! transaction — one fsync for a group instead of one per write.
//!
//! There is no timer: the thread sleeps until a write arrives and commits
//! at once, so a lone write waits for nothing but its own fsync; writes that
//! arrive while an fsync runs queue up and go together in the next
//! transaction. Each write runs inside its own savepoint, so a write that
//! fails (a constraint) is undone alone and only its sender hears of it; a
//! commit that fails (disk full) fails every write of the group. Writes go
//! out in the order they were queued, so a write queued after another is
//! never durable before it.
//!
//! A sender learns the outcome through its acknowledgement: awaited
//! (`oneshot`), waited for by a synchronous caller (a `sync_channel`, which
//! unlike tokio's blocking receive may be used anywhere), or none — a
//! queued write whose failure is kept for the next [`Writer::flush`]. Call
//! records hold a permit of a bounded semaphore until they are committed:
//! a writer that falls behind slows its senders instead of queueing without
//! limit. Nothing panics and nothing hangs when the thread is gone: senders
//! get [`JournalError::WriterStopped`].
//!
//! On PostgreSQL, a group lost with the connection has its call records
//! written to the ledger's spill file (`journal::spill`) and acknowledged
//! from there: an outage — even one that lasts until the process exits, or
//! a kill during it — loses no paid answer. The thread sends the spill as
//! soon as the connection is back, before any newer write.

use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::JournalError;
use super::pg::PgConn;

/// Call records queued and not yet committed, at most: enough to keep the
/// disk busy with large groups, small enough to bound memory (a record
/// holds one answer, itself bounded by the provider's response limits).
const QUEUE_RECORDS: usize = 1024;

/// Writes committed in one transaction, at most: a group's commit stays
/// short, and acknowledgements start flowing while more arrive.
const MAX_GROUP: usize = 512;

/// One write: runs on the writer's connection inside the group's
/// transaction.
pub(super) type WriteFn = Box<dyn FnOnce(Tx<'_>) -> Result<(), JournalError> + Send>;

/// A call record's write: run again on the spill file if its group is lost
/// with the connection to PostgreSQL (see [`Spill`]).
pub(super) type RecordFn = Box<dyn FnMut(Tx<'_>) -> Result<(), JournalError> + Send>;

/// What a write runs.
enum Body {
    /// Once (taken when it runs).
    Once(Option<WriteFn>),
    /// A call record: a group lost with the connection writes it to the
    /// spill file instead, from where it is sent once the database is back
    /// — a paid answer is never dropped for an outage (the budget checks,
    /// failing meanwhile, refuse new paid calls).
    Again(RecordFn),
}

impl Body {
    /// Runs the write; `None` when there was nothing left to run.
    fn run(&mut self, tx: Tx<'_>) -> Option<Result<(), JournalError>> {
        match self {
            Body::Once(w) => w.take().map(|w| w(tx)),
            Body::Again(f) => Some(f(tx)),
        }
    }
}

/// How often a writer that lost its PostgreSQL connection tries again
/// while call records it spilled are not in the ledger yet.
const RETRY: std::time::Duration = std::time::Duration::from_millis(250);

/// The writer's connection inside a group's transaction, as a write sees
/// it: each write speaks its backend's SQL.
pub(super) enum Tx<'a> {
    Lite(&'a Connection),
    Pg(&'a mut PgConn),
}

/// Who hears how a write ended.
enum Ack {
    /// Nobody now: a failure is kept for the next flush.
    Queued,
    Async(oneshot::Sender<Result<(), JournalError>>),
    Sync(SyncSender<Result<(), JournalError>>),
}

impl Ack {
    fn send(self, result: Result<(), JournalError>, failed: &mut Option<JournalError>) {
        match self {
            Ack::Queued => {
                if let Err(e) = result {
                    failed.get_or_insert(e);
                }
            }
            Ack::Async(tx) => {
                let _ = tx.send(result);
            }
            Ack::Sync(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}

enum Op {
    Write {
        write: Body,
        ack: Ack,
        /// Released once the write is committed (or failed).
        _permit: Option<OwnedSemaphorePermit>,
    },
    /// Acknowledged once every write queued before it is committed, with
    /// the first failure of a queued write since the last flush.
    Flush(Ack),
}

/// The connection the writer commits on: its own (a journal on disk), or
/// the journal's one connection (in memory, where a second connection would
/// open a second, empty database), or a PostgreSQL connection (made on the
/// writer's thread: the client must never run on a tokio worker).
pub(super) enum WriteConn {
    Own(Connection),
    Shared(Arc<Mutex<Connection>>),
    Pg(super::pg::StateUrl),
}

/// The sending side; the thread stops when it is dropped (after committing
/// what was queued), and dropping waits for it.
pub(super) struct Writer {
    tx: Option<mpsc::UnboundedSender<Op>>,
    slots: Arc<Semaphore>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// PostgreSQL: how long a sender waits for its acknowledgement (see
    /// `StateUrl::bound`). A write whose sender gave up stays queued and is
    /// committed once the database answers again; SQLite waits as long as
    /// its disk takes.
    bound: Option<super::pg::StateUrl>,
    /// Signalled when the thread ends.
    done: Mutex<std::sync::mpsc::Receiver<()>>,
}

impl Writer {
    pub(super) fn start(conn: WriteConn) -> Result<Writer, JournalError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = sync_channel(1);
        let (done_tx, done) = sync_channel(1);
        let bound = match &conn {
            WriteConn::Pg(url) => Some(url.clone()),
            _ => None,
        };
        // How long a closing writer keeps trying to write records its lost
        // connection holds (the journal's drop waits as long).
        let give_up = bound
            .as_ref()
            .map_or(std::time::Duration::ZERO, |u| u.bound);
        let spill_path = bound
            .as_ref()
            .and_then(|u| u.spill_path().map(std::path::Path::to_path_buf));
        let thread = std::thread::Builder::new()
            .name("tollgate-journal".into())
            .spawn(move || {
                let conn = match conn {
                    WriteConn::Pg(url) => match super::pg::connect_migrated(&url) {
                        Ok(c) => Conn::Pg(Box::new(c)),
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            let _ = done_tx.send(());
                            return;
                        }
                    },
                    WriteConn::Own(c) => Conn::Own(c),
                    WriteConn::Shared(c) => Conn::Shared(c),
                };
                let _ = ready_tx.send(Ok(()));
                run(conn, rx, give_up, Spill::new(spill_path));
                let _ = done_tx.send(());
            })
            .map_err(JournalError::WriterStart)?;
        match &bound {
            Some(url) => super::pg::wait_ready(url, &ready_rx)?,
            None => ready_rx
                .recv()
                .unwrap_or(Err(JournalError::WriterStopped))?,
        }
        Ok(Writer {
            tx: Some(tx),
            slots: Arc::new(Semaphore::new(QUEUE_RECORDS)),
            thread: Some(thread),
            bound,
            done: Mutex::new(done),
        })
    }

    /// Waits for a synchronous acknowledgement, at most the bound.
    fn wait_sync(
        &self,
        rx: &std::sync::mpsc::Receiver<Result<(), JournalError>>,
    ) -> Result<(), JournalError> {
        match &self.bound {
            None => rx.recv().unwrap_or(Err(JournalError::WriterStopped)),
            Some(url) => match rx.recv_timeout(url.bound) {
                Ok(r) => r,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(url.timed_out()),
                Err(_) => Err(JournalError::WriterStopped),
            },
        }
    }

    /// Awaits `f`, at most the bound.
    async fn within<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, JournalError>>,
    ) -> Result<T, JournalError> {
        match &self.bound {
            None => f.await,
            Some(url) => tokio::time::timeout(url.bound, f)
                .await
                .unwrap_or_else(|_| Err(url.timed_out())),
        }
    }

    fn send(&self, op: Op) -> Result<(), JournalError> {
        let tx = self.tx.as_ref().ok_or(JournalError::WriterStopped)?;
        tx.send(op).map_err(|_| JournalError::WriterStopped)
    }

    /// Queues a write and waits (blocking this thread) until it is
    /// committed.
    pub(super) fn write_sync(&self, write: WriteFn) -> Result<(), JournalError> {
        let (tx, rx) = sync_channel(1);
        self.send(Op::Write {
            write: Body::Once(Some(write)),
            ack: Ack::Sync(tx),
            _permit: None,
        })?;
        self.wait_sync(&rx)
    }

    /// Queues a write without waiting; its failure is reported by the next
    /// [`Writer::flush`]. Unbounded: for the few writes made from code that
    /// cannot wait (a step's status, a hold's release), each following
    /// bounded writes.
    pub(super) fn write_queued(&self, write: WriteFn) -> Result<(), JournalError> {
        self.send(Op::Write {
            write: Body::Once(Some(write)),
            ack: Ack::Queued,
            _permit: None,
        })
    }

    /// Queues a call record, waiting for room in the queue; when `durable`,
    /// waits until it is committed too, else its failure is reported by the
    /// next [`Writer::flush`].
    pub(super) async fn write_record(
        &self,
        write: RecordFn,
        durable: bool,
    ) -> Result<(), JournalError> {
        let permit = self
            .within(async {
                Arc::clone(&self.slots)
                    .acquire_owned()
                    .await
                    .map_err(|_| JournalError::WriterStopped)
            })
            .await?;
        if !durable {
            return self.send(Op::Write {
                write: Body::Again(write),
                ack: Ack::Queued,
                _permit: Some(permit),
            });
        }
        let (tx, rx) = oneshot::channel();
        self.send(Op::Write {
            write: Body::Again(write),
            ack: Ack::Async(tx),
            _permit: Some(permit),
        })?;
        self.within(async { rx.await.unwrap_or(Err(JournalError::WriterStopped)) })
            .await
    }

    /// Waits until every write queued so far is committed; the first
    /// failure of a queued write since the last flush, if any.
    pub(super) async fn flush(&self) -> Result<(), JournalError> {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Flush(Ack::Async(tx)))?;
        self.within(async { rx.await.unwrap_or(Err(JournalError::WriterStopped)) })
            .await
    }

    /// [`Writer::flush`] for synchronous callers.
    pub(super) fn flush_sync(&self) -> Result<(), JournalError> {
        let (tx, rx) = sync_channel(1);
        self.send(Op::Flush(Ack::Sync(tx)))?;
        self.wait_sync(&rx)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has committed the rest.
        self.tx.take();
        let done = self.done.get_mut().unwrap_or_else(|e| e.into_inner());
        let ended = match &self.bound {
            None => done.recv().is_ok(),
            // A database that does not answer: the thread is left behind
            // (the process exiting ends it) rather than hang the exit.
            Some(url) => done.recv_timeout(url.bound).is_ok(),
        };
        if ended {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// The writer thread's connection, once made.
enum Conn {
    Own(Connection),
    Shared(Arc<Mutex<Connection>>),
    Pg(Box<PgConn>),
}

/// The thread: wait for a write, take whatever else is queued, commit it
/// all, acknowledge; until the queue is closed and empty. A group lost with
/// the PostgreSQL connection has its call records spilled ([`Spill`]); while
/// some are, the thread tries every [`RETRY`] to send them — before any
/// newer write, so the ledger sees them in order — after the queue is
/// closed too, for as long as `give_up` allows (then they wait in the file
/// for the next process that opens the ledger).
fn run(
    mut conn: Conn,
    mut rx: mpsc::UnboundedReceiver<Op>,
    give_up: std::time::Duration,
    mut spill: Spill,
) {
    // Failures of queued writes, until a flush reports them.
    let mut failed: Option<JournalError> = None;
    let mut group: Vec<Op> = Vec::with_capacity(MAX_GROUP);
    let mut closed_at: Option<std::time::Instant> = None;
    loop {
        if !spill.unsent {
            if closed_at.is_some() {
                break;
            }
            match rx.blocking_recv() {
                Some(first) => group.push(first),
                None => break,
            }
        } else {
            if closed_at.is_some_and(|t| t.elapsed() >= give_up) {
                // The database did not come back in time: the records
                // stay in the spill file (the CLI says where).
                break;
            }
            std::thread::sleep(RETRY);
        }
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(op) => group.push(op),
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    closed_at.get_or_insert_with(std::time::Instant::now);
                    break;
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
            }
        }
        if let Conn::Pg(c) = &mut conn {
            spill.send(c);
        }
        if group.is_empty() {
            continue;
        }
        match &mut conn {
            Conn::Own(c) => commit(&mut Group::Lite(c), &mut group, &mut failed, &mut spill),
            Conn::Shared(m) => {
                let mut c = m.lock().unwrap_or_else(|e| e.into_inner());
                commit(
                    &mut Group::Lite(&mut c),
                    &mut group,
                    &mut failed,
                    &mut spill,
                )
            }
            Conn::Pg(c) => commit(&mut Group::Pg(c), &mut group, &mut failed, &mut spill),
        };
    }
}

/// Where a PostgreSQL writer puts the call records of a group lost with
/// the connection: the ledger's spill file (see `journal::spill`).
pub(super) struct Spill {
    path: Option<std::path::PathBuf>,
    /// Opened on the first loss.
    conn: Option<Connection>,
    /// Records of this writer may be in the file and not in the ledger.
    unsent: bool,
}

impl Spill {
    pub(super) fn new(path: Option<std::path::PathBuf>) -> Spill {
        Spill {
            path,
            conn: None,
            unsent: false,
        }
    }

    /// Writes the group's call records to the file, in order, in one
    /// transaction (on disk when it returns).
    fn write(&mut self, group: &mut [Op]) -> Result<(), JournalError> {
        let records = group.iter().any(|op| {
            matches!(
                op,
                Op::Write {
                    write: Body::Again(_),
                    ..
                }
            )
        });
        if !records {
            return Ok(());
        }
        let Some(path) = &self.path else {
            return Err(JournalError::Pg(
                "the connection to the team ledger was lost".into(),
            ));
        };
        if self.conn.is_none() {
            self.conn = Some(super::spill::open_for_write(path)?);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(JournalError::WriterStopped);
        };
        let at = |e: JournalError| JournalError::Spill {
            path: path.clone(),
            message: e.to_string(),
        };
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| at(e.into()))?;
        for op in group.iter_mut() {
            if let Op::Write {
                write: Body::Again(f),
                ..
            } = op
            {
                f(Tx::Lite(&tx)).map_err(at)?;
            }
        }
        tx.commit().map_err(|e| at(e.into()))?;
        self.unsent = true;
        Ok(())
    }

    /// Sends what is spilled, when there is something and the connection
    /// is back; a failure other than the connection's (a record the ledger
    /// refuses) is left to `tollgate ledger sync`, which says why.
    fn send(&mut self, c: &mut PgConn) {
        let (true, Some(path)) = (self.unsent, &self.path) else {
            return;
        };
        c.reconnect_if_closed();
        if c.is_closed() {
            return;
        }
        loop {
            match super::spill::sync_batch(c, path) {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(_) if c.is_closed() => return,
                Err(_) => break,
            }
        }
        self.unsent = false;
    }
}

/// The connection a group is committed on.
enum Group<'a> {
    Lite(&'a mut Connection),
    Pg(&'a mut PgConn),
}

/// Commits a group in one transaction and acknowledges each of its ops. A
/// group lost with its PostgreSQL connection has its call records spilled
/// and acknowledged once they are in the file; its other writes fail.
fn commit(
    conn: &mut Group<'_>,
    group: &mut Vec<Op>,
    failed: &mut Option<JournalError>,
    spill: &mut Spill,
) {
    let writes = group
        .iter()
        .filter(|o| matches!(o, Op::Write { .. }))
        .count();
    if writes == 0 {
        for op in group.drain(..) {
            if let Op::Flush(ack) = op {
                let result = failed.take().map_or(Ok(()), Err);
                ack.send(result, &mut None);
            }
        }
        return;
    }
    let outcome = match conn {
        Group::Lite(c) => in_transaction(c, group),
        // Spilled records go first: a group behind them waits with them.
        Group::Pg(_) if spill.unsent => Err(JournalError::Pg(
            "the team ledger has not taken the spilled records yet".into(),
        )),
        Group::Pg(c) => in_pg_transaction(c, group),
    };
    let lost = matches!(conn, Group::Pg(c) if c.is_closed())
        || (matches!(conn, Group::Pg(_)) && spill.unsent && outcome.is_err());
    let results = match outcome {
        Ok(results) => results,
        Err(_) if lost => {
            // Nothing of the group was written, and the connection is
            // gone: its call records go to the spill file, acknowledged
            // once there (durable: a paid answer is never dropped for an
            // outage); its other writes fail as they would have.
            let spilled = spill.write(group).map_err(Arc::new);
            let e = Arc::new(JournalError::Pg(
                "the connection to the team ledger was lost".into(),
            ));
            for op in group.drain(..) {
                match op {
                    Op::Write {
                        write: Body::Again(_),
                        ack,
                        ..
                    } => {
                        let result = match &spilled {
                            Ok(()) => Ok(()),
                            Err(s) => Err(JournalError::Group(Arc::clone(s))),
                        };
                        ack.send(result, failed)
                    }
                    Op::Write { ack, .. } => {
                        ack.send(Err(JournalError::Group(Arc::clone(&e))), failed)
                    }
                    Op::Flush(ack) => {
                        let result = match &spilled {
                            Ok(()) => failed.take().map_or(Ok(()), Err),
                            Err(s) => Err(JournalError::Group(Arc::clone(s))),
                        };
                        ack.send(result, &mut None);
                    }
                }
            }
            return;
        }
        Err(e) => {
            // Nothing of the group was written.
            let e = Arc::new(e);
            group
                .iter()
                .map(|_| Err(JournalError::Group(Arc::clone(&e))))
                .collect()
        }
    };
    for (op, result) in group.drain(..).zip(results) {
        match op {
            Op::Write { ack, .. } => ack.send(result, failed),
            Op::Flush(ack) => {
                // Everything before it is settled: report what failed.
                let result = result.and(failed.take().map_or(Ok(()), Err));
                ack.send(result, &mut None);
            }
        }
    }
}

/// Runs every write of the group, each in a savepoint, in one immediate
/// transaction (the write lock taken up front: no upgrade that could fail
/// busy); the per-op results, or why the transaction itself failed.
fn in_transaction(
    conn: &mut Connection,
    group: &mut [Op],
) -> Result<Vec<Result<(), JournalError>>, JournalError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut results = Vec::with_capacity(group.len());
    for op in group.iter_mut() {
        let Op::Write { write, .. } = op else {
            results.push(Ok(()));
            continue;
        };
        tx.execute_batch("SAVEPOINT one")?;
        let Some(result) = write.run(Tx::Lite(&tx)) else {
            tx.execute_batch("RELEASE one")?;
            results.push(Ok(()));
            continue;
        };
        match result {
            Ok(()) => tx.execute_batch("RELEASE one")?,
            Err(e) => {
                // Undo this write alone — unless SQLite already rolled the
                // whole transaction back (a full disk may): then the group
                // fails, with this write's reason.
                if tx.execute_batch("ROLLBACK TO one; RELEASE one").is_err() {
                    return Err(e);
                }
                results.push(Err(e));
                continue;
            }
        }
        results.push(Ok(()));
    }
    tx.commit()?;
    Ok(results)
}

/// [`in_transaction`] on PostgreSQL: the same savepoint per write, in one
/// transaction (PostgreSQL's own commit waits for its WAL flush, so a
/// group shares it as SQLite's shares an fsync). A lost connection is made
/// again first: the writes queued meanwhile go to the server once it is
/// back, or fail with the reason if it is not.
fn in_pg_transaction(
    conn: &mut PgConn,
    group: &mut [Op],
) -> Result<Vec<Result<(), JournalError>>, JournalError> {
    conn.reconnect_if_closed();
    conn.batch("BEGIN")?;
    let mut results = Vec::with_capacity(group.len());
    let body = (|| {
        for op in group.iter_mut() {
            let Op::Write { write, .. } = op else {
                results.push(Ok(()));
                continue;
            };
            conn.batch("SAVEPOINT one")?;
            let Some(result) = write.run(Tx::Pg(conn)) else {
                conn.batch("RELEASE SAVEPOINT one")?;
                results.push(Ok(()));
                continue;
            };
            match result {
                Ok(()) => conn.batch("RELEASE SAVEPOINT one")?,
                Err(e) => {
                    if conn
                        .batch("ROLLBACK TO SAVEPOINT one; RELEASE SAVEPOINT one")
                        .is_err()
                    {
                        return Err(e);
                    }
                    results.push(Err(e));
                    continue;
                }
            }
            results.push(Ok(()));
        }
        conn.batch("COMMIT")
    })();
    match body {
        Ok(()) => Ok(results),
        Err(e) => {
            let _ = conn.batch("ROLLBACK");
            Err(e)
        }
    }
}
