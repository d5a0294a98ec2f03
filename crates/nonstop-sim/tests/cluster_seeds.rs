//! Seeds of the failover simulation: the control plane, promotion and output commit under
//! crashes, partitions and pauses.

use nonstop_sim::cluster::{ClusterStats, run_cluster_seed};

#[test]
fn failover_keeps_every_safety_property_across_seeds() {
    let mut total = ClusterStats::default();
    let seeds: u64 = std::env::var("NONSTOP_SIM_CLUSTER_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(600);
    for seed in 0..seeds {
        total += run_cluster_seed(seed, 3000).unwrap_or_else(|violation| panic!("{violation}"));
    }
    eprintln!("{total:?}");
    // The simulation must exercise what it claims to.
    assert!(total.promotions > seeds / 3, "{total:?}");
    // Liveness, coarsely: the service keeps releasing between faults (a primary that cannot
    // renew its lease releases a third of this).
    assert!(total.released > 1500 * seeds, "{total:?}");
    assert!(total.crashes > seeds / 2 && total.partitions > seeds / 2 && total.pauses > seeds / 2, "{total:?}");
}

#[test]
fn a_cluster_seed_reproduces_exactly() {
    assert_eq!(run_cluster_seed(77, 4000), run_cluster_seed(77, 4000));
}

/// `NONSTOP_SIM_SEED=S NONSTOP_SIM_TRACE=1 cargo test -p nonstop-sim --test cluster_seeds one_seed`
/// replays one seed with a trace of its events.
#[test]
fn one_seed() {
    if let Some(seed) = std::env::var("NONSTOP_SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        run_cluster_seed(seed, 3000).unwrap_or_else(|violation| panic!("{violation}"));
    }
}
