//! `-l/--selector` of list commands, kubectl style: `key=value`, `key==value`,
//! `key!=value`, `key` (has the label) and `!key` (has not), comma-separated,
//! all of which must hold. Matched here, on what the api lists.

use std::collections::BTreeMap;

/// One requirement of a selector.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

/// A parsed `-l` value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector(Vec<Requirement>);

impl Selector {
    /// Parses `role=web,env!=prod`; the error says which part is wrong.
    pub fn parse(text: &str) -> Result<Selector, String> {
        let mut requirements = Vec::new();
        for part in text.split(',').map(str::trim) {
            let requirement = if let Some((key, value)) = part.split_once("!=") {
                Requirement::NotEquals(key.trim().into(), value.trim().into())
            } else if let Some((key, value)) = part.split_once("==") {
                Requirement::Equals(key.trim().into(), value.trim().into())
            } else if let Some((key, value)) = part.split_once('=') {
                Requirement::Equals(key.trim().into(), value.trim().into())
            } else if let Some(key) = part.strip_prefix('!') {
                Requirement::NotExists(key.trim().into())
            } else {
                Requirement::Exists(part.into())
            };
            let key = match &requirement {
                Requirement::Equals(k, _)
                | Requirement::NotEquals(k, _)
                | Requirement::Exists(k)
                | Requirement::NotExists(k) => k,
            };
            phoenix_wire::names::check_label_key(key).map_err(|m| {
                format!("`{part}` is not a requirement (key=value, key!=value, key or !key): {m}")
            })?;
            requirements.push(requirement);
        }
        Ok(Selector(requirements))
    }

    /// True when `labels` meet every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }
}

/// For clap's `value_parser`.
pub fn parse(text: &str) -> Result<Selector, String> {
    Selector::parse(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn requirements_all_hold() {
        let selector = Selector::parse("role=web, env!=prod,team,!canary").unwrap();
        assert!(selector.matches(&labels(&[("role", "web"), ("team", "sre")])));
        assert!(selector.matches(&labels(&[("role", "web"), ("team", "a"), ("env", "dev")])));
        assert!(!selector.matches(&labels(&[("role", "web"), ("team", "a"), ("env", "prod")])));
        assert!(!selector.matches(&labels(&[("role", "db"), ("team", "a")])));
        assert!(!selector.matches(&labels(&[("role", "web")])));
        assert!(!selector.matches(&labels(&[("role", "web"), ("team", "a"), ("canary", "1")])));
        assert!(
            Selector::parse("role==web")
                .unwrap()
                .matches(&labels(&[("role", "web")]))
        );
    }

    #[test]
    fn a_bad_requirement_is_named() {
        let err = Selector::parse("role=web,bad key=x").unwrap_err();
        assert!(err.starts_with("`bad key=x` is not a requirement"), "{err}");
        assert!(Selector::parse("").is_err());
    }
}
