//! The `nonstop` command's small paths: simulations from the command line, and errors that
//! name what to fix.

use std::process::Command;

fn nonstop(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_nonstop")).args(args).output().expect("run nonstop")
}

#[test]
fn sim_runs_seed_ranges_and_single_seeds() {
    let range = nonstop(&["sim", "--seeds", "20"]);
    assert!(range.status.success(), "{}", String::from_utf8_lossy(&range.stderr));
    assert!(String::from_utf8_lossy(&range.stdout).contains("kept every safety property"));
    let one = nonstop(&["sim", "--kind", "replication", "--seed", "7"]);
    assert!(one.status.success(), "{}", String::from_utf8_lossy(&one.stderr));
    assert!(String::from_utf8_lossy(&one.stdout).contains("replication seed 7"));
}

#[test]
fn a_bad_node_config_is_refused_with_the_field_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(
        &path,
        "[node]\nid = 0\ncontrol = \"127.0.0.1:1\"\nclient = \"127.0.0.1:2\"\nreplication = \"127.0.0.1:3\"\ndata_dir = \"/tmp\"\nkey_file = \"/tmp/k\"\n",
    )
    .unwrap();
    let out = nonstop(&["node", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("node.id") && stderr.contains("number nodes from 1"), "{stderr}");
    let missing = nonstop(&["status"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("--config"));
}
