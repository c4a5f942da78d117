//! The memory of reload attempts, successful or not, for
//! `GET /admin/history`.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::{ReloadError, ReloadOutcome, Trigger};

/// One reload attempt (or restart).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HistoryEntry {
    /// The generation it made; `None` when it was refused (a refused
    /// attempt uses no generation id).
    pub generation: Option<u64>,
    /// When it ended (RFC 3339 in UTC, to the second, in JSON).
    #[serde(
        serialize_with = "crate::json_time::rfc3339",
        deserialize_with = "crate::json_time::parse_rfc3339"
    )]
    pub at: SystemTime,
    /// What asked for it.
    pub trigger: Trigger,
    /// The address of the admin client that asked, when known (`None` for
    /// a signal, the watch, code, or an embedder's listener that does not
    /// record client addresses).
    pub peer: Option<SocketAddr>,
    /// Key paths it changed.
    pub changed: Vec<String>,
    /// Resources it built anew.
    pub rebuilt: Vec<String>,
    /// Why it was refused.
    pub error: Option<String>,
}

tokio::task_local! {
    /// The admin client a reload runs for: set around the admin handler's
    /// call, read where the attempt is logged and recorded.
    static PEER: Option<SocketAddr>;
}

/// Runs `reload` (a reload, patch or rollback) on behalf of `peer`, which
/// its log line and history entry then name.
pub(crate) async fn with_peer<F: Future>(peer: Option<SocketAddr>, reload: F) -> F::Output {
    PEER.scope(peer, reload).await
}

/// The admin client the running reload is for, if any.
pub(crate) fn peer() -> Option<SocketAddr> {
    PEER.try_with(|peer| *peer).ok().flatten()
}

/// The last attempts, newest last, at most `reload.history` of them.
#[derive(Debug, Default)]
pub(crate) struct History(Mutex<VecDeque<HistoryEntry>>);

impl History {
    pub(crate) fn record(
        &self,
        trigger: Trigger,
        peer: Option<SocketAddr>,
        result: &Result<ReloadOutcome, ReloadError>,
        capacity: usize,
    ) {
        let at = SystemTime::now();
        let entry = match result {
            Ok(outcome) => HistoryEntry {
                generation: Some(outcome.generation),
                at,
                trigger,
                peer,
                changed: outcome.changed.clone(),
                rebuilt: outcome.rebuilt.clone(),
                error: None,
            },
            Err(e) => HistoryEntry {
                generation: None,
                at,
                trigger,
                peer,
                changed: Vec::new(),
                rebuilt: Vec::new(),
                error: Some(crate::ErrorChain(e).to_string()),
            },
        };
        let mut entries = self.0.lock().expect("history lock");
        entries.push_back(entry);
        while entries.len() > capacity {
            entries.pop_front();
        }
    }

    /// Puts back the attempts of a process this one restarted, oldest first.
    pub(crate) fn restore(&self, entries: Vec<HistoryEntry>) {
        self.0.lock().expect("history lock").extend(entries);
    }

    /// The attempts, oldest first (as a restart hands them over).
    pub(crate) fn oldest_first(&self) -> Vec<HistoryEntry> {
        let entries = self.0.lock().expect("history lock");
        entries.iter().cloned().collect()
    }

    /// The attempts, newest first.
    pub(crate) fn newest_first(&self) -> Vec<HistoryEntry> {
        let entries = self.0.lock().expect("history lock");
        entries.iter().rev().cloned().collect()
    }
}
