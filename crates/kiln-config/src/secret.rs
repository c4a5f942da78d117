use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

/// A secret value (an admin token, a password): never printed, never
/// serialized; shown as `***`.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(SecretString);

impl Secret {
    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// Compares with `candidate` in time independent of where they differ.
    pub fn matches(&self, candidate: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.expose().as_bytes().ct_eq(candidate.as_bytes()).into()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value.into())
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.matches(other.expose())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("***")
    }
}

/// A database connection string that may carry a password: a SQLite path,
/// a `postgres://user:password@host/db` URL or a `key=value` string.
///
/// Printed and serialized with the password replaced by `***`.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct ConnString(Secret);

impl ConnString {
    /// The full string, password included, for the driver.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// The string with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact(self.expose())
    }
}

impl From<&str> for ConnString {
    fn from(value: &str) -> Self {
        Self(Secret::from(value.to_owned()))
    }
}

impl fmt::Debug for ConnString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.redacted(), f)
    }
}

impl fmt::Display for ConnString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for ConnString {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

/// Replaces the password of a `scheme://user:password@host` URL or of a
/// `password=...` pair.
fn redact(s: &str) -> String {
    if let Some(scheme_end) = s.find("://") {
        let rest = &s[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            let user_end = scheme_end + 3 + colon;
            return format!("{}:***{}", &s[..user_end], &s[scheme_end + 3 + at..]);
        }
    }
    s.split(' ')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_url_passwords() {
        assert_eq!(
            redact("postgres://kiln:hunter2@db:5432/app?sslmode=disable"),
            "postgres://kiln:***@db:5432/app?sslmode=disable"
        );
        assert_eq!(redact("postgres://kiln@db/app"), "postgres://kiln@db/app");
        assert_eq!(
            redact("host=db user=kiln password=hunter2 dbname=app"),
            "host=db user=kiln password=*** dbname=app"
        );
        assert_eq!(redact("data/kiln.sqlite3"), "data/kiln.sqlite3");
    }

    #[test]
    fn secrets_never_print() {
        let secret = Secret::from("hunter2".to_owned());
        assert_eq!(format!("{secret:?}"), "***");
        assert_eq!(serde_json::to_string(&secret).unwrap(), "\"***\"");
        assert!(secret.matches("hunter2"));
        assert!(!secret.matches("hunter3"));
    }
}
