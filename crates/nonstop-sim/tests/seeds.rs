//! Many seeds of the replication simulation, with a check that faults were really injected.

use nonstop_sim::{SimStats, run_seed};

#[test]
fn thousands_of_seeds_keep_every_safety_property() {
    let mut total = SimStats::default();
    for seed in 0..3000 {
        total += run_seed(seed, 1500).unwrap_or_else(|violation| panic!("{violation}"));
    }
    println!("{total:?}");
    // The simulation must exercise what it claims to.
    assert!(total.applied > 100_000, "{total:?}");
    assert!(total.releases > 50_000, "{total:?}");
    assert!(total.frame_faults > 1_000 && total.resets > 1_000, "{total:?}");
    assert!(total.backup_crashes > 500 && total.primary_crashes > 1_000, "{total:?}");
    // Promotions with the other backup rebased onto the new primary, by the pages that differ
    // and, after that backup crashed and came back empty, by a whole image.
    assert!(total.promotions > 300 && total.diff_rebases > 300 && total.whole_rebases > 20, "{total:?}");
}

#[test]
fn a_seed_reproduces_exactly() {
    assert_eq!(run_seed(12345, 3000), run_seed(12345, 3000));
}
