//! The fleet store on PostgreSQL: tables in schema `kiln_fleet` (created on
//! first use from `0001_kiln_fleet.sql`), `pg_notify` as the hint.
//!
//! Two connections per instance, neither from a pool: one for queries,
//! reopened on the next call after it fails, and one that only `LISTEN`s,
//! driven with `poll_message` (a `Connection` awaited as a plain future
//! drops notifications), never in a transaction (notifications wait for
//! its end), reopened with backoff and jitter, announcing
//! [`Hint::Connected`] after each `LISTEN` so the follower reads the latest
//! version: notifications sent while it was away are lost.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use kiln_config::FleetConfig;
use kiln_resources::{ErrorChain, within};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls, Row};

use super::rollout::{self, Rollout};
use super::store::{
    Draft, FleetStore, Hint, Identity, InstanceRow, Published, Report, Stewarded, StoreError,
    StoreHealth, Version, VersionMeta,
};
use super::{rfc3339, sha256_hex};
use crate::watch::jittered;

/// The notification channel; payloads are `FLEET:VERSION`.
const CHANNEL: &str = "kiln_fleet";
/// The schema's migration, as a DBA reads it.
const MIGRATION: &str = include_str!("0001_kiln_fleet.sql");
/// The longest a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest one call (its queries, a publish's transaction) may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A timestamp column as RFC 3339 UTC text.
macro_rules! utc {
    ($column:literal) => {
        concat!(
            "to_char(",
            $column,
            " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
        )
    };
}

/// The PostgreSQL fleet store.
pub(crate) struct PgStore {
    config: tokio_postgres::Config,
    described: String,
    /// The query connection; `None` until the first call and after a failure.
    client: tokio::sync::Mutex<Option<Client>>,
    /// The connection holding the fleet's rollout lock (`true`) or trying
    /// to (`false`), while a rollout is in progress; closing it lets the
    /// lock go.
    steward: tokio::sync::Mutex<Option<(Client, bool)>>,
    health: Arc<Health>,
}

impl PgStore {
    /// A store at `fleet.store`, connected on first use; `instance` names
    /// its connections (`application_name`).
    pub(crate) fn new(fleet: &FleetConfig, instance: &str) -> Result<Self, StoreError> {
        let described = fleet.store.redacted();
        let mut config: tokio_postgres::Config = fleet.store.expose().parse().map_err(|e| {
            StoreError(format!(
                "fleet.store {described} is not a PostgreSQL connection string: {}",
                ErrorChain(&e)
            ))
        })?;
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .application_name(format!("kiln fleet {instance}"));
        Ok(Self {
            config,
            described,
            client: tokio::sync::Mutex::new(None),
            steward: tokio::sync::Mutex::new(None),
            health: Arc::new(Health::new()),
        })
    }

    /// Runs `call` on the query connection (opened, and the schema created,
    /// if needed) within [`CALL_TIMEOUT`]; a failure closes the connection
    /// and marks the store disconnected.
    async fn call<T>(
        &self,
        call: impl AsyncFnOnce(&mut Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, StoreError> {
        let result = within(CALL_TIMEOUT, "the fleet store's answer", async {
            let mut slot = self.client.lock().await;
            if slot.as_ref().is_none_or(Client::is_closed) {
                *slot = Some(self.open().await?);
            }
            let result = call(slot.as_mut().expect("opened above")).await;
            if result.is_err() {
                *slot = None;
            }
            result.map_err(|e| ErrorChain(&e).to_string())
        })
        .await;
        let result = match result {
            Ok(result) => result,
            Err(timed_out) => {
                // Whatever it waited on is gone with it: start afresh.
                *self.client.lock().await = None;
                Err(timed_out.to_string())
            }
        };
        match result {
            Ok(value) => {
                self.health.up();
                Ok(value)
            }
            Err(reason) => {
                self.health.down(&self.described, &reason);
                Err(StoreError(format!(
                    "the fleet store {} is unreachable: {reason}",
                    self.described
                )))
            }
        }
    }

    /// Opens the query connection and creates the schema if it is missing.
    async fn open(&self) -> Result<Client, String> {
        self.connect_and_migrate()
            .await
            .map_err(|e| ErrorChain(&e).to_string())
    }

    async fn connect_and_migrate(&self) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %ErrorChain(&e), "The fleet store's query connection ended");
            }
        });
        let exists: bool = client
            .query_one(
                "SELECT to_regclass('kiln_fleet.instances') IS NOT NULL",
                &[],
            )
            .await?
            .get(0);
        if !exists {
            // Instances starting together create it once: the second waits
            // for the lock, then finds every object there.
            client
                .batch_execute(&format!(
                    "BEGIN; SELECT pg_advisory_xact_lock(hashtext('kiln_fleet'));\n{MIGRATION}\nCOMMIT;"
                ))
                .await?;
            tracing::info!(
                store = %self.described,
                "Created the fleet store's tables in schema kiln_fleet (migration 0001_kiln_fleet.sql)"
            );
        }
        Ok(client)
    }
}

fn id(row: &Row, column: &str) -> u64 {
    row.get::<_, i64>(column) as u64
}

fn optional_id(row: &Row, column: &str) -> Option<u64> {
    row.get::<_, Option<i64>>(column).map(|id| id as u64)
}

fn version(row: &Row) -> Version {
    Version {
        id: id(row, "id"),
        document: row.get("document"),
        meta: VersionMeta {
            version: id(row, "id"),
            sha256: row.get("sha256"),
            author: row.get("author"),
            message: row.get("message"),
            parent: optional_id(row, "parent"),
            created_at: row.get("created_at"),
        },
        rollout: None,
    }
}

/// The `rollout` column, read as text.
fn rollout_of(row: &Row) -> Option<Rollout> {
    let text: Option<String> = row.get("rollout");
    text.and_then(|text| match serde_json::from_str(&text) {
        Ok(rollout) => Some(rollout),
        Err(e) => {
            tracing::warn!(error = %e, %text, "Ignoring a rollout this kiln cannot read");
            None
        }
    })
}

/// Every instance of fleet `$1`, with the ages the store measures.
const INSTANCES: &str = concat!(
    "SELECT i.instance, i.host, i.pid, i.applied, i.generation, i.state, i.version, i.error, i.error_key, ",
    utc!("i.started_at"),
    " AS started_at, ",
    utc!("i.heartbeat_at"),
    " AS heartbeat_at, ",
    "extract(epoch FROM now() - i.heartbeat_at)::float8 AS silent_s, ",
    "extract(epoch FROM now() - d.updated_at)::float8 AS desired_age_s ",
    "FROM kiln_fleet.instances i LEFT JOIN kiln_fleet.desired d ON d.fleet = i.fleet ",
    "WHERE i.fleet = $1 ORDER BY i.instance"
);

fn instance_row(row: &Row) -> InstanceRow {
    InstanceRow {
        instance: row.get("instance"),
        host: row.get("host"),
        pid: row.get::<_, i32>("pid") as u32,
        started_at: row.get("started_at"),
        heartbeat_at: row.get("heartbeat_at"),
        applied: optional_id(row, "applied"),
        generation: id(row, "generation"),
        state: row.get("state"),
        version: optional_id(row, "version"),
        error: row.get("error"),
        key: row.get("error_key"),
        silent_s: row.get("silent_s"),
        desired_age_s: row.get("desired_age_s"),
    }
}

/// The store's clock, in seconds since the Unix epoch.
const NOW: &str = "SELECT extract(epoch FROM now())::float8";

/// The rollout lock of fleet `$1` (session-level, two-key form: apart from
/// the migration's lock).
const TRY_ROLLOUT_LOCK: &str =
    "SELECT pg_try_advisory_lock(hashtext('kiln_fleet rollout'), hashtext($1))";

impl FleetStore for PgStore {
    fn describe(&self) -> String {
        self.described.clone()
    }

    fn health(&self) -> StoreHealth {
        self.health.now()
    }

    fn desired<'a>(&'a self, fleet: &'a str) -> BoxFuture<'a, Result<Option<Version>, StoreError>> {
        Box::pin(self.call(async move |client: &mut Client| {
            let row = client
                .query_opt(
                    concat!(
                        "SELECT v.id, v.document, v.sha256, v.author, v.message, v.parent, d.rollout::text AS rollout, ",
                        utc!("v.created_at"),
                        " AS created_at FROM kiln_fleet.desired d ",
                        "JOIN kiln_fleet.versions v ON v.id = d.version WHERE d.fleet = $1"
                    ),
                    &[&fleet],
                )
                .await?;
            Ok(row.as_ref().map(|row| Version {
                rollout: rollout_of(row),
                ..version(row)
            }))
        }))
    }

    fn version<'a>(
        &'a self,
        fleet: &'a str,
        id: u64,
    ) -> BoxFuture<'a, Result<Option<Version>, StoreError>> {
        Box::pin(self.call(async move |client: &mut Client| {
            let row = client
                .query_opt(
                    concat!(
                        "SELECT id, document, sha256, author, message, parent, ",
                        utc!("created_at"),
                        " AS created_at FROM kiln_fleet.versions WHERE fleet = $1 AND id = $2"
                    ),
                    &[&fleet, &(id as i64)],
                )
                .await?;
            Ok(row.as_ref().map(version))
        }))
    }

    fn publish<'a>(
        &'a self,
        fleet: &'a str,
        expected: u64,
        draft: Draft<'a>,
    ) -> BoxFuture<'a, Result<Published, StoreError>> {
        Box::pin(self.call(async move |client: &mut Client| {
            let sha = sha256_hex(draft.document);
            let parent = (expected != 0).then_some(expected as i64);
            let tx = client.transaction().await?;
            let row = tx
                .query_one(
                    concat!(
                        "INSERT INTO kiln_fleet.versions (fleet, document, sha256, author, message, parent) ",
                        "VALUES ($1, $2, $3, $4, $5, $6) RETURNING id, document, sha256, author, message, parent, ",
                        utc!("created_at"),
                        " AS created_at"
                    ),
                    &[&fleet, &draft.document, &sha, &draft.author, &draft.message, &parent],
                )
                .await?;
            let mut published = version(&row);
            let new = published.id as i64;
            if let Some(plan) = &draft.canary {
                let now: f64 = tx.query_one(NOW, &[]).await?.get(0);
                published.rollout = Some(Rollout::start(
                    published.id,
                    expected,
                    plan.canary,
                    plan.hold,
                    plan.live,
                    now,
                ));
            }
            let rollout = published
                .rollout
                .as_ref()
                .map(|r| serde_json::to_string(r).expect("a rollout serializes"));
            // The compare-and-swap: the pointer moves only from `expected`.
            let moved = match parent {
                None => {
                    tx.execute(
                        "INSERT INTO kiln_fleet.desired (fleet, version, rollout) VALUES ($1, $2, $3::text::jsonb) ON CONFLICT (fleet) DO NOTHING",
                        &[&fleet, &new, &rollout],
                    )
                    .await?
                }
                Some(expected) => {
                    tx.execute(
                        "UPDATE kiln_fleet.desired SET version = $2, rollout = $4::text::jsonb, updated_at = now() WHERE fleet = $1 AND version = $3",
                        &[&fleet, &new, &expected, &rollout],
                    )
                    .await?
                }
            };
            if moved == 0 {
                let current = tx
                    .query_opt("SELECT version FROM kiln_fleet.desired WHERE fleet = $1", &[&fleet])
                    .await?
                    .map_or(0, |row| id(&row, "version"));
                tx.rollback().await?;
                return Ok(Published::Stale { current });
            }
            tx.execute(
                "SELECT pg_notify($1, $2)",
                &[&CHANNEL, &format!("{fleet}:{new}")],
            )
            .await?;
            tx.commit().await?;
            Ok(Published::Version(Box::new(published)))
        }))
    }

    fn hints(&self, identity: &Identity) -> BoxStream<'static, Hint> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut config = self.config.clone();
        config.application_name(format!("kiln fleet listen {}", identity.instance));
        let listener = Listener {
            config,
            prefix: format!("{}:", identity.fleet),
            health: self.health.clone(),
            described: self.described.clone(),
            tx,
        };
        tokio::spawn(listener.run());
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|h| (h, rx)) })
            .boxed()
    }

    fn report<'a>(
        &'a self,
        identity: &'a Identity,
        report: &'a Report,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.call(async move |client: &mut Client| {
            let applied = report.applied.map(|v| v as i64);
            let version = report.version.map(|v| v as i64);
            client
                .execute(
                    "INSERT INTO kiln_fleet.instances AS i (fleet, instance, host, pid, started_at, heartbeat_at, applied, generation, state, version, error, error_key, at) \
                     VALUES ($1, $2, $3, $4, to_timestamp($5), now(), $6, $7, $8, $9, $10, $11, now()) \
                     ON CONFLICT (fleet, instance) DO UPDATE SET host = $3, pid = $4, started_at = to_timestamp($5), heartbeat_at = now(), \
                     applied = $6, generation = $7, state = $8, version = $9, error = $10, error_key = $11, at = now()",
                    &[
                        &identity.fleet,
                        &identity.instance,
                        &identity.host,
                        &(identity.pid as i32),
                        &identity.started_at,
                        &applied,
                        &(report.generation as i64),
                        &report.state.as_str(),
                        &version,
                        &report.error,
                        &report.key,
                    ],
                )
                .await?;
            Ok(())
        }))
    }

    fn heartbeat<'a>(&'a self, identity: &'a Identity) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.call(async move |client: &mut Client| {
            let touched = client
                .execute(
                    "UPDATE kiln_fleet.instances SET heartbeat_at = now() WHERE fleet = $1 AND instance = $2",
                    &[&identity.fleet, &identity.instance],
                )
                .await?;
            Ok(touched > 0)
        }))
    }

    fn instances<'a>(
        &'a self,
        fleet: &'a str,
    ) -> BoxFuture<'a, Result<Vec<InstanceRow>, StoreError>> {
        Box::pin(self.call(async move |client: &mut Client| {
            let rows = client.query(INSTANCES, &[&fleet]).await?;
            Ok(rows.iter().map(instance_row).collect())
        }))
    }

    fn steward<'a>(
        &'a self,
        identity: &'a Identity,
        ack_timeout: Duration,
    ) -> BoxFuture<'a, Result<Stewarded, StoreError>> {
        Box::pin(async move {
            let mut slot = self.steward.lock().await;
            let stepped = within(
                CALL_TIMEOUT,
                "the rollout's step",
                self.step_rollout(&mut slot, identity, ack_timeout),
            )
            .await
            .unwrap_or_else(|timed_out| Err(timed_out.to_string()));
            // Nothing left to drive, or the connection failed: close it, and
            // with it the lock.
            if !matches!(stepped, Ok(Stewarded::Elsewhere | Stewarded::Stepped(_))) {
                *slot = None;
            }
            if let Ok(Stewarded::Stepped(rollout)) = &stepped
                && !rollout.phase.in_progress()
            {
                *slot = None;
            }
            stepped.map_err(|reason| {
                StoreError(format!(
                    "the fleet store {} failed a rollout step: {reason}",
                    self.described
                ))
            })
        })
    }
}

impl PgStore {
    /// One rollout step on the steward connection in `slot` (opened and the
    /// lock tried when needed).
    async fn step_rollout(
        &self,
        slot: &mut Option<(Client, bool)>,
        identity: &Identity,
        ack_timeout: Duration,
    ) -> Result<Stewarded, String> {
        let fleet = identity.fleet.as_str();
        let chain = |e: tokio_postgres::Error| ErrorChain(&e).to_string();
        if slot.as_ref().is_none_or(|(client, _)| client.is_closed()) {
            let mut config = self.config.clone();
            config.application_name(format!("kiln fleet rollout {}", identity.instance));
            let (client, connection) = config.connect(NoTls).await.map_err(chain)?;
            tokio::spawn(connection);
            *slot = Some((client, false));
        }
        let (client, locked) = slot.as_mut().expect("opened above");
        if !*locked {
            *locked = client
                .query_one(TRY_ROLLOUT_LOCK, &[&fleet])
                .await
                .map_err(chain)?
                .get(0);
            if !*locked {
                return Ok(Stewarded::Elsewhere);
            }
            tracing::info!(
                fleet,
                "Took the fleet's rollout lock: this instance drives the rollout"
            );
        }
        let tx = client.transaction().await.map_err(chain)?;
        let row = tx
            .query_opt(
                "SELECT rollout::text AS rollout, extract(epoch FROM now())::float8 AS now FROM kiln_fleet.desired WHERE fleet = $1 FOR UPDATE",
                &[&fleet],
            )
            .await
            .map_err(chain)?;
        let Some((rollout, now)) = row.and_then(|row| Some((rollout_of(&row)?, row.get("now"))))
        else {
            return Ok(Stewarded::Idle);
        };
        if !rollout.phase.in_progress() {
            return Ok(Stewarded::Idle);
        }
        let rows: Vec<InstanceRow> = tx
            .query(INSTANCES, &[&fleet])
            .await
            .map_err(chain)?
            .iter()
            .map(instance_row)
            .collect();
        let Some(next) = rollout::step(&rollout, &rows, now, ack_timeout, &identity.instance)
        else {
            return Ok(Stewarded::Stepped(rollout));
        };
        let ended = !next.phase.in_progress();
        let text = serde_json::to_string(&next).expect("a rollout serializes");
        let pointer = next.pointer() as i64;
        tx.execute(
            "UPDATE kiln_fleet.desired SET version = $2, rollout = $3::text::jsonb, \
             updated_at = CASE WHEN $4 THEN now() ELSE updated_at END WHERE fleet = $1",
            &[&fleet, &pointer, &text, &ended],
        )
        .await
        .map_err(chain)?;
        if ended {
            tx.execute(
                "SELECT pg_notify($1, $2)",
                &[&CHANNEL, &format!("{fleet}:{pointer}")],
            )
            .await
            .map_err(chain)?;
        }
        tx.commit().await.map_err(chain)?;
        if next.phase != rollout.phase {
            tracing::info!(
                fleet,
                version = next.version,
                phase = ?next.phase,
                reason = next.reason.as_deref(),
                "Rollout moved on"
            );
        }
        Ok(Stewarded::Stepped(next))
    }
}

/// The `LISTEN` connection's loop: connect, listen, announce, forward this
/// fleet's notifications; on loss, back off (1 s doubling to 30 s, ±25%)
/// and connect again. Ends when the hint stream is dropped.
struct Listener {
    config: tokio_postgres::Config,
    prefix: String,
    health: Arc<Health>,
    described: String,
    tx: mpsc::UnboundedSender<Hint>,
}

impl Listener {
    async fn run(self) {
        let mut delay = Duration::from_secs(1);
        loop {
            let (reason, listened) = tokio::select! {
                ended = self.listen() => ended,
                () = self.tx.closed() => return,
            };
            if listened {
                delay = Duration::from_secs(1);
            }
            self.health.down(&self.described, &reason);
            let wait = jittered(delay, 0.25);
            tracing::debug!(retry_in_ms = wait.as_millis() as u64, %reason, "The fleet's LISTEN connection is down");
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.tx.closed() => return,
            }
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }

    /// One connection's life: the reason it ended, and whether it got as
    /// far as listening.
    async fn listen(&self) -> (String, bool) {
        match self.connect().await {
            Ok((client, notifications, driver)) => {
                (self.forward(client, notifications, driver).await, true)
            }
            Err(reason) => (reason, false),
        }
    }

    /// A connection that listens, its notifications' payloads, and the task
    /// driving it (which ends with the reason it ended).
    async fn connect(
        &self,
    ) -> Result<
        (
            Client,
            mpsc::UnboundedReceiver<String>,
            tokio::task::JoinHandle<String>,
        ),
        String,
    > {
        let connected = within(
            CONNECT_TIMEOUT,
            "a connection to the fleet store",
            self.config.connect(NoTls),
        )
        .await;
        let (client, mut connection) = match connected {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return Err(ErrorChain(&e).to_string()),
            Err(timed_out) => return Err(timed_out.to_string()),
        };
        let (notes, notifications) = mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(note)) => {
                        let _ = notes.send(note.payload().to_owned());
                    }
                    Ok(_) => {}
                    Err(e) => return ErrorChain(&e).to_string(),
                }
            }
            "the server closed the connection".to_owned()
        });
        let listening = within(
            CALL_TIMEOUT,
            "LISTEN's answer",
            client.batch_execute(&format!("LISTEN {CHANNEL}")),
        )
        .await;
        match listening {
            Ok(Ok(())) => Ok((client, notifications, driver)),
            Ok(Err(e)) => Err(format!("LISTEN failed: {}", ErrorChain(&e))),
            Err(timed_out) => Err(timed_out.to_string()),
        }
    }

    /// Announces the connection, then forwards this fleet's notifications
    /// until it ends; the reason it ended.
    async fn forward(
        &self,
        client: Client,
        mut notifications: mpsc::UnboundedReceiver<String>,
        driver: tokio::task::JoinHandle<String>,
    ) -> String {
        self.health.up();
        tracing::debug!("The fleet's LISTEN connection is up");
        // Listening first, then reading: nothing published from now on is missed.
        if self.tx.send(Hint::Connected).is_err() {
            return String::new();
        }
        while let Some(payload) = notifications.recv().await {
            let version = payload
                .strip_prefix(&self.prefix)
                .and_then(|v| v.parse().ok());
            if let Some(version) = version
                && self.tx.send(Hint::Published(version)).is_err()
            {
                return String::new();
            }
        }
        drop(client);
        driver
            .await
            .unwrap_or_else(|e| format!("the connection's task ended: {e}"))
    }
}

/// Whether the store answers, and since when.
struct Health(Mutex<HealthState>);

struct HealthState {
    up: bool,
    since: SystemTime,
    error: Option<String>,
}

impl Health {
    fn new() -> Self {
        Self(Mutex::new(HealthState {
            up: false,
            since: SystemTime::now(),
            error: Some("not connected yet".to_owned()),
        }))
    }

    fn up(&self) {
        let mut state = self.0.lock().expect("health lock");
        if !state.up {
            if state.error.as_deref() != Some("not connected yet") {
                tracing::info!("The fleet store is reachable again");
            }
            *state = HealthState {
                up: true,
                since: SystemTime::now(),
                error: None,
            };
        }
    }

    fn down(&self, described: &str, reason: &str) {
        let mut state = self.0.lock().expect("health lock");
        if state.up {
            tracing::warn!(store = %described, %reason, "The fleet store is unreachable; serving the last applied version, reconnecting");
            state.up = false;
            state.since = SystemTime::now();
        }
        state.error = Some(reason.to_owned());
    }

    fn now(&self) -> StoreHealth {
        let state = self.0.lock().expect("health lock");
        StoreHealth {
            state: if state.up {
                "connected"
            } else {
                "disconnected"
            },
            since: rfc3339(state.since),
            error: state.error.clone(),
        }
    }
}
