//! A primary without backups releases output under its lease, and stops when the lease ends:
//! a cut that advances the held checkpoint must publish it, as an acknowledgement does.

use nonstop_net::{Primary, PrimaryConfig};
use nonstop_proto::auth::ClusterKey;
use nonstop_proto::{CheckpointId, CommitPolicy, Term, UpdateProtocol};
use nonstop_region::{Mirror, Region};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn an_unprotected_primary_releases_under_its_lease_only() {
    let region = Region::map(0x2e00_0000_0000, 1 << 20).unwrap();
    let mirror = Arc::new(Mirror::new(region, Some(UpdateProtocol::Au), CheckpointId(1)));
    let config = PrimaryConfig {
        term: Term(2),
        policy: CommitPolicy::Epoch { interval_us: 1000, max_commits: 0 },
        required_backups: 0,
        key: ClusterKey::from_bytes([7; 32]),
    };
    let primary = Primary::start(mirror.clone(), config);
    primary.set_required(BTreeSet::new());
    let commit = || {
        let tx = mirror.begin();
        *tx.write::<u64>(64).unwrap() += 1;
        tx.commit()
    };
    // No lease: nothing leaves.
    assert!(primary.wait_held(commit(), Duration::from_millis(50)).is_err());
    // A lease: the epoch cuts release what was committed, without any acknowledgement.
    primary.set_lease(Some(Instant::now() + Duration::from_millis(300)));
    primary.wait_held(commit(), Duration::from_secs(1)).expect("released under the lease");
    // The lease ran out: output stops again.
    std::thread::sleep(Duration::from_millis(350));
    assert!(primary.wait_held(commit(), Duration::from_millis(50)).is_err());
    primary.shutdown();
}
