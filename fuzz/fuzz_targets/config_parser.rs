//! A node's config file with fuzzer-chosen text: parsed and checked, and its services built from
//! the built-in kinds and their settings, it is either accepted or refused with an error that
//! names the problem — never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nonstop_node::config::NodeConfig;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(config) = NodeConfig::parse(text, Path::new("fuzz.toml")) else { return };
    match config.check() {
        Err(error) => assert!(!error.to_string().is_empty()),
        Ok(checked) => {
            let mut registry = nonstop_service::Registry::new();
            nonstop_workloads::register_builtins(&mut registry);
            if let Err(error) = checked.services(&registry) {
                assert!(!error.to_string().is_empty());
            }
        }
    }
});
