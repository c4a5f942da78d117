//! The kernel's own count of connections it dropped or reset, from `nstat`
//! (iproute2): what a server's restart can cost that no client-side figure
//! shows, such as a connection reset in an accept queue that was closed.
//! The counters are the network namespace's: anything else running on the
//! machine adds to them too.

use std::process::Command;

use anyhow::{Context as _, bail};
use serde::Serialize;

/// The counters read, as `nstat` names them.
const NAMES: [&str; 3] = [
    "TcpExtListenOverflows",
    "TcpExtListenDrops",
    "TcpExtTCPAbortOnClose",
];

/// Drop and reset counters at one moment, or the difference between two.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Drops {
    /// Connections that found an accept queue full.
    pub listen_overflows: u64,
    /// Connections dropped at a listener for any reason (overflows included).
    pub listen_drops: u64,
    /// Connections reset because the process closed them with data unread.
    pub abort_on_close: u64,
}

impl Drops {
    /// The counters now (`nstat -asz`: absolute, zeros too, its history
    /// file left alone).
    ///
    /// # Errors
    ///
    /// When `nstat` cannot run or does not print the counters.
    pub fn read() -> anyhow::Result<Self> {
        let out = Command::new("nstat")
            .arg("-asz")
            .args(NAMES)
            .output()
            .context("cannot run nstat (iproute2)")?;
        if !out.status.success() {
            bail!("nstat failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Self::parse(&String::from_utf8_lossy(&out.stdout))
    }

    fn parse(text: &str) -> anyhow::Result<Self> {
        let value = |name: &str| -> anyhow::Result<u64> {
            text.lines()
                .find_map(|l| {
                    let mut words = l.split_whitespace();
                    (words.next() == Some(name)).then(|| words.next())?
                })
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no {name} in nstat's output: {text}"))
        };
        Ok(Self {
            listen_overflows: value(NAMES[0])?,
            listen_drops: value(NAMES[1])?,
            abort_on_close: value(NAMES[2])?,
        })
    }

    /// What the counters grew by since `before`.
    pub fn since(self, before: Self) -> Self {
        Self {
            listen_overflows: self
                .listen_overflows
                .saturating_sub(before.listen_overflows),
            listen_drops: self.listen_drops.saturating_sub(before.listen_drops),
            abort_on_close: self.abort_on_close.saturating_sub(before.abort_on_close),
        }
    }

    /// The sum of several differences.
    pub fn sum<'a>(all: impl IntoIterator<Item = &'a Self>) -> Self {
        all.into_iter().fold(Self::default(), |a, b| Self {
            listen_overflows: a.listen_overflows + b.listen_overflows,
            listen_drops: a.listen_drops + b.listen_drops,
            abort_on_close: a.abort_on_close + b.abort_on_close,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nstat_and_subtracts() {
        let text = "#kernel\nTcpExtListenOverflows           3                  0.0\n\
                    TcpExtListenDrops               5                  0.0\n\
                    TcpExtTCPAbortOnClose           12                 0.0\n";
        let now = Drops::parse(text).unwrap();
        assert_eq!(
            now,
            Drops {
                listen_overflows: 3,
                listen_drops: 5,
                abort_on_close: 12
            }
        );
        let before = Drops {
            listen_overflows: 1,
            listen_drops: 1,
            abort_on_close: 2,
        };
        assert_eq!(now.since(before).abort_on_close, 10);
        assert_eq!(Drops::sum(&[now, before]).listen_drops, 6);
        assert!(Drops::parse("#kernel\n").is_err());
    }

    #[test]
    fn reads_the_machine_counters() {
        let before = Drops::read().unwrap();
        assert!(Drops::read().unwrap().since(before).listen_drops < u64::MAX);
    }
}
