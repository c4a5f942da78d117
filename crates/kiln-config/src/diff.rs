use serde_json::Value;

/// The dotted key paths whose values differ between two documents, sorted.
///
/// Tables are compared key by key; any other value (including arrays) is a
/// leaf. A key present on one side only is a difference.
pub fn diff(old: &Value, new: &Value) -> Vec<String> {
    let mut changed = Vec::new();
    walk("", old, new, &mut changed);
    changed.sort();
    changed
}

fn walk(path: &str, old: &Value, new: &Value, changed: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(old), Value::Object(new)) => {
            let keys = old
                .keys()
                .chain(new.keys().filter(|k| !old.contains_key(*k)));
            for key in keys {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match (old.get(key), new.get(key)) {
                    (Some(a), Some(b)) => walk(&child, a, b, changed),
                    _ => changed.push(child),
                }
            }
        }
        _ if old != new => changed.push(path.to_owned()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_changed_added_and_removed_leaves() {
        let old = json!({"app": {"greeting": "a", "n": 1}, "pools": {"main": {"max_size": 8}}});
        let new = json!({"app": {"greeting": "b", "n": 1}, "pools": {"main": {"max_size": 8, "warm": 2}, "extra": {}}});
        assert_eq!(
            diff(&old, &new),
            ["app.greeting", "pools.extra", "pools.main.warm"]
        );
        assert!(diff(&old, &old).is_empty());
    }
}
