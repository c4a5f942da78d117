//! Where a configuration's text comes from, how it is written back, and how
//! changes to it are noticed: the [`Source`] the reload path, `PATCH`,
//! rollback and the watch go through, so that none of them cares whether
//! the configuration lives in a file ([`FileSource`], today's only one) or
//! in a fleet store.

mod file;

use std::time::Duration;

use futures_util::stream::BoxStream;
use kiln_config::{ConfigError, FileFormat, Loaded};

pub(crate) use file::FileSource;

use crate::ReloadError;

/// Where a configuration lives. kiln holds one per handle (an
/// `Arc<dyn Source<C>>`) and calls it only from the reload path, with the
/// reload lock held, and only on the blocking pool: an implementation may
/// block (read a file, fsync, wait on a database) but must not need a
/// runtime of its own to be entered.
///
/// A second implementation (the fleet store: a PostgreSQL document with
/// versions, a desired pointer and `NOTIFY` hints) provides:
///
/// - [`describe`](Self::describe): what `/admin/status` and the logs name as
///   the source (a path; `fleet NAME` with its version).
/// - [`read`](Self::read): the stored text as it is now (the desired
///   version's document), compared with the current generation's text to
///   tell whether anything changed and whether a write would overwrite an
///   edit not loaded yet.
/// - [`parse`](Self::parse) and [`load`](Self::load): a text, or the stored
///   one, made into a validated [`Loaded`], environment overrides applied.
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
/// `If-Match` on `PATCH` names a generation id today; a source whose store
/// has versions of its own would make that version the `ETag`.
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
    /// A [`ConfigError`] naming the source when it cannot be read.
    fn read(&self) -> Result<String, ConfigError>;

    /// Makes `text`, a candidate for this source, into a validated document.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the source and the key.
    fn parse(&self, text: String) -> Result<Loaded<C>, ConfigError>;

    /// Reads and parses the stored text.
    ///
    /// # Errors
    ///
    /// As [`read`](Self::read) and [`parse`](Self::parse).
    fn load(&self) -> Result<Loaded<C>, ConfigError> {
        self.parse(self.read()?)
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
    /// [`check_unchanged`](Self::check_unchanged)).
    ///
    /// # Errors
    ///
    /// [`ReloadError::Drifted`] (nothing written), or
    /// [`ReloadError::Persist`] when storing failed.
    fn write(&self, expected: &str, text: &str, generation: u64) -> Result<(), ReloadError>;

    /// Hints that the stored text may have changed, for as long as the
    /// stream is held; `None` (logged) when nothing can be watched.
    /// `settings` gives the current generation's `[reload]` watch switch and
    /// debounce each time they are needed, since a reload may change them.
    fn changes(&self, settings: WatchSettings) -> Option<BoxStream<'static, ()>>;
}

/// The current generation's `[reload]` watch settings, read afresh each
/// time: `(watch, debounce)`.
pub(crate) type WatchSettings = Box<dyn Fn() -> (bool, Duration) + Send + Sync>;
