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

#[test]
fn chaos_kill_offers_the_node_service_kinds_and_refuses_a_ledger_without_tracking() {
    let unknown = nonstop(&["chaos", "kill", "--kind", "vault"]);
    assert!(!unknown.status.success());
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(stderr.contains("bank") && stderr.contains("ledger"), "{stderr}");
    let declared = nonstop(&["chaos", "kill", "--kind", "ledger", "--trials", "1"]);
    assert!(!declared.status.success());
    let stderr = String::from_utf8_lossy(&declared.stderr);
    assert!(stderr.contains("--tracking uffd or mprotect"), "{stderr}");
}

#[test]
fn bench_tracking_measures_every_mode_and_draws_the_chart() {
    let dir = tempfile::tempdir().unwrap();
    let out = nonstop(&[
        "bench",
        "tracking",
        "--pages",
        "1000",
        "--repeats",
        "1",
        "--json",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let modes: Vec<&str> =
        report["modes"].as_array().unwrap().iter().map(|m| m["tracking"].as_str().unwrap()).collect();
    if std::env::var_os("NONSTOP_REQUIRE_UFFD").is_some() || modes.contains(&"uffd") {
        assert_eq!(modes, ["plain", "declared", "uffd", "mprotect"]);
    } else {
        eprintln!("SKIPPED for uffd: this kernel lacks userfaultfd write-protect (Linux >= 6.7)");
        assert_eq!(modes, ["plain", "declared", "mprotect"]);
    }
    for mode in report["modes"].as_array().unwrap() {
        let pages: Vec<u64> =
            mode["cuts"].as_array().unwrap().iter().map(|c| c["dirty_pages"].as_u64().unwrap()).collect();
        assert_eq!(pages, [1, 10, 100, 1000], "{mode}");
        assert!(mode["first_write_ns"].as_f64().unwrap() > 0.0, "{mode}");
    }
    assert!(std::fs::read_to_string(dir.path().join("tracking.svg")).unwrap().starts_with("<svg"));
}
