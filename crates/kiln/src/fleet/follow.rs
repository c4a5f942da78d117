//! Following the fleet: reconcile to the desired version on a hint, on
//! every (re)connection of the `LISTEN` connection and on a jittered poll;
//! heartbeat between.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::time::{Instant, sleep_until};

use super::store::{Hint, Report, ReportState};
use super::{Fleet, error_key};
use crate::reload::Candidate;
use crate::watch::jittered;
use crate::{App, Kiln, ReloadError, Trigger};

/// How often a rollout in progress is looked at: the granularity of its
/// hold and of its promotion.
const ROLLOUT_STEP: Duration = Duration::from_millis(200);

/// What the follower remembers between looks.
#[derive(Default)]
struct Followed {
    /// The last report written, not written again until it changes.
    reported: Option<Report>,
    /// A version refused for a reason that will not pass by itself (an
    /// invalid document): not tried again until the desired version moves.
    refused: Option<u64>,
}

impl<A: App> Kiln<A> {
    /// Follows `fleet` until kiln shuts down (the caller selects on the
    /// drain).
    pub(crate) async fn follow(&self, fleet: Arc<Fleet>) {
        let mut hints: BoxStream<'static, Hint> = if fleet.config.listen {
            fleet.store.hints(&fleet.identity)
        } else {
            tracing::info!(
                poll = %humantime::format_duration(fleet.config.poll),
                "fleet.listen is false: following the fleet by polling only"
            );
            futures_util::stream::pending().boxed()
        };
        let mut followed = Followed::default();
        let next_poll = || Instant::now() + jittered(fleet.config.poll, 0.2);
        let mut poll_at = next_poll();
        let mut beat_at = Instant::now() + fleet.config.heartbeat;
        let mut step_at = Instant::now();
        self.reconcile(&fleet, &mut followed).await;
        loop {
            let rolling_out = fleet.rolling_out();
            tokio::select! {
                // Every instance offers to drive a rollout; the one holding
                // the rollout lock does.
                () = sleep_until(step_at), if rolling_out => {
                    step_at = Instant::now() + ROLLOUT_STEP;
                    match fleet.steward().await {
                        Ok(true) => {}
                        // Ended (by this instance or another): look at once.
                        Ok(false) => self.reconcile(&fleet, &mut followed).await,
                        Err(e) => tracing::debug!(error = %e, "Cannot drive the fleet's rollout"),
                    }
                }
                hint = hints.next() => match hint {
                    Some(hint) => {
                        tracing::debug!(?hint, "Fleet hint");
                        self.reconcile(&fleet, &mut followed).await;
                    }
                    None => hints = futures_util::stream::pending().boxed(),
                },
                () = sleep_until(poll_at) => {
                    poll_at = next_poll();
                    self.reconcile(&fleet, &mut followed).await;
                }
                () = sleep_until(beat_at) => {
                    beat_at = Instant::now() + fleet.config.heartbeat;
                    if let Ok(false) = fleet.heartbeat().await {
                        // The row is gone (deleted by hand): write it anew.
                        followed.reported = None;
                        self.reconcile(&fleet, &mut followed).await;
                    }
                }
            }
        }
    }

    /// Reads the version meant for this instance (the desired one, or the
    /// previous one outside a canary cohort) and applies it if this
    /// instance does not serve it yet, then reports ACK or NACK. Does nothing while the store
    /// is unreachable (the last good generation keeps serving).
    async fn reconcile(&self, fleet: &Fleet, followed: &mut Followed) {
        // A reload in flight ends first: this instance's own PATCH publishes
        // its version before it swaps, and its hint must be compared with
        // the generation that PATCH swaps in, not applied a second time.
        drop(self.shared.reload_lock.lock().await);
        let desired = match fleet.target().await {
            Ok(desired) => desired,
            Err(e) => {
                tracing::debug!(error = %e, "Cannot read the fleet's desired version");
                return;
            }
        };
        let current = self.current();
        let Some(version) = desired else {
            // Nothing published yet: the local file alone serves.
            let report = Report::applied(0, current.id());
            self.report(fleet, followed, report, current.text()).await;
            return;
        };
        if version.document == current.text() {
            let report = Report::applied(version.id, current.id());
            self.report(fleet, followed, report, current.text()).await;
            return;
        }
        if followed.refused == Some(version.id) {
            return;
        }
        let applying = Report {
            applied: Some(fleet.version_of(current.text())).filter(|v| *v != 0),
            generation: current.id(),
            state: ReportState::Applying,
            version: Some(version.id),
            error: None,
            key: None,
        };
        self.report(fleet, followed, applying, "").await;
        let document = version.document.clone();
        let result = self
            .apply(Trigger::Fleet, move |_, _, _| {
                Ok(Candidate::Published(document))
            })
            .await;
        match result {
            Ok(outcome) => {
                followed.refused = None;
                let report = Report::applied(version.id, outcome.generation);
                self.report(fleet, followed, report, &version.document)
                    .await;
            }
            Err(error) => {
                // A resource that did not build may build next time (its
                // database back); an invalid document stays invalid.
                if !matches!(error, ReloadError::Build(_) | ReloadError::Draining) {
                    followed.refused = Some(version.id);
                }
                let current = self.current();
                let report = Report {
                    applied: Some(fleet.version_of(current.text())).filter(|v| *v != 0),
                    generation: current.id(),
                    state: ReportState::Rejected,
                    version: Some(version.id),
                    error: Some(kiln_resources::ErrorChain(&error).to_string()),
                    key: error_key(&error),
                };
                tracing::error!(
                    fleet = fleet.name(),
                    version = version.id,
                    key = report.key.as_deref(),
                    "Rejected the fleet's version (NACK); the current generation keeps serving"
                );
                self.report(fleet, followed, report, "").await;
            }
        }
    }

    /// Writes `report` unless it is the last one written; an ACK also
    /// caches `document`.
    async fn report(&self, fleet: &Fleet, followed: &mut Followed, report: Report, document: &str) {
        if followed.reported.as_ref() == Some(&report) {
            return;
        }
        let written = match report.state {
            ReportState::Applied => fleet.acknowledge(&report, document).await,
            _ => fleet.report(&report).await,
        };
        match written {
            Ok(()) => followed.reported = Some(report),
            Err(e) => {
                tracing::warn!(error = %e, "Could not report to the fleet store; trying again on the next look")
            }
        }
    }
}
