//! How the Rust API's typed times (`SystemTime`, `Duration`) read in JSON:
//! RFC 3339 in UTC to the second, and whole milliseconds or seconds, the
//! shape `GET /admin/status`, `/admin/history` and the reload answer have
//! always had. Used with `#[serde(serialize_with = "...")]`.

use std::time::{Duration, SystemTime};

use serde::Serializer;

/// `2026-12-01T10:00:00Z`.
pub(crate) fn rfc3339<S: Serializer>(at: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_rfc3339_seconds(*at))
}

/// Reads back what [`rfc3339`] wrote (a restart hands the history over).
pub(crate) fn parse_rfc3339<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<SystemTime, D::Error> {
    let text = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(deserializer)?;
    humantime::parse_rfc3339(&text).map_err(serde::de::Error::custom)
}

/// Whole milliseconds, as a number.
pub(crate) fn millis<S: Serializer>(took: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(u64::try_from(took.as_millis()).unwrap_or(u64::MAX))
}

/// Whole seconds, as a number.
pub(crate) fn seconds<S: Serializer>(took: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(took.as_secs())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use serde_json::json;

    #[derive(serde::Serialize)]
    struct Times {
        #[serde(serialize_with = "super::rfc3339")]
        at: SystemTime,
        #[serde(serialize_with = "super::millis")]
        took_ms: Duration,
        #[serde(serialize_with = "super::seconds")]
        uptime_s: Duration,
    }

    #[test]
    fn times_keep_their_json_shape() {
        let times = Times {
            at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_119_200_250),
            took_ms: Duration::from_micros(12_999),
            uptime_s: Duration::from_millis(61_900),
        };
        assert_eq!(
            serde_json::to_value(times).unwrap(),
            json!({"at": "2026-12-01T10:00:00Z", "took_ms": 12, "uptime_s": 61})
        );
    }
}
