//! What a fleet needs from its store, whatever the engine: the desired
//! version, a compare-and-swap publish, hints, and the instances' rows.
//! PostgreSQL ([`PgStore`](super::postgres::PgStore)) is the one engine
//! today; another (etcd: revisions, leases) would implement the same trait.

use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use serde::Serialize;

use super::rollout::{Canary, Rollout};

/// One immutable version of a fleet's document.
#[derive(Clone, Debug)]
pub(crate) struct Version {
    pub(crate) id: u64,
    pub(crate) document: String,
    pub(crate) meta: VersionMeta,
    /// Read as the desired version: its rollout, if it was published with
    /// a canary.
    pub(crate) rollout: Option<Rollout>,
}

/// What `/admin/fleet` shows of a version.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct VersionMeta {
    /// The version's id.
    pub(crate) version: u64,
    /// Hex SHA-256 of its document.
    pub(crate) sha256: String,
    /// Who published it.
    pub(crate) author: String,
    /// Why.
    pub(crate) message: String,
    /// The version it was made from.
    pub(crate) parent: Option<u64>,
    /// When (RFC 3339, UTC).
    pub(crate) created_at: String,
}

/// A version to publish.
#[derive(Debug)]
pub(crate) struct Draft<'a> {
    pub(crate) document: &'a str,
    pub(crate) author: &'a str,
    pub(crate) message: &'a str,
    /// Published to a cohort first.
    pub(crate) canary: Option<CanaryPlan<'a>>,
}

/// A canary publish: the cohort's size, the hold, and the instances live
/// now (the cohort is chosen among them once the version has its id).
#[derive(Debug)]
pub(crate) struct CanaryPlan<'a> {
    pub(crate) canary: Canary,
    pub(crate) hold: Duration,
    pub(crate) live: &'a [String],
}

/// What a rollout step found.
#[derive(Debug)]
pub(crate) enum Stewarded {
    /// No rollout is in progress (the rollout lock, if held, was let go).
    Idle,
    /// Another instance holds the rollout lock.
    Elsewhere,
    /// This instance holds the lock; the rollout after the step.
    Stepped(Rollout),
}

/// Why a store operation failed: the store could not be reached or
/// answered an error (the message names the store).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct StoreError(pub(crate) String);

/// What a publish did.
#[derive(Debug)]
pub(crate) enum Published {
    /// The new version, now the desired one.
    Version(Box<Version>),
    /// Nothing: the desired version was no longer the one the publisher
    /// started from, but this one.
    Stale { current: u64 },
}

/// What the store says about the connection to it now.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct StoreHealth {
    /// `connected` or `disconnected`.
    pub(crate) state: &'static str,
    /// Since when (RFC 3339, UTC).
    pub(crate) since: String,
    /// The last error, while disconnected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

/// A hint from the store: look at the desired version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hint {
    /// The hint connection is (re)established and listening: notifications
    /// sent before are lost, so read the latest now.
    Connected,
    /// A version was published.
    Published(u64),
}

/// What an instance reports: ACK (`Applied`), NACK (`Rejected`), or that it
/// is applying a version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Report {
    pub(crate) applied: Option<u64>,
    pub(crate) generation: u64,
    pub(crate) state: ReportState,
    /// The version the state is about.
    pub(crate) version: Option<u64>,
    pub(crate) error: Option<String>,
    pub(crate) key: Option<String>,
}

impl Report {
    /// An ACK of `version` (0: none published yet) served by `generation`.
    pub(crate) fn applied(version: u64, generation: u64) -> Self {
        let version = Some(version).filter(|v| *v != 0);
        Self {
            applied: version,
            generation,
            state: ReportState::Applied,
            version,
            error: None,
            key: None,
        }
    }
}

/// The state column of an instance's row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReportState {
    Applying,
    Applied,
    Rejected,
}

impl ReportState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Applying => "applying",
            Self::Applied => "applied",
            Self::Rejected => "rejected",
        }
    }
}

/// Who an instance is, for its row.
#[derive(Clone, Debug)]
pub(crate) struct Identity {
    pub(crate) fleet: String,
    pub(crate) instance: String,
    pub(crate) host: String,
    pub(crate) pid: u32,
    /// Seconds since the Unix epoch.
    pub(crate) started_at: f64,
}

/// An instance's row as stored, with the ages the store measured on its
/// own clock (so that hosts' clocks do not matter).
#[derive(Clone, Debug)]
pub(crate) struct InstanceRow {
    pub(crate) instance: String,
    pub(crate) host: String,
    pub(crate) pid: u32,
    pub(crate) started_at: String,
    pub(crate) heartbeat_at: String,
    pub(crate) applied: Option<u64>,
    pub(crate) generation: u64,
    pub(crate) state: String,
    pub(crate) version: Option<u64>,
    pub(crate) error: Option<String>,
    pub(crate) key: Option<String>,
    /// Seconds since its last heartbeat.
    pub(crate) silent_s: f64,
    /// Seconds since the desired version last moved (`None`: never set).
    pub(crate) desired_age_s: Option<f64>,
}

/// A fleet store. Every call is bounded in time: a store that does not
/// answer is an error, never a hang.
pub(crate) trait FleetStore: Send + Sync + 'static {
    /// The store, for logs and answers: its URL, password redacted.
    fn describe(&self) -> String;

    /// The connection's state now.
    fn health(&self) -> StoreHealth;

    /// The desired version of `fleet`; `None` before the first publish.
    fn desired<'a>(&'a self, fleet: &'a str) -> BoxFuture<'a, Result<Option<Version>, StoreError>>;

    /// Version `id` of `fleet`, if there is one.
    fn version<'a>(
        &'a self,
        fleet: &'a str,
        id: u64,
    ) -> BoxFuture<'a, Result<Option<Version>, StoreError>>;

    /// Stores `draft` as a new version made from `expected` (0: none) and
    /// makes it the desired one, only if the desired version is still
    /// `expected`; sends the hint in the same transaction.
    fn publish<'a>(
        &'a self,
        fleet: &'a str,
        expected: u64,
        draft: Draft<'a>,
    ) -> BoxFuture<'a, Result<Published, StoreError>>;

    /// Hints for `identity`'s fleet, for as long as the stream is held:
    /// [`Hint::Connected`] after every (re)connection, then one per publish.
    fn hints(&self, identity: &Identity) -> BoxStream<'static, Hint>;

    /// Writes `identity`'s row.
    fn report<'a>(
        &'a self,
        identity: &'a Identity,
        report: &'a Report,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Touches `identity`'s heartbeat; `false` when it has no row (then
    /// [`report`](Self::report)).
    fn heartbeat<'a>(&'a self, identity: &'a Identity) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// While `identity`'s fleet has a rollout in progress: takes (or keeps)
    /// the fleet's rollout lock and, holding it, runs
    /// [`step`](super::rollout::step) in one transaction, moving the
    /// pointer and sending the hint when the rollout ends. The lock lives
    /// with a connection of its own, so that another instance takes over
    /// when this one dies.
    fn steward<'a>(
        &'a self,
        identity: &'a Identity,
        ack_timeout: Duration,
    ) -> BoxFuture<'a, Result<Stewarded, StoreError>>;

    /// Every instance row of `fleet`, by name.
    fn instances<'a>(
        &'a self,
        fleet: &'a str,
    ) -> BoxFuture<'a, Result<Vec<InstanceRow>, StoreError>>;
}
