//! Publishing a whole document as the fleet's next version, to every
//! instance at once or to a canary cohort first.

use std::time::Duration;

use super::Canary;
use super::rollout::RolloutView;
use crate::reload::Candidate;
use crate::{App, Kiln, ReloadError, ReloadOutcome, Trigger};

impl<A: App> Kiln<A> {
    /// Validates and warms `document` as this instance's configuration,
    /// publishes it as the fleet's next version (with `message`) in place of
    /// the one this instance serves (refused when `if_match` names another,
    /// or when the fleet moved on), then swaps it in.
    pub(crate) async fn publish_document(
        &self,
        document: String,
        message: Option<String>,
        if_match: Option<String>,
    ) -> Result<ReloadOutcome, ReloadError> {
        self.apply(Trigger::Publish, move |source, current, _| {
            if let Some(tag) = &if_match {
                source.check_if_match(tag, current.text(), current.id())?;
            }
            source.check_unchanged(current.text(), current.id())?;
            Ok(Candidate::Text(document, message))
        })
        .await
    }
}

impl<A: App> Kiln<A> {
    /// Checks `document` here (`if_match`, the fleet not moved on, valid
    /// over this instance's file, no restart-only key) and publishes it to
    /// a cohort of `canary` instances first, promoted after every member's
    /// ACK and `hold`. It is not applied here unless this instance is in the
    /// cohort (its follower then applies it, like every member's).
    pub(crate) async fn publish_canary(
        &self,
        document: String,
        message: Option<String>,
        if_match: Option<String>,
        canary: Canary,
        hold: Duration,
    ) -> Result<(u64, RolloutView), ReloadError> {
        let fleet = self.shared.fleet.clone().expect("fleet mode");
        let expected = tokio::task::spawn_blocking({
            let (source, current) = (self.shared.source.clone(), self.current());
            let (document, fleet) = (document.clone(), fleet.clone());
            move || {
                if let Some(tag) = &if_match {
                    source.check_if_match(tag, current.text(), current.id())?;
                }
                source.check_unchanged(current.text(), current.id())?;
                let loaded = source.parse(document)?;
                let keys = current.config().restart_required(&loaded.config);
                if !keys.is_empty() {
                    return Err(ReloadError::RestartRequired { keys });
                }
                Ok(fleet.version_of(current.text()))
            }
        })
        .await
        .expect("the checks do not panic")?;
        let peer = crate::history::peer().map(|peer| format!(" from {peer}"));
        let message = message.unwrap_or_else(|| {
            format!(
                "{} (canary {canary}){}",
                Trigger::Publish,
                peer.unwrap_or_default()
            )
        });
        Ok(fleet
            .publish_canary(expected, &document, &message, canary, hold)
            .await?)
    }
}
