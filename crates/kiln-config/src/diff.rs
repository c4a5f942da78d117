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

/// Whether key `path` is `key` or lies under it (`pools.main.url` is under
/// `pools.main`, `pools.mainly` is not).
pub(crate) fn is_under(path: &str, key: &str) -> bool {
    path.strip_prefix(key)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
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

    #[test]
    fn a_path_is_under_its_own_key_and_its_parents_only() {
        assert!(is_under("pools.main", "pools.main"));
        assert!(is_under("pools.main.url", "pools.main"));
        assert!(!is_under("pools.mainly", "pools.main"));
        assert!(!is_under("pools", "pools.main"));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Map;

    /// A JSON document: nested objects over a small key set (so that two
    /// documents share keys), with leaves of every JSON type.
    pub(crate) fn document() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (-3i64..3).prop_map(Value::from),
            "[ab]{0,2}".prop_map(Value::from),
            prop::collection::vec((0i64..2).prop_map(Value::from), 0..3).prop_map(Value::from),
        ];
        let tree = leaf.prop_recursive(3, 24, 4, |inner| {
            prop::collection::btree_map("[a-d]", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect()))
        });
        prop::collection::btree_map("[a-d]", tree, 0..4)
            .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>()))
    }

    /// `old` with the value at dotted `path` replaced by `new`'s (or removed
    /// when `new` has none there).
    fn carry(old: &mut Value, new: &Value, path: &str) {
        let keys: Vec<&str> = path.split('.').collect();
        let (last, parents) = keys.split_last().expect("a non-empty path");
        let mut at = old;
        let mut from = Some(new);
        for key in parents {
            at = at
                .get_mut(*key)
                .expect("the parents of a changed key are objects");
            from = from.and_then(|v| v.get(*key));
        }
        let object = at.as_object_mut().expect("the parent is an object");
        match from.and_then(|v| v.get(*last)) {
            Some(value) => {
                object.insert((*last).to_owned(), value.clone());
            }
            None => {
                object.remove(*last);
            }
        }
    }

    fn lookup<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
        path.split('.').try_fold(doc, |v, key| v.get(key))
    }

    proptest! {
        /// `changed` lists exactly the differing leaves: each listed path
        /// differs, no listed path lies under another, and carrying the
        /// listed values from `new` into `old` yields `new`.
        #[test]
        fn changed_lists_exactly_the_differing_leaves(old in document(), new in document()) {
            let changed = diff(&old, &new);
            let mut sorted = changed.clone();
            sorted.sort();
            sorted.dedup();
            prop_assert_eq!(&sorted, &changed, "sorted, no duplicates");
            for path in &changed {
                prop_assert_ne!(lookup(&old, path), lookup(&new, path), "{} does not differ", path);
                prop_assert!(
                    !changed.iter().any(|other| path.starts_with(&format!("{other}."))),
                    "{} lies under another listed path: {:?}", path, changed
                );
            }
            let mut carried = old.clone();
            for path in &changed {
                carry(&mut carried, &new, path);
            }
            prop_assert_eq!(carried, new);
        }

        #[test]
        fn diff_is_symmetric_and_empty_on_equal_documents(a in document(), b in document()) {
            prop_assert!(diff(&a, &a).is_empty());
            prop_assert_eq!(diff(&a, &b), diff(&b, &a));
        }
    }
}
