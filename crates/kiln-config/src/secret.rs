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

/// Replaces the password of a `scheme://user:password@host?password=...`
/// URL or of a libpq `password=...` pair (quoted values included).
fn redact(s: &str) -> String {
    match s.find("://") {
        Some(scheme_end) => redact_url(s, scheme_end + 3),
        None => redact_key_values(s),
    }
}

/// The URL with the password of its authority and of a `password` query
/// parameter replaced.
fn redact_url(s: &str, authority_start: usize) -> String {
    let rest = &s[authority_start..];
    let authority_end = authority_start + rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let mut out = match s[authority_start..authority_end].rfind('@') {
        Some(at) => match s[authority_start..authority_start + at].find(':') {
            Some(colon) => format!(
                "{}:***{}",
                &s[..authority_start + colon],
                &s[authority_start + at..authority_end]
            ),
            None => s[..authority_end].to_owned(),
        },
        None => s[..authority_end].to_owned(),
    };
    let tail = &s[authority_end..];
    let Some(query_start) = tail.find('?') else {
        out.push_str(tail);
        return out;
    };
    let query_end = tail.find('#').unwrap_or(tail.len());
    out.push_str(&tail[..=query_start]);
    let params: Vec<String> = tail[query_start + 1..query_end]
        .split('&')
        .map(|param| match param.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => param.to_owned(),
        })
        .collect();
    out.push_str(&params.join("&"));
    out.push_str(&tail[query_end..]);
    out
}

/// The libpq `key = value` string with the `password` value replaced. Values
/// are parsed as libpq does: single-quoted with `\'` and `\\` escapes, or
/// up to the next white space; spaces around `=` are allowed.
fn redact_key_values(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    loop {
        let word = rest.trim_start();
        out.push_str(&rest[..rest.len() - word.len()]);
        if word.is_empty() {
            return out;
        }
        let key_end = word
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(word.len());
        let key = &word[..key_end];
        let Some(after_equals) = word[key_end..].trim_start().strip_prefix('=') else {
            // Not a pair (a SQLite path, say): kept as it is.
            out.push_str(key);
            rest = &word[key_end..];
            continue;
        };
        let value = after_equals.trim_start();
        out.push_str(&word[..word.len() - value.len()]);
        let value_len = libpq_value_len(value);
        if key.eq_ignore_ascii_case("password") {
            out.push_str("***");
        } else {
            out.push_str(&value[..value_len]);
        }
        rest = &value[value_len..];
    }
}

/// The length of the libpq value `value` starts with; an unterminated
/// quote runs to the end.
fn libpq_value_len(value: &str) -> usize {
    let quoted = value.starts_with('\'');
    let mut chars = value.char_indices().skip(usize::from(quoted));
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '\'' if quoted => return i + 1,
            c if !quoted && c.is_whitespace() => return i,
            _ => {}
        }
    }
    value.len()
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
    fn redacts_quoted_libpq_passwords_whole() {
        for (input, redacted) in [
            (
                "host=db password='a b' user=kiln",
                "host=db password=*** user=kiln",
            ),
            (
                r"password='it\'s a secret' dbname=app",
                "password=*** dbname=app",
            ),
            (r"password='back\\' user=k", "password=*** user=k"),
            ("host=db password = 'x y z'", "host=db password = ***"),
            ("PASSWORD=hunter2", "PASSWORD=***"),
            (r"password=a\ b user=k", "password=*** user=k"),
            ("password='never closed and long", "password=***"),
            ("user='k l' password=pw", "user='k l' password=***"),
            ("password=", "password=***"),
        ] {
            assert_eq!(redact(input), redacted, "{input}");
        }
    }

    #[test]
    fn redacts_url_query_passwords() {
        assert_eq!(
            redact("postgresql:///app?user=k&password=hunter2&sslmode=off"),
            "postgresql:///app?user=k&password=***&sslmode=off"
        );
        assert_eq!(
            redact("postgres://k:pw@db/app?password=two#frag"),
            "postgres://k:***@db/app?password=***#frag"
        );
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
