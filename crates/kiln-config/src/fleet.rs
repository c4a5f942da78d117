//! `[fleet]`: one configuration shared by many kiln processes through a
//! store (PostgreSQL), each instance reporting what it applied.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{ConnString, Invalid};

/// `[fleet]`: where the fleet's shared document lives and how this instance
/// follows it. Local to each instance: a fleet document may not set it.
/// Restart-only.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct FleetConfig {
    /// The store: a PostgreSQL URL or `key=value` string (its password is
    /// shown as `***`). kiln creates its tables in schema `kiln_fleet` on
    /// first use.
    pub store: ConnString,
    /// The fleet's name: many fleets may share one database.
    #[serde(default = "FleetConfig::default_name")]
    pub name: String,
    /// This instance's name in the fleet, stable across restarts; defaults
    /// to the host name and the main listener's port (`web-1:8080`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// How often this instance tells the store it is alive.
    #[serde(default = "FleetConfig::default_heartbeat", with = "humantime_serde")]
    pub heartbeat: Duration,
    /// How often the desired version is read even without a notification
    /// (jittered by ±20%): the bound on how late a missed hint is noticed.
    #[serde(default = "FleetConfig::default_poll", with = "humantime_serde")]
    pub poll: Duration,
    /// How long an instance may take to answer a new version before
    /// `/admin/fleet` calls it `stale`, and how long `PATCH ?wait=all`
    /// waits for every instance.
    #[serde(default = "FleetConfig::default_ack_timeout", with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// Hold a `LISTEN` connection for change notifications; `false` only
    /// polls (for a pooler in transaction mode, which cannot `LISTEN`).
    #[serde(default = "FleetConfig::default_listen")]
    pub listen: bool,
}

impl FleetConfig {
    fn default_name() -> String {
        "default".to_owned()
    }

    fn default_heartbeat() -> Duration {
        Duration::from_secs(5)
    }

    fn default_poll() -> Duration {
        Duration::from_secs(30)
    }

    fn default_ack_timeout() -> Duration {
        Duration::from_secs(10)
    }

    fn default_listen() -> bool {
        true
    }

    /// A fleet on `store` with every other key at its default.
    pub fn new(store: &str) -> Self {
        Self {
            store: ConnString::from(store),
            name: Self::default_name(),
            instance: None,
            heartbeat: Self::default_heartbeat(),
            poll: Self::default_poll(),
            ack_timeout: Self::default_ack_timeout(),
            listen: Self::default_listen(),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        let name_like = |value: &str| {
            !value.is_empty()
                && value.len() <= 200
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
        };
        if !name_like(&self.name) {
            return Err(Invalid::new(
                "name",
                "a name of letters, digits, '_', '-', '.' or ':' (at most 200)",
                format!("{:?}", self.name),
            ));
        }
        if let Some(instance) = &self.instance
            && !name_like(instance)
        {
            return Err(Invalid::new(
                "instance",
                "a name of letters, digits, '_', '-', '.' or ':' (at most 200)",
                format!("{instance:?}"),
            ));
        }
        if self.store.expose().trim().is_empty() {
            return Err(Invalid::new(
                "store",
                "a PostgreSQL connection string",
                "\"\"",
            ));
        }
        for (key, value) in [
            ("heartbeat", self.heartbeat),
            ("poll", self.poll),
            ("ack_timeout", self.ack_timeout),
        ] {
            if value.as_millis() == 0 {
                return Err(Invalid::new(
                    key,
                    "a duration of at least 1ms such as \"5s\"",
                    humantime::format_duration(value),
                ));
            }
        }
        Ok(())
    }
}
