//! Any text as a collector config through the template policy, and as a value of
//! each variable type.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| phoenix_wire::fuzzing::policy(data));
