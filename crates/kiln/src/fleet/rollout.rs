//! Canary rollouts: a version goes to a cohort first, and to everyone once
//! every cohort member has ACKed and the hold has passed; one NACK (or a
//! member silent past `ack_timeout`) halts it and the pointer returns to the
//! previous version.
//!
//! The rollout lives in the desired row (column `rollout`), so whichever
//! instance holds the fleet's rollout lock can drive it ([`step`]): it
//! completes when the publisher is gone. The cohort is chosen once, at
//! publish, by hashing (instance, version) (Unleash-style stickiness): the
//! same instances for the same version, restarts or not, and a different
//! slice for the next version.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::rfc3339;
use super::store::{InstanceRow, ReportState};

/// How large a cohort is: a count, or a percentage of the live instances
/// rounded up; at least one instance either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Canary {
    Count(usize),
    Percent(u8),
}

impl std::str::FromStr for Canary {
    type Err = String;

    /// `N` (1 or more) or `N%` (1 to 100).
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || {
            format!("canary {text:?} is neither a count (1 or more) nor a percentage (1% to 100%)")
        };
        match text.trim().strip_suffix('%') {
            Some(percent) => match percent.parse::<u8>() {
                Ok(p @ 1..=100) => Ok(Self::Percent(p)),
                _ => Err(bad()),
            },
            None => match text.trim().parse::<usize>() {
                Ok(n @ 1..) => Ok(Self::Count(n)),
                _ => Err(bad()),
            },
        }
    }
}

impl std::fmt::Display for Canary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Count(n) => write!(f, "{n}"),
            Self::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// Where a rollout is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Phase {
    /// The cohort is applying the version; the others keep the previous one.
    Canary,
    /// Every cohort member ACKed; promotion once the hold has passed.
    Holding,
    /// Every instance follows the version.
    Promoted,
    /// A cohort member refused it (or did not answer): the desired version
    /// is the previous one again.
    Halted,
}

impl Phase {
    /// Whether the rollout still needs a steward.
    pub(crate) fn in_progress(self) -> bool {
        matches!(self, Self::Canary | Self::Holding)
    }
}

/// A rollout as stored in the desired row; times are seconds since the
/// Unix epoch on the store's clock, so that hosts' clocks do not matter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Rollout {
    pub(crate) phase: Phase,
    /// The version rolled out.
    pub(crate) version: u64,
    /// The version before it: the others serve it until promotion, and
    /// the cohort returns to it on a halt.
    pub(crate) previous: u64,
    /// What was asked (`2`, `10%`).
    pub(crate) canary: String,
    /// The instances that apply the version first, by name.
    pub(crate) cohort: Vec<String>,
    pub(crate) hold_ms: u64,
    pub(crate) started_at: f64,
    /// When the last cohort member ACKed: the hold runs from here.
    pub(crate) acked_at: Option<f64>,
    /// When it was promoted or halted.
    pub(crate) ended_at: Option<f64>,
    /// The instance that drove it last (held the rollout lock).
    pub(crate) steward: Option<String>,
    /// Why it halted.
    pub(crate) reason: Option<String>,
    /// The cohort member whose NACK halted it.
    pub(crate) rejected_by: Option<String>,
}

impl Rollout {
    /// A rollout of `version` (replacing `previous`) to a cohort of
    /// `canary` among `live`, started at `now`.
    pub(crate) fn start(
        version: u64,
        previous: u64,
        canary: Canary,
        hold: Duration,
        live: &[String],
        now: f64,
    ) -> Self {
        Self {
            phase: Phase::Canary,
            version,
            previous,
            canary: canary.to_string(),
            cohort: cohort(live, version, canary),
            hold_ms: hold.as_millis() as u64,
            started_at: now,
            acked_at: None,
            ended_at: None,
            steward: None,
            reason: None,
            rejected_by: None,
        }
    }

    /// The version `instance` should serve while the desired pointer is at
    /// `desired`: the previous one outside the cohort until promotion.
    pub(crate) fn target(&self, desired: u64, instance: &str) -> u64 {
        let waiting = self.phase.in_progress()
            && self.version == desired
            && !self.cohort.iter().any(|member| member == instance);
        if waiting { self.previous } else { desired }
    }

    /// The version the desired pointer holds in this rollout's phase.
    pub(crate) fn pointer(&self) -> u64 {
        match self.phase {
            Phase::Halted => self.previous,
            _ => self.version,
        }
    }

    /// What `/admin/fleet` shows.
    pub(crate) fn view(&self) -> RolloutView {
        let time = |secs: f64| rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs));
        let hold = Duration::from_millis(self.hold_ms);
        RolloutView {
            phase: self.phase,
            version: self.version,
            previous: self.previous,
            canary: self.canary.clone(),
            cohort: self.cohort.clone(),
            hold: humantime::format_duration(hold).to_string(),
            started_at: time(self.started_at),
            promote_at: self
                .acked_at
                .filter(|_| self.phase == Phase::Holding)
                .map(|at| time(at + hold.as_secs_f64())),
            ended_at: self.ended_at.map(time),
            steward: self.steward.clone(),
            reason: self.reason.clone(),
            rejected_by: self.rejected_by.clone(),
        }
    }
}

/// A rollout in `GET /admin/fleet`.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct RolloutView {
    /// `canary`, `holding`, `promoted` or `halted`.
    phase: Phase,
    /// The version rolled out.
    version: u64,
    /// The version the others serve until promotion (and the cohort
    /// returns to on a halt).
    previous: u64,
    /// What was asked: a count (`2`) or a percentage (`10%`).
    canary: String,
    /// The instances that apply the version first.
    cohort: Vec<String>,
    /// How long every cohort member must have ACKed before promotion.
    hold: String,
    /// When it was published (RFC 3339, UTC).
    started_at: String,
    /// While holding: when it is promoted (RFC 3339, UTC).
    promote_at: Option<String>,
    /// When it was promoted or halted (RFC 3339, UTC).
    ended_at: Option<String>,
    /// The instance driving it (holding the fleet's rollout lock).
    steward: Option<String>,
    /// Why it halted.
    reason: Option<String>,
    /// The cohort member whose rejection halted it (`null` when one did not
    /// answer in time).
    rejected_by: Option<String>,
}

/// The first `canary` of `live` ordered by SHA-256 of (instance, version):
/// deterministic, so the same instances for the same version wherever and
/// whenever it is computed.
pub(crate) fn cohort(live: &[String], version: u64, canary: Canary) -> Vec<String> {
    let size = match canary {
        Canary::Count(n) => n,
        Canary::Percent(p) => (live.len() * usize::from(p)).div_ceil(100),
    }
    .clamp(1, live.len().max(1));
    let mut ranked: Vec<([u8; 8], &String)> = live
        .iter()
        .map(|instance| {
            let digest = Sha256::new()
                .chain_update(instance.as_bytes())
                .chain_update([0])
                .chain_update(version.to_be_bytes())
                .finalize();
            (digest[..8].try_into().expect("8 bytes"), instance)
        })
        .collect();
    ranked.sort();
    ranked
        .into_iter()
        .take(size)
        .map(|(_, instance)| instance.clone())
        .collect()
}

/// One look at an in-progress rollout by the instance `steward`, holding
/// the rollout lock, with the cohort's rows and the store's clock `now`:
/// the rollout as it should be stored, or `None` when nothing changes.
/// A NACK of the version, or a member without an ACK `ack_timeout` after
/// the start, halts it; every member's ACK starts the hold; the hold's end
/// promotes it.
pub(crate) fn step(
    rollout: &Rollout,
    rows: &[InstanceRow],
    now: f64,
    ack_timeout: Duration,
    steward: &str,
) -> Option<Rollout> {
    let mut next = rollout.clone();
    next.steward = Some(steward.to_owned());
    let mut all_acked = true;
    for member in &rollout.cohort {
        let row = rows.iter().find(|row| &row.instance == member);
        let acked = row.is_some_and(|row| row.applied == Some(rollout.version));
        let rejected = row.filter(|row| {
            row.state == ReportState::Rejected.as_str() && row.version == Some(rollout.version)
        });
        if let Some(row) = rejected {
            let error = row.error.as_deref().unwrap_or("no reason given");
            next.rejected_by = Some(member.clone());
            return Some(next.halt(
                now,
                format!("{member} rejected version {}: {error}", rollout.version),
            ));
        }
        if !acked && now - rollout.started_at > ack_timeout.as_secs_f64() {
            return Some(next.halt(
                now,
                format!(
                    "{member} did not apply version {} within fleet.ack_timeout ({})",
                    rollout.version,
                    humantime::format_duration(ack_timeout)
                ),
            ));
        }
        all_acked &= acked;
    }
    if all_acked {
        let acked_at = *next.acked_at.get_or_insert(now);
        next.phase = Phase::Holding;
        if now - acked_at >= Duration::from_millis(rollout.hold_ms).as_secs_f64() {
            next.phase = Phase::Promoted;
            next.ended_at = Some(now);
        }
    }
    (next != *rollout).then_some(next)
}

impl Rollout {
    fn halt(mut self, now: f64, reason: String) -> Self {
        self.phase = Phase::Halted;
        self.ended_at = Some(now);
        self.reason = Some(reason);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("host-{i}:8080")).collect()
    }

    #[test]
    fn canary_parses_counts_and_percentages() {
        assert_eq!("2".parse(), Ok(Canary::Count(2)));
        assert_eq!("10%".parse(), Ok(Canary::Percent(10)));
        for bad in ["0", "0%", "101%", "-1", "x", "%", ""] {
            let err = bad.parse::<Canary>().unwrap_err();
            assert!(err.contains("neither a count"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_cohort_is_deterministic_rounded_up_and_at_least_one() {
        let live = names(10);
        let first = cohort(&live, 7, Canary::Percent(25));
        assert_eq!(first.len(), 3, "25% of 10, rounded up");
        let mut shuffled = live.clone();
        shuffled.reverse();
        assert_eq!(cohort(&shuffled, 7, Canary::Percent(25)), first);
        assert_eq!(cohort(&live, 7, Canary::Percent(1)).len(), 1);
        assert_eq!(cohort(&live, 7, Canary::Count(50)).len(), 10);
        // Another version picks another slice of the fleet.
        let slices: std::collections::BTreeSet<Vec<String>> = (1..20)
            .map(|v| cohort(&live, v, Canary::Count(1)))
            .collect();
        assert!(slices.len() > 3, "{slices:?}");
    }

    fn row(instance: &str, applied: Option<u64>, state: ReportState, version: u64) -> InstanceRow {
        InstanceRow {
            instance: instance.to_owned(),
            host: "h".to_owned(),
            pid: 1,
            started_at: String::new(),
            heartbeat_at: String::new(),
            applied,
            generation: 1,
            state: state.as_str().to_owned(),
            version: Some(version),
            error: Some("pools.main.warm: too many".to_owned()),
            key: None,
            silent_s: 0.0,
            desired_age_s: None,
        }
    }

    #[test]
    fn a_rollout_holds_after_every_ack_then_promotes_and_halts_on_a_nack() {
        let live = names(3);
        let rollout = Rollout::start(5, 4, Canary::Count(1), Duration::from_secs(1), &live, 100.0);
        let member = rollout.cohort[0].clone();
        let timeout = Duration::from_secs(10);
        let waiting = [row(&member, Some(4), ReportState::Applying, 5)];
        let next = step(&rollout, &waiting, 101.0, timeout, "me").unwrap();
        assert_eq!(
            (next.phase, next.steward.as_deref()),
            (Phase::Canary, Some("me"))
        );
        assert_eq!(
            step(&next, &waiting, 101.0, timeout, "me"),
            None,
            "nothing new"
        );

        let acked = [row(&member, Some(5), ReportState::Applied, 5)];
        let holding = step(&next, &acked, 102.0, timeout, "me").unwrap();
        assert_eq!(
            (holding.phase, holding.acked_at),
            (Phase::Holding, Some(102.0))
        );
        assert_eq!(step(&holding, &acked, 102.5, timeout, "me"), None);
        let promoted = step(&holding, &acked, 103.0, timeout, "me").unwrap();
        assert_eq!(promoted.phase, Phase::Promoted);
        assert_eq!(promoted.target(5, "not in the cohort"), 5);
        assert_eq!(holding.target(5, "not in the cohort"), 4);
        assert_eq!(holding.target(5, &member), 5);

        let nack = [row(&member, Some(4), ReportState::Rejected, 5)];
        let halted = step(&next, &nack, 102.0, timeout, "me").unwrap();
        assert_eq!((halted.phase, halted.pointer()), (Phase::Halted, 4));
        assert!(halted.reason.unwrap().contains("pools.main.warm"));
        assert_eq!(halted.rejected_by, Some(member.clone()));

        let late = step(&next, &waiting, 111.0, timeout, "me").unwrap();
        assert_eq!(late.phase, Phase::Halted);
        assert!(
            late.reason
                .unwrap()
                .contains("within fleet.ack_timeout (10s)")
        );
    }
}
