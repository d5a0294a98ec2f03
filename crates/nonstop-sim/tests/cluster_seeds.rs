//! Seeds of the failover simulation: the control plane, the nodes' role machine, promotion and
//! output commit under crashes, double failures, partitions, pauses and switchovers, for
//! services with one backup and with two (`min_backups` 1 and 2).

use nonstop_sim::cluster::{ClusterStats, run_cluster, run_cluster_seed};

#[test]
fn failover_keeps_every_safety_property_across_seeds() {
    let seeds: u64 = std::env::var("NONSTOP_SIM_CLUSTER_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let mut total = ClusterStats::default();
    std::thread::scope(|scope| {
        let shares: Vec<_> = (0..workers)
            .map(|worker| {
                scope.spawn(move || {
                    let mut share = ClusterStats::default();
                    for seed in (worker..seeds).step_by(workers as usize) {
                        share += run_cluster_seed(seed, 3000).unwrap_or_else(|violation| {
                            panic!("{violation}\nreproduce: nonstop sim --seed {seed} --trace")
                        });
                    }
                    share
                })
            })
            .collect();
        for share in shares {
            total += share.join().expect("a seed failed");
        }
    });
    eprintln!("{total:?}");
    // The simulation must exercise what it claims to.
    assert!(total.promotions > seeds / 3, "{total:?}");
    // Liveness, coarsely: the service keeps releasing between faults (a primary that cannot
    // renew its lease releases a third of this).
    assert!(total.released > 1500 * seeds, "{total:?}");
    // Faults are budgeted (at most k failures in flight), so fewer come than the dice offer.
    assert!(total.crashes > seeds / 2 && total.partitions > seeds / 4 && total.pauses > seeds / 4, "{total:?}");
    // Two failures in flight at once, the second one taking the holder the first promotion
    // kept, and the rebase that brings a kept holder to the new primary's checkpoint.
    assert!(total.double_failures > seeds / 20, "{total:?}");
    assert!(total.kept_holder_promotions > seeds / 100, "{total:?}");
    assert!(total.rebases > seeds / 10 && total.precopies > seeds, "{total:?}");
    assert!(total.switchovers > seeds / 10, "{total:?}");
    // Some runs go beyond k failures on purpose (every property but loss is still checked).
    assert!(total.beyond_budget > 0, "{total:?}");
    // The outage bound is checked often: lone crashes of a calm service.
    assert!(total.lone_crashes > seeds / 10, "{total:?}");
}

#[test]
fn a_cluster_seed_reproduces_exactly() {
    assert_eq!(run_cluster_seed(77, 4000), run_cluster_seed(77, 4000));
}

/// `NONSTOP_SIM_SEED=S NONSTOP_SIM_TRACE=1 cargo test -p nonstop-sim --test cluster_seeds one_seed`
/// replays one seed with a trace of its events (as `nonstop sim --seed S --trace` does).
#[test]
fn one_seed() {
    if let Some(seed) = std::env::var("NONSTOP_SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        let trace = std::env::var_os("NONSTOP_SIM_TRACE").is_some();
        run_cluster(seed, 3000, trace).unwrap_or_else(|violation| panic!("{violation}"));
    }
}
