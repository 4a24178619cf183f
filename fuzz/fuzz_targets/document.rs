//! Any bytes as an Experiment, PipelineTemplate or PipelineDeployment document.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| phoenix_wire::fuzzing::document(data));
