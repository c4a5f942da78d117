//! Config parse + validate on arbitrary text: never panics, and every error
//! names the file, and a key path when one key is at fault.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

/// An application section with a field, as a real application has.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct App {
    #[serde(default)]
    greeting: String,
}

impl kiln_config::AppConfig for App {}

fuzz_target!(|text: &str| {
    let file = Path::new("fuzz.toml");
    if let Err(error) = kiln_config::parse::<App>(file, text.to_owned()) {
        let message = error.to_string();
        assert!(message.starts_with("fuzz.toml: "), "{message}");
        if let Some(key) = error.key() {
            assert!(!key.is_empty() && key != ".", "an empty key path: {message}");
        }
    }
});
