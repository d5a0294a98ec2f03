//! Failover end to end: three node processes on 127.0.1.1-3, clients retrying through two
//! SIGKILLs of the primary; every acknowledged transfer survives exactly once.

use nonstop_testbed::cluster::ClusterSpec;

#[test]
fn killing_the_primary_twice_and_a_switchover_lose_and_double_nothing() {
    let spec = ClusterSpec { ip_prefix: "127.0.1".into(), region_size_mib: 32, ..ClusterSpec::default() };
    let mut out = Vec::new();
    let report =
        nonstop_testbed::demo::run(std::path::Path::new(env!("CARGO_BIN_EXE_nonstop")), &spec, 4, 2, true, &mut out)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", String::from_utf8_lossy(&out)));
    let text = String::from_utf8_lossy(&out);
    let verdict = &report.verdict;
    assert!(verdict.clean(), "{:?}\n{}\n{text}", verdict.check, verdict.report.summary());
    assert!(verdict.acknowledged > 100, "the clients made progress: {verdict:?}\n{text}");
    assert!(verdict.report.operations.reads_ok > 20, "the readers made progress: {verdict:?}");
    assert_eq!(report.failovers.len(), 2);
    let switchover = report.switchover.as_ref().expect("the switchover ran");
    assert_ne!(switchover.from, switchover.to);
    assert!(switchover.first_ack.is_some(), "the new primary answered after the switchover: {text}");
    for failover in &report.failovers {
        assert_ne!(failover.killed, failover.promoted, "{text}");
        assert!(failover.first_ack.is_some(), "the new primary answered: {text}");
        assert!(failover.protected.is_some(), "the killed node came back as a backup: {text}");
    }
}
