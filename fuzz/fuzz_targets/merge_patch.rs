//! Merge patch application on an arbitrary TOML text and JSON patch (the
//! input's two halves, split at the first NUL byte): never panics; a result
//! is TOML and applying the patch again changes nothing (RFC 7396's
//! idempotence); an error about a value names its key.
#![no_main]

use kiln_config::{PatchError, merge_patch_toml};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    let (text, patch) = input.split_once('\0').unwrap_or((input, "{}"));
    let Ok(patch) = serde_json::from_str::<serde_json::Value>(patch) else {
        return;
    };
    match merge_patch_toml(text, &patch) {
        Ok(out) => {
            // Applying it again parses the result as TOML first.
            let again = merge_patch_toml(&out, &patch)
                .unwrap_or_else(|e| panic!("the result does not take the patch again ({e}):\n{out}"));
            assert_eq!(again, out, "not idempotent");
        }
        Err(PatchError::Value { path, .. }) => assert!(!path.is_empty(), "no key named"),
        Err(_) => {}
    }
});
