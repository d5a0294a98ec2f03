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
    let order = nonstop(&["sim", "--kind", "order", "--seeds", "3"]);
    assert!(order.status.success(), "{}", String::from_utf8_lossy(&order.stderr));
    assert!(String::from_utf8_lossy(&order.stdout).contains("order: seeds 0..3"));
    let doubled = nonstop(&["sim", "--kind", "order-lsa", "--two-faults", "--seed", "5"]);
    assert!(doubled.status.success(), "{}", String::from_utf8_lossy(&doubled.stderr));
    assert!(String::from_utf8_lossy(&doubled.stdout).contains("order-lsa seed 5"));
    let misplaced = nonstop(&["sim", "--kind", "failover", "--two-faults", "--seeds", "1"]);
    assert!(!misplaced.status.success());
    assert!(String::from_utf8_lossy(&misplaced.stderr).contains("--two-faults is for --kind order"));
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
    // Operator commands prove they hold the cluster key: addresses alone are not enough.
    let keyless = nonstop(&["switchover", "bank", "--to", "2", "--node", "127.0.0.1:7001"]);
    assert!(!keyless.status.success());
    let stderr = String::from_utf8_lossy(&keyless.stderr);
    assert!(stderr.contains("--key-file") && stderr.trim().lines().count() == 1, "{stderr}");
}

#[test]
fn chaos_kill_offers_the_node_service_kinds_and_refuses_a_ledger_with_declared_writes() {
    let unknown = nonstop(&["chaos", "kill", "--kind", "vault"]);
    assert!(!unknown.status.success());
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(stderr.contains("bank") && stderr.contains("order-entry") && stderr.contains("--node-binary"), "{stderr}");
    let declared = nonstop(&["chaos", "kill", "--kind", "ledger", "--tracking", "declared", "--trials", "1"]);
    assert!(!declared.status.success());
    let stderr = String::from_utf8_lossy(&declared.stderr);
    assert!(stderr.contains("--tracking uffd or mprotect"), "{stderr}");
    // A node binary is asked which kinds it runs before anything starts.
    let kinds = nonstop(&["kinds"]);
    assert_eq!(
        String::from_utf8_lossy(&kinds.stdout),
        "bank offsets\nkv collections\nledger collections\norder-entry offsets\nsurvey threads\n"
    );
    let exe = env!("CARGO_BIN_EXE_nonstop");
    let foreign = nonstop(&["chaos", "kill", "--node-binary", exe, "--kind", "orderbook", "--trials", "1"]);
    let stderr = String::from_utf8_lossy(&foreign.stderr);
    assert!(!foreign.status.success() && stderr.contains("kinds` lists those it does"), "{stderr}");
    let missing = nonstop(&["chaos", "kill", "--node-binary", "/nonexistent/node", "--trials", "1"]);
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        !missing.status.success() && stderr.contains("no such file") && stderr.trim().lines().count() == 1,
        "{stderr}"
    );
}

#[test]
fn flags_of_active_replication_are_refused_on_a_passive_run_with_the_fix() {
    // Each in one line, before anything starts (no root needed: the refusal comes first).
    for args in [
        &["chaos", "kill", "--replies", "leader-only"][..],
        &["chaos", "kill", "--fault", "flip-memory"],
        &["chaos", "--netns", "partition", "--replies", "pass-first"],
        // A multithreaded kind keeps its state where no backup can copy it.
        &["chaos", "kill", "--kind", "survey", "--trials", "1"],
        &["chaos", "--netns", "kill", "--kind", "survey", "--trials", "1"],
    ] {
        let refused = nonstop(args);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success() && stderr.contains("--replication active"), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
    }
    // Worker threads belong to a multithreaded kind, under a scheduler that exists.
    for (args, says) in [
        (&["chaos", "kill", "--replication", "active", "--scheduler", "pds1"][..], "one request at a time"),
        (&["chaos", "kill", "--replication", "active", "--kind", "survey", "--scheduler", "lsa2"], "\"lsa\""),
    ] {
        let refused = nonstop(args);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success() && stderr.contains(says), "{args:?}: {stderr}");
    }
    let lossy = nonstop(&["chaos", "--netns", "lossy", "--replication", "active"]);
    let stderr = String::from_utf8_lossy(&lossy.stderr);
    assert!(!lossy.status.success() && stderr.contains("kill, pause, partition and bitflip"), "{stderr}");
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

/// A node that cannot serve its config says so in one line, naming the field and the fix, even
/// with backtraces asked for, and never says it is ready.
#[test]
fn a_node_refuses_a_missing_key_file_or_a_taken_port_in_one_line_before_ready() {
    let dir = tempfile::tempdir().unwrap();
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let key = dir.path().join("cluster.key");
    let write = |name: &str, key_file: &std::path::Path, replication: std::net::SocketAddr| {
        let path = dir.path().join(name);
        let text = format!(
            "[node]\nid = 1\ncontrol = \"{}\"\nclient = \"{}\"\nreplication = \"{replication}\"\ndata_dir = \"{}\"\nkey_file = \"{}\"\n\n[[peers]]\nid = 2\ncontrol = \"127.0.0.2:7001\"\nclient = \"127.0.0.2:7101\"\nreplication = \"127.0.0.2:7201\"\n\n[[services]]\nname = \"bank\"\nprimary = 1\nregion_base = \"0x2d4000000000\"\nregion_size_mib = 64\n",
            free(),
            free(),
            dir.path().join("data").display(),
            key_file.display()
        );
        std::fs::write(&path, text).unwrap();
        path
    };
    let run = |config: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_nonstop"))
            .args(["node", "--config", config.to_str().unwrap()])
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap()
    };
    let missing = run(&write("missing.toml", &key, free()));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success());
    assert!(stderr.contains("node.key_file") && stderr.contains("openssl rand -hex 32"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line, no backtrace: {stderr}");

    std::fs::write(&key, "ab".repeat(32)).unwrap();
    let started = std::time::Instant::now();
    let port = run(&write("port.toml", &key, taken.local_addr().unwrap()));
    let stderr = String::from_utf8_lossy(&port.stderr);
    assert!(!port.status.success());
    assert!(stderr.contains("node.replication") && stderr.contains("pick another replication port"), "{stderr}");
    assert!(!String::from_utf8_lossy(&port.stdout).contains("node ready"), "refused before ready");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "refused at once, not retried");
    assert!(!stderr.to_lowercase().contains("backtrace"), "{stderr}");
}

#[test]
fn bench_active_reports_every_scheduler_and_refuses_an_even_group() {
    let small = ["--workers", "3", "--clients", "4", "--io-us", "20", "--duration", "150ms", "--rounds", "1"];
    let out = nonstop(&[&["bench", "active", "--json"][..], &small].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    for field in [
        "unreplicated_per_s",
        "npds_per_s",
        "pds1_per_s",
        "pds2_per_s",
        "lsa_per_s",
        "pds2_vs_npds",
        "lsa_vs_npds",
        "best_vs_unreplicated",
        "passive_per_s",
        "passive_vs_unreplicated",
    ] {
        assert!(report[field].as_f64().is_some_and(|value| value > 0.0), "{field}: {report}");
    }
    let even = nonstop(&[&["bench", "active", "--replicas", "2"][..], &small].concat());
    assert!(!even.status.success());
    let stderr = String::from_utf8_lossy(&even.stderr);
    assert!(stderr.contains("odd number") && !stderr.contains("panicked"), "{stderr}");
}
