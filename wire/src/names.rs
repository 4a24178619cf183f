//! Validated names: resources, hosts, label keys and values, and label selectors.
//!
//! The rules follow Kubernetes so that names and labels copied from a cluster work
//! unchanged: resource names are DNS-1123 labels, label keys may carry a DNS prefix.

use std::collections::BTreeMap;

/// Labels attached to a host or a resource.
pub type Labels = BTreeMap<String, String>;

/// Checks a resource name (experiments, pipelines, deployments): a DNS-1123 label,
/// 1–63 characters of `a-z`, `0-9` and `-`, starting and ending with a letter or digit.
pub fn check_resource_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 63 {
        return Err(format!("`{name}` is longer than 63 characters"));
    }
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let first = name.as_bytes()[0];
    let last = name.as_bytes()[name.len() - 1];
    if !ok_chars || first == b'-' || last == b'-' {
        return Err(format!(
            "`{name}` is not a valid name: use lowercase letters, digits and '-', starting and ending with a letter or digit (e.g. topk-web)"
        ));
    }
    Ok(())
}

/// Checks a host id: 1–253 characters of letters, digits, `.`, `_` and `-`
/// (hostnames and Kubernetes node names both fit).
pub fn check_host_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 253 {
        return Err("a host id must be 1 to 253 characters".into());
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "`{id}` is not a valid host id: use letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

fn check_label_segment(segment: &str, what: &str) -> Result<(), String> {
    if segment.len() > 63 {
        return Err(format!("{what} `{segment}` is longer than 63 characters"));
    }
    let bytes = segment.as_bytes();
    let ok_chars = bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    let ok_ends = bytes.first().is_none_or(u8::is_ascii_alphanumeric)
        && bytes.last().is_none_or(u8::is_ascii_alphanumeric);
    if !ok_chars || !ok_ends {
        return Err(format!(
            "{what} `{segment}` is invalid: use letters, digits, '.', '_' and '-', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// Checks a label key: `name` or `prefix/name`, Kubernetes style.
pub fn check_label_key(key: &str) -> Result<(), String> {
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            if prefix.is_empty() || prefix.len() > 253 {
                return Err(format!("label key `{key}` has an invalid prefix"));
            }
            name
        }
        None => key,
    };
    if name.is_empty() {
        return Err(format!("label key `{key}` has an empty name"));
    }
    check_label_segment(name, "label key")
}

/// Checks a label value: up to 63 characters; may be empty.
pub fn check_label_value(value: &str) -> Result<(), String> {
    check_label_segment(value, "label value")
}

/// Checks every key and value of a label map.
pub fn check_labels(labels: &Labels) -> Result<(), String> {
    for (key, value) in labels {
        check_label_key(key)?;
        check_label_value(value)?;
    }
    Ok(())
}

/// True when every `key: value` of the selector is present in `labels`
/// (equality-based, like a Kubernetes `matchLabels`).
pub fn selector_matches(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names() {
        for good in ["a", "topk-web", "exp1", "a-b-c"] {
            check_resource_name(good).unwrap();
        }
        for bad in ["", "-a", "a-", "Topk", "a_b", "a.b", &"x".repeat(64)] {
            assert!(check_resource_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_keys_and_values() {
        check_label_key("role").unwrap();
        check_label_key("phoenix.dev/role").unwrap();
        check_label_value("").unwrap();
        assert!(check_label_key("").is_err());
        assert!(check_label_key("/x").is_err());
        assert!(check_label_key("ro le").is_err());
        assert!(check_label_value("-web").is_err());
    }

    #[test]
    fn selectors_match_by_equality() {
        let labels: Labels = [("role".into(), "web".into()), ("zone".into(), "a".into())].into();
        assert!(selector_matches(
            &[("role".into(), "web".into())].into(),
            &labels
        ));
        assert!(!selector_matches(
            &[("role".into(), "db".into())].into(),
            &labels
        ));
        assert!(selector_matches(&Labels::new(), &labels));
    }
}
