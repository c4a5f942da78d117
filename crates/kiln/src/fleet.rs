//! A fleet: many kiln processes following one configuration in a store.
//!
//! The store holds immutable versions of a shared TOML document and one
//! desired pointer per fleet; each instance lays the desired document over
//! its own file (file < fleet document < environment), applies it through
//! the ordinary reload path, and reports ACK (the version applied, with the
//! generation serving it) or NACK (the error; the last good generation keeps
//! serving) in its own row. A notification is only a hint: an instance also
//! reads the desired version when its `LISTEN` connection (re)connects and
//! on a jittered poll, so a missed one is harmless ([`follow`]).
//!
//! The store sits behind [`store::FleetStore`]; PostgreSQL
//! ([`postgres::PgStore`]) is its engine.

mod follow;
mod postgres;
mod publish;
mod rollout;
mod store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use kiln_config::{AppConfig, FleetConfig, Loaded, Overlay};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use self::postgres::PgStore;
pub(crate) use self::rollout::Canary;
use self::rollout::Rollout;
pub(crate) use self::rollout::RolloutView;
pub(crate) use self::store::Report;
use self::store::{
    CanaryPlan, Draft, FleetStore, Identity, InstanceRow, Published, ReportState, StoreError,
    StoreHealth, Version, VersionMeta,
};
use crate::{ReloadError, StartError};

/// Why a fleet operation failed; nothing was applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// The store could not be reached (or answered an error).
    #[error("{reason}; nothing was applied")]
    Unavailable {
        /// What failed, naming the store (its password redacted).
        reason: String,
    },
    /// The fleet moved on since the version the change started from.
    #[error(
        "fleet {fleet:?} is at version {current}, not the one this change started from: GET /admin/config (its ETag is the fleet version) and try again"
    )]
    Stale {
        /// The fleet's name.
        fleet: String,
        /// The version it is at.
        current: u64,
    },
    /// A canary needs a version for the others to keep, and to return to.
    #[error(
        "fleet {fleet:?} has no version yet: a canary needs one to return to; publish the first version without a canary"
    )]
    NothingToCanary {
        /// The fleet's name.
        fleet: String,
    },
    /// At start-up the store could not be reached, and no document was
    /// cached by an earlier run.
    #[error(
        "{reason}, and there is no cached fleet document at {}: refusing to start (start once with the store reachable)",
        cache.display()
    )]
    NoCache {
        /// What failed, naming the store.
        reason: String,
        /// Where the cache would be.
        cache: PathBuf,
    },
}

impl From<StoreError> for FleetError {
    fn from(StoreError(reason): StoreError) -> Self {
        Self::Unavailable { reason }
    }
}

/// This instance's membership of a fleet: the store, who it is, and which
/// version each document it has seen is.
pub(crate) struct Fleet {
    store: Arc<dyn FleetStore>,
    identity: Identity,
    config: FleetConfig,
    /// Where the last applied document is kept for a start without the store.
    cache: PathBuf,
    known: Mutex<Known>,
}

/// What this instance has seen of the store.
#[derive(Default)]
struct Known {
    /// The version of each document seen (hex SHA-256 → newest id), so that
    /// the generation serving a document knows its version without asking.
    versions: HashMap<String, u64>,
    /// The desired version last read, for `/admin/fleet` while the store is
    /// unreachable.
    desired: Option<VersionMeta>,
    /// Whether the desired version read last is in a canary rollout: then
    /// this instance tries to drive it.
    rolling_out: bool,
    /// When this instance last wrote an ACK.
    acked_at: Option<SystemTime>,
}

/// The fleet's figures for `/admin/metrics`, read at scrape time.
#[derive(Debug)]
pub(crate) struct FleetFigures {
    /// The version serving (0: none).
    pub(crate) applied: u64,
    /// The desired version last read (0: none).
    pub(crate) desired: u64,
    /// Whether the store answers.
    pub(crate) connected: bool,
    /// When this instance last wrote an ACK.
    pub(crate) acked_at: Option<SystemTime>,
}

/// The last applied document, as cached beside the configuration file.
#[derive(Serialize, Deserialize)]
struct Cached {
    fleet: String,
    version: u64,
    sha256: String,
    author: String,
    message: String,
    created_at: String,
    document: String,
}

impl Fleet {
    /// Joins the fleet `config` names: reads its desired version (or, with
    /// the store unreachable, the cache of the last one applied, loudly) and
    /// lays it over `loaded`, the instance's own file.
    pub(crate) async fn open<C: AppConfig>(
        loaded: Loaded<C>,
        config: FleetConfig,
    ) -> Result<(Arc<Fleet>, Loaded<C>), StartError> {
        let host = host_name();
        let instance = config
            .instance
            .clone()
            .unwrap_or_else(|| format!("{host}:{}", loaded.config.server.listen.port()));
        let store = PgStore::new(&config, &instance).map_err(FleetError::from)?;
        let started_at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let fleet = Arc::new(Fleet {
            store: Arc::new(store),
            identity: Identity {
                fleet: config.name.clone(),
                instance,
                host,
                pid: std::process::id(),
                started_at,
            },
            cache: cache_path(&loaded.source),
            config,
            known: Mutex::default(),
        });
        let desired = match fleet.target().await {
            Ok(desired) => desired,
            Err(e) => match fleet.read_cache() {
                Some(cached) => {
                    fleet.record(&cached);
                    tracing::warn!(
                        store = %fleet.store.describe(),
                        error = %e,
                        cache = %fleet.cache.display(),
                        version = cached.id,
                        "THE FLEET STORE IS UNREACHABLE: starting from the cached fleet document, which may be out of date; the fleet is followed once the store answers"
                    );
                    Some(cached)
                }
                None => {
                    return Err(FleetError::NoCache {
                        reason: e.to_string(),
                        cache: fleet.cache.clone(),
                    }
                    .into());
                }
            },
        };
        let document = match &desired {
            Some(version) => version.document.as_str(),
            None => {
                tracing::info!(
                    fleet = fleet.name(),
                    "The fleet has no version yet: serving the local file alone until one is published (PATCH /admin/config publishes the first)"
                );
                ""
            }
        };
        let loaded = fleet.parse(&loaded.source, &loaded.text, document)?;
        tracing::info!(
            fleet = fleet.name(),
            instance = %fleet.identity.instance,
            store = %fleet.store.describe(),
            version = fleet.version_of(document),
            "Following the fleet"
        );
        Ok((fleet, loaded))
    }

    /// The fleet's name.
    pub(crate) fn name(&self) -> &str {
        &self.identity.fleet
    }

    /// What `/admin/status` names as the source.
    pub(crate) fn describe(&self) -> String {
        format!(
            "fleet {:?} at {} (instance {})",
            self.name(),
            self.store.describe(),
            self.identity.instance
        )
    }

    /// The version whose document is `text`; 0 for the empty document (no
    /// version yet) or one never seen.
    pub(crate) fn version_of(&self, text: &str) -> u64 {
        let known = self.known.lock().expect("known lock");
        known.versions.get(&sha256_hex(text)).copied().unwrap_or(0)
    }

    /// Remembers `version`'s id for its document, before anything serves it.
    fn record(&self, version: &Version) {
        let mut known = self.known.lock().expect("known lock");
        let id = known
            .versions
            .entry(version.meta.sha256.clone())
            .or_default();
        *id = (*id).max(version.id);
    }

    /// Remembers `version` as the desired one (the pointer may move back:
    /// a halted rollout).
    fn record_desired(&self, version: &Version) {
        self.record(version);
        let mut known = self.known.lock().expect("known lock");
        known.desired = Some(version.meta.clone());
        known.rolling_out = version
            .rollout
            .as_ref()
            .is_some_and(|r| r.phase.in_progress());
    }

    /// Whether the desired version read last is in a canary rollout.
    pub(crate) fn rolling_out(&self) -> bool {
        self.known.lock().expect("known lock").rolling_out
    }

    /// `document` laid over the file at `path` whose text is `local`;
    /// errors name the fleet and the version.
    pub(crate) fn parse<C: AppConfig>(
        &self,
        path: &Path,
        local: &str,
        document: &str,
    ) -> Result<Loaded<C>, kiln_config::ConfigError> {
        let name = match self.version_of(document) {
            0 if document.is_empty() => format!("fleet {:?} (no version)", self.name()),
            0 => format!("fleet {:?} (a new version)", self.name()),
            version => format!("fleet {:?} version {version}", self.name()),
        };
        kiln_config::parse_overlaid(
            path,
            local,
            Overlay {
                name: &name,
                text: document,
            },
        )
    }

    /// The desired version now, remembered; the store's error otherwise.
    pub(crate) async fn desired(&self) -> Result<Option<Version>, FleetError> {
        let desired = self.store.desired(self.name()).await?;
        if let Some(version) = &desired {
            self.record_desired(version);
        }
        Ok(desired)
    }

    /// The version this instance should serve: the desired one, or while a
    /// canary rollout of it leaves this instance out, the previous one.
    pub(crate) async fn target(&self) -> Result<Option<Version>, FleetError> {
        let Some(desired) = self.desired().await? else {
            return Ok(None);
        };
        let target = desired.rollout.as_ref().map_or(desired.id, |rollout| {
            rollout.target(desired.id, &self.identity.instance)
        });
        if target == desired.id {
            return Ok(Some(desired));
        }
        let earlier = self.store.version(self.name(), target).await?;
        let earlier = earlier.ok_or_else(|| FleetError::Unavailable {
            reason: format!(
                "fleet {:?} has no version {target}, which its rollout names",
                self.name()
            ),
        })?;
        self.record(&earlier);
        Ok(Some(earlier))
    }

    /// The version the desired one was made from, with a message saying
    /// it is a rollback to it.
    ///
    /// # Errors
    ///
    /// [`ReloadError::NoPrevious`] when there is none, or the store's error.
    pub(crate) async fn earlier(&self) -> Result<Earlier, ReloadError> {
        let desired = self.desired().await?.ok_or(ReloadError::NoPrevious)?;
        let parent = desired.meta.parent.ok_or(ReloadError::NoPrevious)?;
        let earlier = self
            .store
            .version(self.name(), parent)
            .await
            .map_err(FleetError::from)?
            .ok_or(ReloadError::NoPrevious)?;
        Ok(Earlier {
            document: earlier.document,
            message: format!("rollback from version {} to {parent}", desired.id),
        })
    }

    /// Publishes `document` in place of version `expected` (0: none yet).
    pub(crate) async fn publish(
        &self,
        expected: u64,
        document: &str,
        message: &str,
    ) -> Result<u64, FleetError> {
        let author = format!("instance {}", self.identity.instance);
        let draft = Draft {
            document,
            author: &author,
            message,
            canary: None,
        };
        Ok(self.publish_draft(expected, draft).await?.id)
    }

    /// Publishes `document` in place of version `expected` to a cohort of
    /// `canary` live instances first, promoted to every instance once each
    /// member ACKed and `hold` passed.
    pub(crate) async fn publish_canary(
        &self,
        expected: u64,
        document: &str,
        message: &str,
        canary: Canary,
        hold: Duration,
    ) -> Result<(u64, RolloutView), FleetError> {
        if expected == 0 {
            return Err(FleetError::NothingToCanary {
                fleet: self.name().to_owned(),
            });
        }
        let mut live: Vec<String> = self
            .store
            .instances(self.name())
            .await?
            .into_iter()
            .filter(|row| row.silent_s <= self.missing_after())
            .map(|row| row.instance)
            .collect();
        if !live.contains(&self.identity.instance) {
            live.push(self.identity.instance.clone());
        }
        let author = format!("instance {}", self.identity.instance);
        let draft = Draft {
            document,
            author: &author,
            message,
            canary: Some(CanaryPlan {
                canary,
                hold,
                live: &live,
            }),
        };
        let version = self.publish_draft(expected, draft).await?;
        let rollout = version
            .rollout
            .as_ref()
            .expect("a canary publish has a rollout");
        tracing::info!(
            fleet = self.name(),
            version = version.id,
            cohort = ?rollout.cohort,
            hold = %humantime::format_duration(hold),
            "Rolling out to a canary cohort first"
        );
        Ok((version.id, rollout.view()))
    }

    /// Seconds without a heartbeat after which an instance is `missing`.
    fn missing_after(&self) -> f64 {
        3.0 * self.config.heartbeat.as_secs_f64()
    }

    async fn publish_draft(&self, expected: u64, draft: Draft<'_>) -> Result<Version, FleetError> {
        match self.store.publish(self.name(), expected, draft).await? {
            Published::Version(version) => {
                self.record_desired(&version);
                tracing::info!(
                    fleet = self.name(),
                    version = version.id,
                    parent = expected,
                    "Published a fleet version"
                );
                Ok(*version)
            }
            Published::Stale { current } => Err(FleetError::Stale {
                fleet: self.name().to_owned(),
                current,
            }),
        }
    }

    /// Writes this instance's row.
    async fn report(&self, report: &Report) -> Result<(), StoreError> {
        self.store.report(&self.identity, report).await
    }

    /// ACK: `report` (an [`Applied`](ReportState::Applied) one) written,
    /// then its `document` cached for a start without the store.
    pub(crate) async fn acknowledge(
        &self,
        report: &Report,
        document: &str,
    ) -> Result<(), StoreError> {
        self.report(report).await?;
        self.known.lock().expect("known lock").acked_at = Some(SystemTime::now());
        if let Some(version) = report.applied {
            self.write_cache(version, document).await;
        }
        Ok(())
    }

    /// Whether this instance's row is missing (then reported anew).
    async fn heartbeat(&self) -> Result<bool, StoreError> {
        self.store.heartbeat(&self.identity).await
    }

    /// `/admin/fleet`: the desired version and every instance's state, or
    /// what is known while the store is unreachable.
    pub(crate) async fn view(&self) -> FleetView {
        // While the store is known to be down, answer at once with what is
        // known: the follower finds out when it is back.
        let health = self.store.health();
        let (desired, instances) = if health.error.is_none() {
            let desired = self.desired().await.ok();
            (desired, self.store.instances(self.name()).await.ok())
        } else {
            (None, None)
        };
        let known = self.known.lock().expect("known lock").desired.clone();
        let desired_meta = match &desired {
            Some(version) => version.as_ref().map(|v| v.meta.clone()),
            None => known,
        };
        let desired_id = desired_meta.as_ref().map(|d| d.version);
        let rollout = desired.flatten().and_then(|d| d.rollout);
        FleetView {
            fleet: self.name().to_owned(),
            instance: self.identity.instance.clone(),
            store: StoreView {
                url: self.store.describe(),
                health: self.store.health(),
            },
            desired: desired_meta,
            rollout: rollout.as_ref().map(Rollout::view),
            instances: instances.map(|rows| {
                rows.iter()
                    .map(|row| self.instance_view(row, desired_id, rollout.as_ref()))
                    .collect()
            }),
        }
    }

    /// Waits until no rollout is in progress and every live instance has
    /// answered the version meant for it (ACK or NACK), or for
    /// `fleet.ack_timeout` plus `patience` (a rollout's hold and its
    /// cohort's time); every instance's state then.
    pub(crate) async fn wait_all(
        &self,
        patience: Duration,
    ) -> Result<Vec<InstanceView>, FleetError> {
        let deadline = tokio::time::Instant::now() + self.config.ack_timeout + patience;
        loop {
            let desired = self.desired().await?;
            let rows = self.store.instances(self.name()).await?;
            let rollout = desired.as_ref().and_then(|d| d.rollout.as_ref());
            let views: Vec<InstanceView> = rows
                .iter()
                .map(|row| self.instance_view(row, desired.as_ref().map(|d| d.id), rollout))
                .collect();
            let settled = rollout.is_none_or(|r| !r.phase.in_progress())
                && views
                    .iter()
                    .all(|view| matches!(view.state, "missing" | "in-sync" | "rejected"));
            if settled || tokio::time::Instant::now() >= deadline {
                return Ok(views);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How long a canary rollout with `hold` may take before it settles:
    /// its cohort's `fleet.ack_timeout`, then the hold.
    pub(crate) fn rollout_patience(&self, hold: Duration) -> Duration {
        self.config.ack_timeout + hold
    }

    /// Drives the fleet's rollout one step if this instance holds its lock;
    /// whether a rollout is still in progress.
    pub(crate) async fn steward(&self) -> Result<bool, FleetError> {
        use self::store::Stewarded;
        Ok(
            match self
                .store
                .steward(&self.identity, self.config.ack_timeout)
                .await?
            {
                Stewarded::Idle => false,
                Stewarded::Elsewhere => true,
                Stewarded::Stepped(rollout) => rollout.phase.in_progress(),
            },
        )
    }

    /// An instance's row with its state as the fleet sees it: against the
    /// version meant for it (`desired`, or outside a canary cohort the
    /// previous one).
    fn instance_view(
        &self,
        row: &InstanceRow,
        desired: Option<u64>,
        rollout: Option<&Rollout>,
    ) -> InstanceView {
        let desired = desired.map(|d| rollout.map_or(d, |r| r.target(d, &row.instance)));
        let periods = self.missing_after();
        let answered_late = row
            .desired_age_s
            .is_some_and(|age| age > self.config.ack_timeout.as_secs_f64());
        let state = if row.silent_s > periods {
            "missing"
        } else if row.applied == desired {
            "in-sync"
        } else if row.state == ReportState::Rejected.as_str() && row.version == desired {
            "rejected"
        } else if answered_late {
            "stale"
        } else {
            "applying"
        };
        let rejected = state == "rejected";
        InstanceView {
            instance: row.instance.clone(),
            host: row.host.clone(),
            pid: row.pid,
            applied: row.applied,
            state,
            version: row.version,
            error: row.error.clone().filter(|_| rejected),
            key: row.key.clone().filter(|_| rejected),
            generation: row.generation,
            heartbeat_at: row.heartbeat_at.clone(),
            started_at: row.started_at.clone(),
        }
    }

    /// The figures `/admin/metrics` shows, with `serving` the current
    /// generation's text.
    pub(crate) fn figures(&self, serving: &str) -> FleetFigures {
        let applied = self.version_of(serving);
        let known = self.known.lock().expect("known lock");
        FleetFigures {
            applied,
            desired: known.desired.as_ref().map_or(0, |d| d.version),
            connected: self.store.health().state == "connected",
            acked_at: known.acked_at,
        }
    }

    /// The store's connection state, for `/admin/status`.
    pub(crate) fn health(&self) -> StoreHealth {
        self.store.health()
    }

    /// Keeps `document` (version `version`) for a start without the store.
    async fn write_cache(&self, version: u64, document: &str) {
        let meta = self.known.lock().expect("known lock").desired.clone();
        let meta = meta.filter(|m| m.version == version);
        let cached = Cached {
            fleet: self.name().to_owned(),
            version,
            sha256: sha256_hex(document),
            author: meta.as_ref().map(|m| m.author.clone()).unwrap_or_default(),
            message: meta.as_ref().map(|m| m.message.clone()).unwrap_or_default(),
            created_at: meta.map(|m| m.created_at).unwrap_or_default(),
            document: document.to_owned(),
        };
        let path = self.cache.clone();
        let written = tokio::task::spawn_blocking(move || {
            let text = serde_json::to_string_pretty(&cached).expect("the cache serializes");
            kiln_config::write_private(&path, &text)
        })
        .await;
        if let Ok(Err(e)) = written {
            tracing::warn!(cache = %self.cache.display(), error = %e, "Could not cache the applied fleet document; a start without the store would fail");
        }
    }

    /// The cached document of this fleet, if any and intact.
    fn read_cache(&self) -> Option<Version> {
        let text = std::fs::read_to_string(&self.cache).ok()?;
        let cached: Cached = serde_json::from_str(&text).ok()?;
        if cached.fleet != self.name() || cached.sha256 != sha256_hex(&cached.document) {
            tracing::warn!(cache = %self.cache.display(), "Ignoring the fleet cache: it is another fleet's or damaged");
            return None;
        }
        Some(Version {
            id: cached.version,
            rollout: None,
            meta: VersionMeta {
                version: cached.version,
                sha256: cached.sha256,
                author: cached.author,
                message: cached.message,
                parent: None,
                created_at: cached.created_at,
            },
            document: cached.document,
        })
    }
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("fleet", &self.identity.fleet)
            .field("instance", &self.identity.instance)
            .field("store", &self.store.describe())
            .finish_non_exhaustive()
    }
}

/// A version's document to publish again, and why.
#[derive(Debug)]
pub(crate) struct Earlier {
    pub(crate) document: String,
    pub(crate) message: String,
}

/// `GET /admin/fleet`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct FleetView {
    /// The fleet's name.
    fleet: String,
    /// This instance's name.
    instance: String,
    /// The store and the connection to it.
    store: StoreView,
    /// The desired version (the last one read while the store is
    /// unreachable); `null` before the first publish.
    desired: Option<VersionMeta>,
    /// The canary rollout of the desired version (or the halted one it
    /// replaced); `null` when it was published without a canary.
    rollout: Option<RolloutView>,
    /// Every instance's row; `null` while the store is unreachable.
    instances: Option<Vec<InstanceView>>,
}

impl FleetView {
    /// The rollout it shows.
    pub(crate) fn rollout(&self) -> Option<&RolloutView> {
        self.rollout.as_ref()
    }
}

/// The store in [`FleetView`].
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct StoreView {
    /// Its URL, password redacted.
    url: String,
    /// Whether it answers.
    #[serde(flatten)]
    health: StoreHealth,
}

/// One instance in [`FleetView`].
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct InstanceView {
    /// Its name (`fleet.instance`).
    instance: String,
    /// Its host.
    host: String,
    /// Its process id.
    pid: u32,
    /// The version it serves.
    applied: Option<u64>,
    /// `in-sync`, `applying`, `rejected` (see `error`), `stale` (no answer
    /// within `ack_timeout`) or `missing` (no heartbeat for 3 periods).
    state: &'static str,
    /// The version its last report is about.
    version: Option<u64>,
    /// Why it rejected the desired version.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// The key at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    /// Its kiln generation.
    generation: u64,
    /// Its last heartbeat (RFC 3339, UTC).
    heartbeat_at: String,
    /// When it started (RFC 3339, UTC).
    started_at: String,
}

/// The key a refusal names (an invalid key, the first restart-only key, a
/// key the environment overrides), for an instance's NACK.
fn error_key(error: &ReloadError) -> Option<String> {
    match error {
        ReloadError::Invalid(config) => config.key().map(str::to_owned),
        ReloadError::RestartRequired { keys } => Some(keys.join(", ")),
        ReloadError::Overridden { key, .. } => Some(key.clone()),
        _ => None,
    }
}

/// Hex SHA-256 of `text`.
pub(crate) fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `time` as RFC 3339 UTC, to the second.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// The cache of the last applied fleet document: `kiln.fleet-cache.json`
/// beside `kiln.toml`.
fn cache_path(config: &Path) -> PathBuf {
    let stem = config
        .file_stem()
        .map_or_else(|| "kiln".into(), |s| s.to_string_lossy());
    config.with_file_name(format!("{stem}.fleet-cache.json"))
}

/// This host's name (Linux), else `$HOSTNAME`, else `localhost`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_sits_beside_the_file() {
        assert_eq!(
            cache_path(Path::new("/etc/kiln/deploy.toml")),
            Path::new("/etc/kiln/deploy.fleet-cache.json")
        );
    }

    #[test]
    fn sha256_is_hex() {
        assert_eq!(
            sha256_hex(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
