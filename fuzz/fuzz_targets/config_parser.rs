//! A node's config file with fuzzer-chosen text: parsed and checked, it is either accepted or
//! refused with an error that names the problem — never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nonstop_node::config::NodeConfig;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(config) = NodeConfig::parse(text, Path::new("fuzz.toml")) {
        if let Err(error) = config.check() {
            assert!(!error.to_string().is_empty());
        }
    }
});
