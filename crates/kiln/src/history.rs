//! The memory of reload attempts, successful or not, for
//! `GET /admin/history`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

use crate::{ReloadError, ReloadOutcome, Trigger};

/// One reload attempt.
#[derive(Clone, Debug, Serialize)]
pub struct HistoryEntry {
    /// The generation it made; `None` when it was refused (a refused
    /// attempt uses no generation id).
    pub generation: Option<u64>,
    /// When it ended (RFC 3339, UTC).
    pub at: String,
    /// What asked for it.
    pub trigger: Trigger,
    /// Key paths it changed.
    pub changed: Vec<String>,
    /// Resources it built anew.
    pub rebuilt: Vec<String>,
    /// Why it was refused.
    pub error: Option<String>,
}

/// The last attempts, newest last, at most `reload.history` of them.
#[derive(Debug, Default)]
pub(crate) struct History(Mutex<VecDeque<HistoryEntry>>);

impl History {
    pub(crate) fn record(
        &self,
        trigger: Trigger,
        result: &Result<ReloadOutcome, ReloadError>,
        capacity: usize,
    ) {
        let at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let entry = match result {
            Ok(outcome) => HistoryEntry {
                generation: Some(outcome.generation),
                at,
                trigger,
                changed: outcome.changed.clone(),
                rebuilt: outcome.rebuilt.clone(),
                error: None,
            },
            Err(e) => HistoryEntry {
                generation: None,
                at,
                trigger,
                changed: Vec::new(),
                rebuilt: Vec::new(),
                error: Some(e.to_string()),
            },
        };
        let mut entries = self.0.lock().expect("history lock");
        entries.push_back(entry);
        while entries.len() > capacity {
            entries.pop_front();
        }
    }

    /// The attempts, newest first.
    pub(crate) fn newest_first(&self) -> Vec<HistoryEntry> {
        let entries = self.0.lock().expect("history lock");
        entries.iter().rev().cloned().collect()
    }
}
