//! Publishing a whole document as the fleet's next version.

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
