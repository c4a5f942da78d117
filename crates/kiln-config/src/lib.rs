//! kiln's configuration: the typed document, loaded from a file with
//! `KILN__SECTION__KEY` environment overrides, validated, diffed and redacted.
//!
//! A [`Config`] holds kiln's own sections (`server`, `admin`, `pools`,
//! `resources`, `reload`, `log`)
//! and the application's section (`app`), whose type the application chooses.
//! Every error names the file, the key path and what was expected.
//!
//! # Examples
//!
//! ```
//! # fn main() -> Result<(), kiln_config::ConfigError> {
//! # let dir = tempfile::tempdir().unwrap();
//! # let path = dir.path().join("deploy.toml");
//! # std::fs::write(&path, "[pools.main]\nkind = \"sqlite\"\nurl = \"data/a.sqlite3\"\n").unwrap();
//! #[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
//! struct Greeter {
//!     greeting: String,
//! }
//! impl kiln_config::AppConfig for Greeter {}
//!
//! let loaded = kiln_config::load::<Greeter>(&path)?;
//! assert_eq!(loaded.config.pools["main"].max_size, 8);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod diff;
mod error;
mod fleet;
mod load;
mod patch;
mod persist;
mod schema;
mod secret;
mod size;

pub use config::FileFormat;
pub use diff::diff;
pub use error::{ConfigError, ErrorKind, Invalid};
pub use fleet::FleetConfig;
pub use load::{Loaded, Overlay, format_of, load, parse, parse_overlaid};
pub use patch::{PatchError, merge_patch_toml};
pub use persist::{write_atomic, write_private};
pub use schema::{
    AdminConfig, AppConfig, Config, LogConfig, LogFormat, LogLevel, MIN_HEADER_BYTES, PoolConfig,
    PoolKind, RESTART_KEYS, ReloadConfig, ServerConfig,
};
pub use secret::{ConnString, Secret};
pub use size::{ByteSize, ParseByteSizeError};
