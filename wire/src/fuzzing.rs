//! What the fuzz targets (`fuzz/`) run on each input, and what the regression test
//! `wire/tests/fuzz_regressions.rs` runs again on every input that once broke it.
//! Each function panics only when an invariant breaks: the parsers and the policy
//! must answer every input with a value or an error, never a panic.

use std::collections::BTreeMap;

use crate::deployment::PipelineDeploymentDocument;
use crate::policy::{self, Allowances};
use crate::resource::{
    DocumentFormat, ExperimentDocument, PipelineTemplateDocument, parse_document,
};
use crate::variables::{VariableDecl, VariableType};

/// Every document kind, from JSON and from YAML, parsed and validated; templates
/// also through the policy.
pub fn document(data: &[u8]) {
    for format in [DocumentFormat::Json, DocumentFormat::Yaml] {
        if let Ok(doc) = parse_document::<ExperimentDocument>(data, format) {
            let _ = doc.validate();
        }
        if let Ok(doc) = parse_document::<PipelineTemplateDocument>(data, format)
            && doc.validate().is_ok()
        {
            let _ = doc.check_policy(&Allowances::default());
        }
        if let Ok(doc) = parse_document::<PipelineDeploymentDocument>(data, format) {
            let _ = doc.validate();
        }
    }
}

/// A config through the policy. What it accepts, its canonical text must be
/// accepted too (the agent checks and runs that text); every typed value it accepts
/// holds nothing that could leave an OTTL string.
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env: BTreeMap<String, String> = policy::placeholder_environment();
    if let Ok(checked) = policy::check(text, &env, &Allowances::default()) {
        let canonical = checked.canonical();
        if let Err(refusal) = policy::check(&canonical, &env, &Allowances::default()) {
            panic!("the canonical text of an accepted config is refused: {refusal}\n{canonical}");
        }
    }
    let _ = policy::lookups_in(text);
    for kind in [
        VariableType::Duration,
        VariableType::Number,
        VariableType::Integer,
        VariableType::Regex,
        VariableType::IdentifierList,
    ] {
        let decl = VariableDecl {
            name: "v".into(),
            kind,
            default: String::new(),
            doc: String::new(),
            min: None,
            max: None,
        };
        if let Ok(value) = decl.parse(text) {
            assert!(
                !value.contains('"') && !value.contains('\\') && !value.contains("${"),
                "a {kind:?} value may break out of an OTTL string: {value:?}"
            );
        }
    }
}
