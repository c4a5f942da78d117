use std::fmt;
use std::path::{Path, PathBuf};

/// A configuration that could not be loaded: the file it came from and what
/// was wrong with it.
///
/// Displays as one line, `deploy.toml: pools.main.max_size: expected an
/// integer ≥ 1, found 0`, which is what a user needs to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{}: {kind}", file.display())]
pub struct ConfigError {
    file: PathBuf,
    kind: ErrorKind,
}

/// What was wrong with a configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The file could not be read or parsed (missing, unreadable, bad syntax).
    #[error("{0}")]
    Syntax(String),
    /// A key has a value of the wrong type or an unknown name.
    #[error("{path}: {message}")]
    Type {
        /// Dotted key path, e.g. `pools.main.max_size`.
        path: String,
        /// What the deserializer expected and found.
        message: String,
    },
    /// A value is well-typed but not acceptable.
    #[error(transparent)]
    Invalid(#[from] Invalid),
}

impl ConfigError {
    /// An error in `file`.
    pub fn new(file: &Path, kind: impl Into<ErrorKind>) -> Self {
        Self {
            file: file.to_path_buf(),
            kind: kind.into(),
        }
    }

    /// The file the configuration came from.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// What was wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// The dotted key path at fault, when the fault is in one key.
    pub fn key(&self) -> Option<&str> {
        match &self.kind {
            ErrorKind::Syntax(_) => None,
            ErrorKind::Type { path, .. } => Some(path),
            ErrorKind::Invalid(invalid) => Some(&invalid.path),
        }
    }
}

/// A value that is well-typed but not acceptable, with its key path.
///
/// Applications return it from [`AppConfig::validate`](crate::AppConfig::validate)
/// with a path relative to their own section; kiln prefixes `app.`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Invalid {
    /// Dotted key path, e.g. `pools.main.max_size`.
    pub path: String,
    /// What the value must be, e.g. `an integer ≥ 1`.
    pub expected: String,
    /// What was found instead, e.g. `0`.
    pub found: String,
}

impl Invalid {
    /// A value at `path` that should have been `expected` but was `found`.
    pub fn new(
        path: impl Into<String>,
        expected: impl Into<String>,
        found: impl fmt::Display,
    ) -> Self {
        Self {
            path: path.into(),
            expected: expected.into(),
            found: found.to_string(),
        }
    }

    pub(crate) fn under(mut self, prefix: &str) -> Self {
        self.path = format!("{prefix}.{}", self.path);
        self
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: expected {}, found {}",
            self.path, self.expected, self.found
        )
    }
}

impl std::error::Error for Invalid {}
