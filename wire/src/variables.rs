//! Typed template variables: a template declares each variable it reads
//! (`spec.variables`: name, type, default, doc), and a value given by an experiment
//! or a deployment is parsed by its type before anything is stored or rendered.
//!
//! Types are chosen so that no accepted value can reach the collector as text it
//! would parse again: numbers and durations are digits and units only; regexes and
//! identifier lists hold no `"`, `\`, `${` or control character, so they cannot leave
//! the OTTL string literal they are placed in (the template policy, `policy`, checks
//! the placement). A variable reaches the collector as `PHOENIX_VAR_<NAME>`.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::policy;
use crate::problem::FieldError;
use crate::render::critical_processes_regex;
use crate::resource::{check_process_name, check_variable_name, variable_env_name};

/// The longest regex a variable may hold.
pub const MAX_REGEX_LEN: usize = 1024;
/// The most names an identifier list may hold.
pub const MAX_IDENTIFIERS: usize = 256;

/// What values a variable takes.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum VariableType {
    /// A Go duration with a unit, above zero: `10s`, `1m30s`, `500ms`.
    Duration,
    /// A decimal number: `0.05`, `-1`, `256` (no exponent, no `inf`).
    Number,
    /// A whole number: `256`.
    Integer,
    /// An RE2 regular expression, without `"` or `\` (write `[.]` for a dot).
    Regex,
    /// A comma-separated list of executable names (letters, digits, `. _ - + @ :`);
    /// it reaches the collector as the anchored regex matching exactly those names.
    IdentifierList,
}

impl VariableType {
    pub fn as_str(self) -> &'static str {
        match self {
            VariableType::Duration => "duration",
            VariableType::Number => "number",
            VariableType::Integer => "integer",
            VariableType::Regex => "regex",
            VariableType::IdentifierList => "identifier-list",
        }
    }
}

/// One declared variable of a template.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VariableDecl {
    /// lower_snake_case; the collector sees `PHOENIX_VAR_<NAME>`.
    #[schemars(regex(pattern = r"^[a-z][a-z0-9_]{0,63}$"))]
    pub name: String,
    /// What values it takes.
    #[serde(rename = "type")]
    pub kind: VariableType,
    /// The value when none is given; must be of the type.
    #[serde(deserialize_with = "scalar_text")]
    #[schemars(with = "crate::schema::ScalarText")]
    pub default: String,
    /// What the variable does, for `phoenix pipeline get` and the docs.
    #[serde(default)]
    pub doc: String,
    /// For numbers and integers: the smallest value accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// For numbers and integers: the largest value accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

fn scalar_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!(
            "a default is a string or a number, not {other}"
        ))),
    }
}

impl VariableDecl {
    /// Parses `text` as a value of this variable; returns what the collector gets.
    pub fn parse(&self, text: &str) -> Result<String, String> {
        let kind = self.kind.as_str();
        let not = |why: &str| format!("`{}` is not a {kind}: {why}", shorten(text));
        if text.chars().any(char::is_control) {
            return Err(not("it holds a control character"));
        }
        match self.kind {
            VariableType::Duration => {
                if !is_go_duration(text) {
                    return Err(not(
                        "write digits and a unit (ns, us, ms, s, m, h), e.g. 10s or 1m30s",
                    ));
                }
                if text.bytes().all(|b| !b.is_ascii_digit() || b == b'0') {
                    return Err(not("it must be longer than zero"));
                }
                Ok(text.to_string())
            }
            VariableType::Number | VariableType::Integer => {
                let shape_ok = if self.kind == VariableType::Integer {
                    is_integer(text)
                } else {
                    is_decimal(text)
                };
                if !shape_ok {
                    return Err(not(if self.kind == VariableType::Integer {
                        "write digits, e.g. 256"
                    } else {
                        "write a decimal number, e.g. 0.05"
                    }));
                }
                let value: f64 = text.parse().map_err(|_| not("it does not parse"))?;
                if self.kind == VariableType::Integer && text.parse::<i64>().is_err() {
                    return Err(not("it is too large"));
                }
                if let Some(min) = self.min
                    && value < min
                {
                    return Err(format!(
                        "`{text}` is below the smallest allowed value {min}"
                    ));
                }
                if let Some(max) = self.max
                    && value > max
                {
                    return Err(format!("`{text}` is above the largest allowed value {max}"));
                }
                Ok(text.to_string())
            }
            VariableType::Regex => {
                if text.len() > MAX_REGEX_LEN {
                    return Err(not(&format!("it is longer than {MAX_REGEX_LEN} bytes")));
                }
                policy::check_value_placement(text, policy::Placement::Quoted)
                    .map_err(|m| not(&format!("it {m}")))?;
                regex::Regex::new(text).map_err(|e| not(&e.to_string()))?;
                Ok(text.to_string())
            }
            VariableType::IdentifierList => {
                let names: Vec<String> = text
                    .split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(str::to_string)
                    .collect();
                if names.len() > MAX_IDENTIFIERS {
                    return Err(not(&format!("it holds more than {MAX_IDENTIFIERS} names")));
                }
                for name in &names {
                    check_process_name(name).map_err(|m| not(&m))?;
                }
                Ok(critical_processes_regex(&names))
            }
        }
    }

    /// Checks the declaration itself; `field` is where it sits (`spec.variables[0]`).
    pub fn validate(&self, field: &str) -> Result<(), FieldError> {
        check_variable_name(&self.name).map_err(|m| FieldError::new(format!("{field}.name"), m))?;
        if self.doc.len() > 2000 {
            return Err(FieldError::new(
                format!("{field}.doc"),
                "at most 2000 bytes",
            ));
        }
        let numeric = matches!(self.kind, VariableType::Number | VariableType::Integer);
        if !numeric && (self.min.is_some() || self.max.is_some()) {
            return Err(FieldError::new(
                field,
                "`min` and `max` apply to numbers and integers only",
            ));
        }
        if let (Some(min), Some(max)) = (self.min, self.max)
            && min > max
        {
            return Err(FieldError::new(format!("{field}.min"), "is above `max`"));
        }
        self.parse(&self.default)
            .map_err(|m| FieldError::new(format!("{field}.default"), m))?;
        Ok(())
    }
}

fn shorten(text: &str) -> String {
    if text.chars().count() > 80 {
        format!("{}…", text.chars().take(80).collect::<String>())
    } else {
        text.to_string()
    }
}

fn is_integer(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty() && digits.len() <= 19 && digits.bytes().all(|b| b.is_ascii_digit())
}

fn is_decimal(text: &str) -> bool {
    match text.split_once('.') {
        Some((whole, fraction)) => {
            is_integer(whole)
                && !fraction.is_empty()
                && fraction.len() <= 19
                && fraction.bytes().all(|b| b.is_ascii_digit())
        }
        None => is_integer(text),
    }
}

/// `10s`, `1m30s`, `250ms`: Go's `time.ParseDuration` grammar without fractions or signs.
fn is_go_duration(text: &str) -> bool {
    let mut rest = text;
    if rest.is_empty() || rest.len() > 32 {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let unit = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        if !matches!(&rest[..unit], "ns" | "us" | "ms" | "s" | "m" | "h") {
            return false;
        }
        rest = &rest[unit..];
    }
    true
}

/// Checks a template's declarations against its config: names unique, every
/// `PHOENIX_VAR_<NAME>` the config reads is declared and every declared one is read,
/// and a `:-default` written in the config is the declared default.
pub fn check_declarations(config: &str, declared: &[VariableDecl]) -> Result<(), FieldError> {
    for (i, decl) in declared.iter().enumerate() {
        let field = format!("spec.variables[{i}]");
        decl.validate(&field)?;
        if declared[..i].iter().any(|d| d.name == decl.name) {
            return Err(FieldError::new(
                format!("{field}.name"),
                format!("`{}` is declared twice", decl.name),
            ));
        }
    }
    let mut used = Vec::new();
    let tree: serde_json::Value = serde_saphyr::from_str(config)
        .map_err(|e| FieldError::new("spec.config", format!("not valid YAML: {e}")))?;
    let mut texts = Vec::new();
    collect_texts(&tree, &mut texts);
    for text in texts {
        // A lookup the policy refuses is reported by the policy, with its path.
        let Ok(lookups) = policy::lookups_in(text) else {
            continue;
        };
        for lookup in lookups {
            let Some(upper) = lookup.name.strip_prefix("PHOENIX_VAR_") else {
                continue;
            };
            let name = upper.to_ascii_lowercase();
            let Some(decl) = declared.iter().find(|d| d.name == name) else {
                return Err(FieldError::new(
                    "spec.config",
                    format!(
                        "reads `{}`, but `spec.variables` declares no variable `{name}`",
                        lookup.name
                    ),
                ));
            };
            if let Some(default) = &lookup.default
                && default != &decl.default
            {
                return Err(FieldError::new(
                    "spec.config",
                    format!(
                        "`${{env:{}:-{default}}}` has another default than the declared `{}`",
                        lookup.name, decl.default
                    ),
                ));
            }
            used.push(name);
        }
    }
    for (i, decl) in declared.iter().enumerate() {
        if !used.contains(&decl.name) {
            return Err(FieldError::new(
                format!("spec.variables[{i}].name"),
                format!(
                    "`{}` is declared but the config never reads `{}`",
                    decl.name,
                    variable_env_name(&decl.name)
                ),
            ));
        }
    }
    Ok(())
}

fn collect_texts<'v>(node: &'v serde_json::Value, out: &mut Vec<&'v str>) {
    match node {
        serde_json::Value::String(s) => out.push(s),
        serde_json::Value::Array(items) => items.iter().for_each(|i| collect_texts(i, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| collect_texts(v, out)),
        _ => {}
    }
}

/// The collector environment of a template's variables: each given value parsed by
/// its declared type, and the default for the others. `field` is where the values
/// sit (`spec.candidate.vars`); an error names the variable.
pub fn resolve(
    template: &str,
    declared: &[VariableDecl],
    given: &BTreeMap<String, String>,
    field: &str,
) -> Result<BTreeMap<String, String>, FieldError> {
    for name in given.keys() {
        if !declared.iter().any(|d| &d.name == name) {
            let names: Vec<&str> = declared.iter().map(|d| d.name.as_str()).collect();
            return Err(FieldError::new(
                format!("{field}.{name}"),
                format!(
                    "pipeline `{template}` has no variable `{name}`; its variables are: {}",
                    if names.is_empty() {
                        "(none)".to_string()
                    } else {
                        names.join(", ")
                    }
                ),
            ));
        }
    }
    declared
        .iter()
        .map(|decl| {
            let text = given.get(&decl.name).unwrap_or(&decl.default);
            let value = decl
                .parse(text)
                .map_err(|m| FieldError::new(format!("{field}.{}", decl.name), m))?;
            Ok((variable_env_name(&decl.name), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(name: &str, kind: VariableType, default: &str) -> VariableDecl {
        VariableDecl {
            name: name.into(),
            kind,
            default: default.into(),
            doc: String::new(),
            min: None,
            max: None,
        }
    }

    #[test]
    fn values_parse_by_type() {
        let n = VariableDecl {
            min: Some(0.0),
            max: Some(1.0),
            ..decl("cpu_threshold", VariableType::Number, "0.05")
        };
        assert_eq!(n.parse("0.2").unwrap(), "0.2");
        assert!(
            n.parse("0.05 or true")
                .unwrap_err()
                .contains("is not a number")
        );
        assert!(n.parse("1e3").is_err());
        assert!(n.parse("NaN").is_err());
        assert!(n.parse("2").unwrap_err().contains("largest"));
        let i = decl("mib", VariableType::Integer, "256");
        assert!(i.parse("256").is_ok());
        assert!(i.parse("2.5").is_err());
        assert!(i.parse("99999999999999999999").is_err());
        let d = decl("interval", VariableType::Duration, "10s");
        assert!(d.parse("1m30s").is_ok());
        assert!(
            d.parse("10").is_err(),
            "10 without a unit is 10ns for the collector"
        );
        assert!(d.parse("0s").is_err());
        assert!(d.parse("${file:/etc/shadow}").is_err());
        let r = decl("re", VariableType::Regex, "a^");
        assert!(r.parse("^(nginx|java)$").is_ok());
        assert!(r.parse("x\") or true or IsMatch(\"").is_err());
        assert!(r.parse("^python3\\.11$").unwrap_err().contains("[.]"));
        assert!(r.parse("${env:HOME}").is_err());
        assert!(r.parse("(unclosed").is_err());
        assert!(r.parse("a\nb").is_err());
        let l = decl("keep", VariableType::IdentifierList, "");
        assert_eq!(l.parse("nginx, php-fpm").unwrap(), "^(nginx|php-fpm)$");
        assert_eq!(l.parse("").unwrap(), crate::render::MATCH_NOTHING);
        assert!(l.parse("nginx\"").is_err());
    }

    #[test]
    fn declarations_must_match_the_config() {
        let config = "a: ${env:PHOENIX_VAR_CPU_THRESHOLD:-0.05}\nb: \"${env:PHOENIX_HOST}\"\n";
        let ok = [decl("cpu_threshold", VariableType::Number, "0.05")];
        check_declarations(config, &ok).unwrap();
        let err = check_declarations(config, &[]).unwrap_err();
        assert!(
            err.message.contains("declares no variable `cpu_threshold`"),
            "{err}"
        );
        let other_default = [decl("cpu_threshold", VariableType::Number, "0.1")];
        assert!(check_declarations(config, &other_default).is_err());
        let unused = [ok[0].clone(), decl("extra", VariableType::Integer, "1")];
        assert_eq!(
            check_declarations(config, &unused).unwrap_err().field,
            "spec.variables[1].name"
        );
        let bad_default = [decl("cpu_threshold", VariableType::Number, "lots")];
        assert_eq!(
            check_declarations(config, &bad_default).unwrap_err().field,
            "spec.variables[0].default"
        );
    }

    #[test]
    fn resolve_names_the_variable() {
        let declared = [
            decl("cpu_threshold", VariableType::Number, "0.05"),
            decl("keep", VariableType::IdentifierList, "nginx"),
        ];
        let given = BTreeMap::from([("cpu_threshold".to_string(), "0.05 or true".to_string())]);
        let err = resolve("process-topk", &declared, &given, "spec.candidate.vars").unwrap_err();
        assert_eq!(err.field, "spec.candidate.vars.cpu_threshold");
        let given = BTreeMap::from([("nope".to_string(), "1".to_string())]);
        let err = resolve("process-topk", &declared, &given, "spec.candidate.vars").unwrap_err();
        assert!(err.message.contains("cpu_threshold, keep"), "{err}");
        let env = resolve("process-topk", &declared, &BTreeMap::new(), "v").unwrap();
        assert_eq!(env["PHOENIX_VAR_CPU_THRESHOLD"], "0.05");
        assert_eq!(env["PHOENIX_VAR_KEEP"], "^(nginx)$");
    }
}
