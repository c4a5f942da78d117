//! The reload path: read the source, validate, diff, build and warm what
//! changed, build the app on every worker, then swap. Serialized; any
//! failure leaves the current generation serving, untouched.
//!
//! Each reload is a `reload` span (with its trigger) whose phases are spans
//! of their own, each recording its `took_ms`: `load` (pick and read the
//! candidate text), `validate` (parse and check it, refuse restart-only
//! changes, diff), `build` (build and warm the pools and resources that
//! changed), `warm` (prepare the app, build it on every worker and serve the
//! warm requests) and `swap` (write the text back for a patch or rollback,
//! then publish). The `Reloaded` line carries each phase's time too.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use kiln_config::{FileFormat, PatchError};
use kiln_resources::{ErrorChain, Pool};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::Instrument as _;

use crate::generation::build_generation;
use crate::history::HistoryEntry;
use crate::source::Source;
use crate::{App, Generation, Kiln, ReloadError};

/// What asked for a reload; logged with its outcome and kept in history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Trigger {
    /// `POST /admin/reload`.
    HttpReload,
    /// `PATCH /admin/config`.
    Patch,
    /// `POST /admin/rollback`.
    Rollback,
    /// SIGHUP.
    Signal,
    /// A change to the watched file.
    Watch,
    /// [`Kiln::reload`] called by the embedding application.
    Api,
    /// A new version of the fleet's document.
    Fleet,
    /// `POST /admin/fleet/publish` or `/admin/fleet/rollback`.
    Publish,
    /// A restart: a new process took over with this generation
    /// ([`Kiln::restart`], `POST /admin/restart`, SIGUSR2).
    Restart,
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::HttpReload => "http-reload",
            Self::Patch => "patch",
            Self::Rollback => "rollback",
            Self::Signal => "signal",
            Self::Watch => "watch",
            Self::Api => "api",
            Self::Fleet => "fleet",
            Self::Publish => "publish",
            Self::Restart => "restart",
        })
    }
}

/// A reload that was applied: every worker now serves `generation`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ReloadOutcome {
    /// The new generation's id.
    pub generation: u64,
    /// The generation it replaced.
    pub previous: u64,
    /// Key paths whose values changed (sorted).
    pub changed: Vec<String>,
    /// Resources built anew (the others were carried over, still warm).
    pub rebuilt: Vec<String>,
    /// Time from the call (including any wait for an earlier reload to
    /// end) to every worker serving the new generation; `took_ms`, whole
    /// milliseconds, in JSON.
    #[serde(rename = "took_ms", serialize_with = "crate::json_time::millis")]
    pub took: Duration,
}

/// Where a reload's candidate document comes from.
pub(crate) enum Candidate {
    /// The source's stored text as it is now.
    Stored,
    /// A new text for the source, written to it only once it has been
    /// validated and warmed, with what the writer said about it (a fleet
    /// version's message; by default the trigger and the admin client).
    Text(String, Option<String>),
    /// A text the source already holds (a fleet version read from its
    /// store): validated and warmed, never written back.
    Published(String),
}

/// Picks a reload's candidate from the source, the current generation and
/// the text of the one it replaced (for rollback); runs on the blocking pool.
pub(crate) trait Choose<C>:
    FnOnce(&dyn Source<C>, &Generation<C>, &Option<String>) -> Result<Candidate, ReloadError>
    + Send
    + 'static
{
}

impl<C, F> Choose<C> for F where
    F: FnOnce(&dyn Source<C>, &Generation<C>, &Option<String>) -> Result<Candidate, ReloadError>
        + Send
        + 'static
{
}

impl<A: App> Kiln<A> {
    /// Re-reads the configuration source and, if it is valid and every
    /// changed resource warms, swaps it in on every worker.
    ///
    /// Returns once every worker serves the new generation. Reloads are
    /// serialized: one that arrives during another waits, then reads the
    /// latest source.
    ///
    /// # Errors
    ///
    /// A [`ReloadError`]; nothing was applied.
    pub async fn reload(&self, trigger: Trigger) -> Result<ReloadOutcome, ReloadError> {
        self.apply(trigger, |_, _, _| Ok(Candidate::Stored)).await
    }

    /// Applies a JSON merge patch (RFC 7396) to the text of the current
    /// generation: the patched document is validated and warmed like a
    /// reload, then written to the source file atomically (comments, key
    /// order and formatting kept), then swapped in. With `if_match` (an
    /// `ETag` of `GET /admin/config`, i.e. a generation id), a patch made
    /// against an older generation is refused.
    ///
    /// # Errors
    ///
    /// A [`ReloadError`]; nothing was applied and the file is untouched.
    /// Among them: [`ReloadError::Drifted`] when the file on disk is no
    /// longer the current generation's text (an edit not reloaded yet, which
    /// the patch would otherwise apply unseen), and
    /// [`ReloadError::Overridden`] when the patch sets a key an environment
    /// variable overrides (the change would not apply).
    pub async fn patch(
        &self,
        patch: &Value,
        if_match: Option<&str>,
    ) -> Result<ReloadOutcome, ReloadError> {
        let (patch, if_match) = (patch.clone(), if_match.map(str::to_owned));
        self.apply(Trigger::Patch, move |source, current, _| {
            if let Some(tag) = &if_match {
                source.check_if_match(tag, current.text(), current.id())?;
            }
            if source.format() != Some(FileFormat::Toml) {
                return Err(PatchError::NotToml {
                    origin: source.describe(),
                }
                .into());
            }
            if let Some((key, variable)) = overridden(&patch, current.env_overrides()) {
                return Err(ReloadError::Overridden {
                    key: key.clone(),
                    variable: variable.clone(),
                });
            }
            source.check_unchanged(current.text(), current.id())?;
            Ok(Candidate::Text(
                kiln_config::merge_patch_toml(current.text(), &patch)?,
                None,
            ))
        })
        .await
    }

    /// Returns to the configuration the current generation replaced: it is
    /// validated, warmed, written back to the source file and swapped in,
    /// like a reload. Rolling back twice returns to where it started.
    ///
    /// # Errors
    ///
    /// [`ReloadError::NoPrevious`] before the first reload,
    /// [`ReloadError::Drifted`] when the file on disk is no longer the
    /// current generation's text (rolling back would discard that edit
    /// unseen), or any reload error; nothing was applied.
    pub async fn rollback(&self) -> Result<ReloadOutcome, ReloadError> {
        self.apply(Trigger::Rollback, |source, current, previous| {
            let text = previous.clone().ok_or(ReloadError::NoPrevious)?;
            source.check_unchanged(current.text(), current.id())?;
            Ok(Candidate::Text(text, None))
        })
        .await
    }

    /// The last reload attempts (`reload.history` of them), newest first.
    pub fn history(&self) -> Vec<HistoryEntry> {
        self.shared.history.newest_first()
    }

    /// Runs one serialized reload with the candidate `choose` picks, records
    /// it in the history (under the reload lock, so that the history lists
    /// attempts in the order they ran), then logs it.
    pub(crate) async fn apply(
        &self,
        trigger: Trigger,
        choose: impl Choose<A::Config>,
    ) -> Result<ReloadOutcome, ReloadError> {
        // tokio's clock, which is std's unless a test pauses it.
        let started = tokio::time::Instant::now();
        let peer = crate::history::peer();
        tracing::debug!(%trigger, "Reload requested");
        let mut previous_text = self.shared.reload_lock.lock().await;
        // Under the lock, so that queued reloads tell systemd one at a time.
        self.shared.systemd.reloading();
        let mut phases = Phases::default();
        let result = self
            .apply_locked(&mut previous_text, started, trigger, &mut phases, choose)
            .instrument(tracing::info_span!("reload", %trigger))
            .await;
        self.shared
            .systemd
            .reloaded(self.current().id(), result.is_err());
        let capacity = self.current().config().reload.history;
        self.shared.history.record(trigger, peer, &result, capacity);
        self.shared
            .metrics
            .reloaded(trigger, result.is_ok(), started.elapsed());
        drop(previous_text);
        match &result {
            Ok(outcome) => tracing::info!(
                %trigger,
                peer = peer.map(tracing::field::display),
                generation = outcome.generation,
                changed = outcome.changed.join(","),
                rebuilt = outcome.rebuilt.join(","),
                took_ms = outcome.took.as_millis() as u64,
                load_ms = phases.ms(Phase::Load),
                validate_ms = phases.ms(Phase::Validate),
                build_ms = phases.ms(Phase::Build),
                warm_ms = phases.ms(Phase::Warm),
                swap_ms = phases.ms(Phase::Swap),
                "Reloaded"
            ),
            Err(e) => {
                tracing::error!(
                    %trigger,
                    peer = peer.map(tracing::field::display),
                    error = %ErrorChain(e),
                    load_ms = phases.ms(Phase::Load),
                    validate_ms = phases.ms(Phase::Validate),
                    build_ms = phases.ms(Phase::Build),
                    warm_ms = phases.ms(Phase::Warm),
                    "Reload refused; the current generation keeps serving"
                )
            }
        }
        result
    }

    /// The reload itself, with the reload lock held: `previous_text` is the
    /// text of the configuration the current one replaced. `choose`, the
    /// file read and the parse run on the blocking pool, like the write:
    /// never on a runtime that drives connections.
    async fn apply_locked(
        &self,
        previous_text: &mut Option<String>,
        started: tokio::time::Instant,
        trigger: Trigger,
        phases: &mut Phases,
        choose: impl Choose<A::Config>,
    ) -> Result<ReloadOutcome, ReloadError> {
        if self.shared.readiness.is_draining() {
            return Err(ReloadError::Draining);
        }
        let current = self.current();
        let source = &self.shared.source;
        let (candidate, text) = phases
            .run(
                Phase::Load,
                blocking({
                    let source = source.clone();
                    let (current, previous) = (current.clone(), previous_text.clone());
                    move || {
                        let candidate = choose(source.as_ref(), &current, &previous)?;
                        let text = match &candidate {
                            Candidate::Stored => source.read()?,
                            Candidate::Text(text, _) | Candidate::Published(text) => text.clone(),
                        };
                        Ok::<_, ReloadError>((candidate, text))
                    }
                }),
            )
            .await?;
        let (loaded, changed, level_changed) = phases
            .run(Phase::Validate, async {
                let loaded = blocking({
                    let source = source.clone();
                    move || source.parse(text)
                })
                .await?;
                let restart = current.config().restart_required(&loaded.config);
                if !restart.is_empty() {
                    return Err(ReloadError::RestartRequired { keys: restart });
                }
                let level_changed = loaded.config.log.level != current.config().log.level;
                if level_changed {
                    crate::logging::check_level_change()?;
                }
                let changed = kiln_config::diff(current.raw(), &loaded.raw);
                Ok((loaded, changed, level_changed))
            })
            .await?;
        let level = loaded.config.log.level;
        let generation = phases
            .run(
                Phase::Build,
                build_generation(
                    &self.shared.registry,
                    self.base_dir(),
                    current.id() + 1,
                    loaded,
                    Some(&current),
                ),
            )
            .await?;
        self.shared
            .metrics
            .warmed(crate::metrics::Phase::Resources, phases.took(Phase::Build));
        let generation = Arc::new(generation);
        let mut refused = CloseIfRefused(Some(&generation));
        // The old generation's pools the new one does not share.
        let replaced: Vec<Pool> = current
            .pools()
            .iter()
            .filter(|(name, _)| generation.pool(name).is_none() || generation.is_new(name))
            .map(|(_, pool)| pool.clone())
            .collect();
        let staged = phases
            .run(
                Phase::Warm,
                self.stage(generation.clone(), generation.built()),
            )
            .await?;
        // A drain that began meanwhile is closing the pools: publish nothing.
        if self.shared.readiness.is_draining() {
            return Err(ReloadError::Draining);
        }
        let rebuilt = [generation.built(), staged.rebuilt()].concat();
        let generation = phases
            .run(Phase::Swap, async {
                if let Candidate::Text(text, message) = candidate {
                    let (source, current) = (source.clone(), current.clone());
                    let peer = crate::history::peer().map(|peer| format!(" from {peer}"));
                    let message =
                        message.unwrap_or_else(|| format!("{trigger}{}", peer.unwrap_or_default()));
                    blocking(move || source.write(current.text(), &text, current.id(), &message))
                        .await?;
                }
                refused.0 = None;
                let generation = staged.generation_id();
                self.swap(staged);
                if level_changed {
                    crate::logging::set_level(level);
                }
                Ok::<_, ReloadError>(generation)
            })
            .await?;
        current.retire_when_dropped(replaced);
        *previous_text = Some(current.text().to_owned());

        Ok(ReloadOutcome {
            generation,
            previous: current.id(),
            changed,
            rebuilt,
            took: started.elapsed(),
        })
    }
}

/// A phase of a reload: a span of its own under the `reload` span.
#[derive(Clone, Copy, Debug)]
enum Phase {
    Load,
    Validate,
    Build,
    Warm,
    Swap,
}

impl Phase {
    /// The phase's span (span names are literals, so one arm each).
    fn span(self) -> tracing::Span {
        let took_ms = tracing::field::Empty;
        match self {
            Self::Load => tracing::info_span!("load", took_ms),
            Self::Validate => tracing::info_span!("validate", took_ms),
            Self::Build => tracing::info_span!("build", took_ms),
            Self::Warm => tracing::info_span!("warm", took_ms),
            Self::Swap => tracing::info_span!("swap", took_ms),
        }
    }
}

/// How long each phase of one reload took; zero for a phase not reached.
#[derive(Debug, Default)]
struct Phases([Duration; 5]);

impl Phases {
    /// Runs `work` as `phase`, in its span, and records how long it took
    /// (in the span's `took_ms` too).
    async fn run<T>(&mut self, phase: Phase, work: impl Future<Output = T>) -> T {
        let span = phase.span();
        let started = tokio::time::Instant::now();
        let out = work.instrument(span.clone()).await;
        let took = started.elapsed();
        span.record("took_ms", took.as_millis() as u64);
        self.0[phase as usize] = took;
        out
    }

    fn took(&self, phase: Phase) -> Duration {
        self.0[phase as usize]
    }

    fn ms(&self, phase: Phase) -> u64 {
        self.took(phase).as_millis() as u64
    }
}

/// Ends the pools built for a generation when it is refused (dropped
/// without being disarmed), connections in use included: a warm-up that
/// timed out may still hold the generation and a query, and each retry
/// would add more connections.
struct CloseIfRefused<'a, C>(Option<&'a Generation<C>>);

impl<C> Drop for CloseIfRefused<'_, C> {
    fn drop(&mut self) {
        let Some(generation) = self.0 else { return };
        for name in generation.built() {
            generation.pools().terminate(name);
        }
    }
}

/// Runs `work` on the blocking pool (file reads, `toml_edit`, fsync), in
/// the caller's span.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(work))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// The first of `overrides` (key path → environment variable) that a merge
/// patch sets or removes, itself or under a table the patch sets or removes.
fn overridden<'a>(
    patch: &Value,
    overrides: &'a BTreeMap<String, String>,
) -> Option<(&'a String, &'a String)> {
    let mut patched = Vec::new();
    patched_paths("", patch, &mut patched);
    let under = |path: &str, key: &str| {
        path.strip_prefix(key)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
    };
    overrides
        .iter()
        .find(|(key, _)| patched.iter().any(|p| under(key, p) || under(p, key)))
}

/// The key paths a merge patch sets or removes: its leaves (a `null`, a
/// value that is not an object).
fn patched_paths(prefix: &str, patch: &Value, out: &mut Vec<String>) {
    let Value::Object(members) = patch else {
        return;
    };
    for (key, value) in members {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        if value.is_object() {
            patched_paths(&path, value, out);
        } else {
            out.push(path);
        }
    }
}

/// Whether an `If-Match` value names generation `id`: `*`, `"3"`, `W/"3"`,
/// or a list of them.
pub(crate) fn etag_matches(if_match: &str, id: u64) -> bool {
    if_match
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/").trim_matches('"') == id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_patch_touching_an_overridden_key_names_it() {
        let overrides: BTreeMap<String, String> =
            [("app.greeting".to_owned(), "KILN__APP__GREETING".to_owned())].into();
        let named = |patch: Value| overridden(&patch, &overrides).map(|(_, v)| v.as_str());
        assert_eq!(
            named(json!({"app": {"greeting": "x"}})),
            Some("KILN__APP__GREETING")
        );
        assert_eq!(named(json!({"app": null})), Some("KILN__APP__GREETING"));
        assert_eq!(
            named(json!({"app": {"greeting": {"deeper": 1}}})),
            Some("KILN__APP__GREETING")
        );
        assert_eq!(named(json!({"app": {"greetings": "x"}})), None);
        assert_eq!(
            named(json!({"pools": {"main": {"max_size": 3}}, "app": {}})),
            None
        );
        assert_eq!(named(json!("not an object")), None);
    }
}
