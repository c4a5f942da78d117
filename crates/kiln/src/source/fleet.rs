//! A fleet's document as a [`Source`]: the desired version in the store,
//! laid over the instance's own file (file < fleet document < environment).
//! Writing is publishing: a compare-and-swap on the desired version, in the
//! transaction that sends the hint. The `ETag` is the fleet version.
//!
//! The trait's methods run on the blocking pool; the store is asynchronous,
//! so each call is driven here with the runtime's handle.

use std::path::PathBuf;
use std::sync::Arc;

use futures_util::stream::BoxStream;
use kiln_config::{AppConfig, ConfigError, ErrorKind, FileFormat, Loaded};

use super::{Source, WatchSettings};
use crate::ReloadError;
use crate::fleet::{Fleet, FleetError};
use crate::reload::etag_matches;

/// The fleet `fleet` follows, over the file at `path`.
pub(crate) struct FleetSource {
    path: PathBuf,
    fleet: Arc<Fleet>,
}

impl FleetSource {
    pub(crate) fn new(path: PathBuf, fleet: Arc<Fleet>) -> Self {
        Self { path, fleet }
    }

    /// The desired version's id and document (0 and `""` before the first).
    fn desired(&self) -> Result<(u64, String), ReloadError> {
        let desired = tokio::runtime::Handle::current().block_on(self.fleet.desired())?;
        Ok(desired.map_or((0, String::new()), |v| (v.id, v.document)))
    }

    fn stale(&self, current: u64) -> ReloadError {
        FleetError::Stale {
            fleet: self.fleet.name().to_owned(),
            current,
        }
        .into()
    }
}

impl<C: AppConfig> Source<C> for FleetSource {
    fn describe(&self) -> String {
        format!("{} over {}", self.fleet.describe(), self.path.display())
    }

    fn format(&self) -> Option<FileFormat> {
        Some(FileFormat::Toml)
    }

    fn read(&self) -> Result<String, ReloadError> {
        // The version meant for this instance: outside a canary cohort, the
        // previous one until promotion.
        let target = tokio::runtime::Handle::current().block_on(self.fleet.target())?;
        Ok(target.map_or_else(String::new, |v| v.document))
    }

    fn parse(&self, text: String) -> Result<Loaded<C>, ConfigError> {
        let local = std::fs::read_to_string(&self.path).map_err(|e| {
            ConfigError::new(
                &self.path,
                ErrorKind::Syntax(format!("cannot read the file: {e}")),
            )
        })?;
        self.fleet.parse(&self.path, &local, &text)
    }

    fn etag(&self, text: &str, _generation: u64) -> u64 {
        self.fleet.version_of(text)
    }

    fn check_if_match(
        &self,
        if_match: &str,
        text: &str,
        _generation: u64,
    ) -> Result<(), ReloadError> {
        let version = self.fleet.version_of(text);
        if etag_matches(if_match, version) {
            Ok(())
        } else {
            Err(self.stale(version))
        }
    }

    fn check_unchanged(&self, expected: &str, _generation: u64) -> Result<(), ReloadError> {
        let (current, _) = self.desired()?;
        if current == self.fleet.version_of(expected) {
            Ok(())
        } else {
            Err(self.stale(current))
        }
    }

    fn write(
        &self,
        expected: &str,
        text: &str,
        _generation: u64,
        message: &str,
    ) -> Result<(), ReloadError> {
        let expected = self.fleet.version_of(expected);
        let published = self.fleet.publish(expected, text, message);
        tokio::runtime::Handle::current().block_on(published)?;
        Ok(())
    }

    fn changes(&self, _settings: WatchSettings) -> Option<BoxStream<'static, ()>> {
        // Kiln::watch follows the fleet instead (fleet/follow.rs): applying a
        // version must know which one it is, to report it.
        None
    }
}
