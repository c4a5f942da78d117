//! Where a configuration's text comes from, how it is written back, and how
//! changes to it are noticed: the [`Source`] the reload path, `PATCH`,
//! rollback and the watch go through, so that none of them cares whether
//! the configuration lives in a file ([`FileSource`]) or in a fleet store
//! ([`FleetSource`]).

mod file;
mod fleet;

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::BoxStream;
use kiln_config::{AppConfig, ConfigError, FileFormat, Loaded};

pub(crate) use file::FileSource;
pub(crate) use fleet::FleetSource;

use crate::fleet::Fleet;
use crate::{ReloadError, StartError};

/// The source `loaded` (a file as read at start-up) names: the file itself,
/// or, with a `[fleet]` section, the fleet's document laid over it (what
/// is returned then in place of `loaded`).
pub(crate) async fn open<C: AppConfig>(
    loaded: Loaded<C>,
) -> Result<(Arc<dyn Source<C>>, Option<Arc<Fleet>>, Loaded<C>), StartError> {
    let Some(config) = loaded.config.fleet.clone() else {
        let source = Arc::new(FileSource::new(loaded.source.clone()));
        return Ok((source, None, loaded));
    };
    let path = loaded.source.clone();
    let (fleet, loaded) = Fleet::open(loaded, config).await?;
    let source = Arc::new(FleetSource::new(path, fleet.clone()));
    Ok((source, Some(fleet), loaded))
}

/// Where a configuration lives. kiln holds one per handle (an
/// `Arc<dyn Source<C>>`) and calls it only from the reload path, with the
/// reload lock held, and only on the blocking pool: an implementation may
/// block (read a file, fsync, wait on a database) but must not need a
/// runtime of its own to be entered.
///
/// The fleet store ([`FleetSource`]: a PostgreSQL document with versions, a
/// desired pointer and `NOTIFY` hints) provides:
///
/// - [`describe`](Self::describe): what `/admin/status` and the logs name as
///   the source (a path; `fleet NAME` with its version).
/// - [`read`](Self::read): the stored text as it is now (the desired
///   version's document), compared with the current generation's text to
///   tell whether anything changed and whether a write would overwrite an
///   edit not loaded yet.
/// - [`parse`](Self::parse): a text (the stored one, or a candidate) made
///   into a validated [`Loaded`], environment overrides applied.
///   The fleet overlays its document on the local bootstrap file here; the
///   `Loaded::text` it returns is the text `PATCH` edits and
///   [`write`](Self::write) compares against.
/// - [`write`](Self::write): persist a text that was validated and warmed,
///   only if the stored text is still `expected`, else
///   [`ReloadError::Drifted`]. For a fleet this is the compare-and-swap on
///   the desired version, in the same transaction as its `pg_notify`.
/// - [`changes`](Self::changes): hints that the stored text may have
///   changed (file events; notifications and a jittered poll). A hint is
///   only a hint: the watch reads the text and reloads if it is new, retries
///   what failed for a reason that may pass, so a missed or spurious hint is
///   harmless.
///
/// `If-Match` on `PATCH` names a generation id, or for a source whose store
/// has versions of its own, that version ([`etag`](Self::etag)).
pub(crate) trait Source<C>: Send + Sync + 'static {
    /// What the configuration is, for status and logs: the file's path.
    fn describe(&self) -> String;

    /// The format of the text [`read`](Self::read) returns, if known; only a
    /// TOML text can be patched with its comments kept.
    fn format(&self) -> Option<FileFormat>;

    /// The stored text as it is now.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the source when it cannot be read, or
    /// another [`ReloadError`] (a store that does not answer).
    fn read(&self) -> Result<String, ReloadError>;

    /// Makes `text`, a candidate for this source, into a validated document.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the source and the key.
    fn parse(&self, text: String) -> Result<Loaded<C>, ConfigError>;

    /// The `ETag` of the configuration whose text is `text`, served by
    /// generation `generation`: the generation, unless the source has
    /// versions of its own (a fleet's).
    fn etag(&self, text: &str, generation: u64) -> u64 {
        let _ = text;
        generation
    }

    /// Refuses a change whose `If-Match` does not name the current
    /// configuration's [`etag`](Self::etag).
    ///
    /// # Errors
    ///
    /// [`ReloadError::Stale`], or the source's own kind of it.
    fn check_if_match(
        &self,
        if_match: &str,
        text: &str,
        generation: u64,
    ) -> Result<(), ReloadError> {
        if crate::reload::etag_matches(if_match, self.etag(text, generation)) {
            Ok(())
        } else {
            Err(ReloadError::Stale {
                current: generation,
            })
        }
    }

    /// Refuses when the stored text is no longer `expected`, the text of
    /// generation `generation` (the current one): an edit no generation has
    /// loaded, which writing over would discard unseen. `PATCH` and
    /// rollback call it before building anything; [`write`](Self::write)
    /// must check again.
    ///
    /// # Errors
    ///
    /// [`ReloadError::Drifted`], or an error reading the source.
    fn check_unchanged(&self, expected: &str, generation: u64) -> Result<(), ReloadError>;

    /// Stores `text` in place of `expected`, the text of generation
    /// `generation`, only if the stored text is still `expected` (as
    /// [`check_unchanged`](Self::check_unchanged)); `message` says why, for
    /// a source that keeps versions.
    ///
    /// # Errors
    ///
    /// [`ReloadError::Drifted`] (nothing written), or
    /// [`ReloadError::Persist`] when storing failed.
    fn write(
        &self,
        expected: &str,
        text: &str,
        generation: u64,
        message: &str,
    ) -> Result<(), ReloadError>;

    /// Hints that the stored text may have changed, for as long as the
    /// stream is held; `None` (logged) when nothing can be watched.
    /// `settings` gives the current generation's `[reload]` watch switch and
    /// debounce each time they are needed, since a reload may change them.
    fn changes(&self, settings: WatchSettings) -> Option<BoxStream<'static, ()>>;
}

/// The current generation's `[reload]` watch settings, read afresh each
/// time: `(watch, debounce)`.
pub(crate) type WatchSettings = Box<dyn Fn() -> (bool, Duration) + Send + Sync>;
