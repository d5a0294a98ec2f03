//! Many seeds of the total-order simulation, with a check that faults were really injected.

use nonstop_sim::order::{Faults, OrderRun, OrderStats, Pacing, run_order, run_order_with};

#[test]
fn every_seed_keeps_one_order_and_answers_every_call_once() {
    let mut total = OrderStats::default();
    for seed in 0..150 {
        total += run_order(seed, 6000).unwrap_or_else(|violation| panic!("{violation}"));
    }
    println!("{total:?}");
    // The simulation must exercise what it claims to.
    assert!(total.delivered > 40_000, "{total:?}");
    // Refused requests whose numbers the next requests reused, and clients asking again.
    assert!(total.refusals > 2_000 && total.answered_from_memory > 10_000, "{total:?}");
    // Retries of requests delivered elsewhere, which the order must not deliver again.
    assert!(total.retries_of_delivered > 100, "{total:?}");
    assert!(total.lost > 10_000 && total.duplicated > 1_000, "{total:?}");
    assert!(total.partitions > 300 && total.crashes > 50, "{total:?}");
    // Crashed leaders, whose connections the others saw close: they stand in turn.
    assert!(total.leaders_crashed > 10, "{total:?}");
    // Every crashed replica came back as a new member and voted again by the end.
    assert!(total.restarts == total.crashes && total.rejoined == total.restarts, "{total:?}");
    assert!(total.membership_changes >= 3 * total.rejoined, "{total:?}");
    assert!(total.leader_changes > 500, "{total:?}");
    // Replicas that fell behind the compacted log and came back by a snapshot and a live
    // replica's state, some from a donor ahead of their own log, with entries kept meanwhile.
    assert!(total.state_transfers > 200 && total.transfers_ahead > 40, "{total:?}");
    assert!(total.entries_kept_for_transfer > 2_000, "{total:?}");
    // States that arrived after the replica had asked for a newer one (the entries it kept
    // outgrew their bound): asked for again, the entries kept since intact.
    assert!(total.transfers_stale > 0, "{total:?}");
    // Corrupted replicas found dissenting by their own digests and the others', re-integrated,
    // and every re-integrated state proven before it answered (some with nobody to prove it
    // against: the other replica was down, or had taken the same donor's state).
    assert!(total.corruptions > 80 && total.dissents_found > 80, "{total:?}");
    // Every corrupted state ended replaced by a good state, and none was copied: a replica a
    // little behind is sent entries, not a snapshot that would make it take a state before
    // the digests found the corruption (two faults at once: `beyond_the_fault_model...`).
    assert_eq!(total.corruptions_replaced, total.corruptions, "{total:?}");
    assert_eq!(total.corruptions_copied, 0, "{total:?}");
    assert!(total.dissents_reported > total.dissents_found && total.digests_proposed > 50_000, "{total:?}");
    // A replica that finds itself dissenting still proposes the digest that shows it, so the
    // others report it (operators learn of every dissent from the replicas that stayed right).
    assert_eq!(total.dissents_unreported, 0, "{total:?}");
    assert!(total.probations_cleared > 300 && total.probations_cleared_unproven > 5, "{total:?}");
}

#[test]
fn an_order_seed_reproduces_exactly() {
    assert_eq!(run_order(4242, 6000), run_order(4242, 6000));
}

/// LSA's batches under the same faults: the grant leader's acquisitions ship through the
/// order, its replies wait for their grant, and a deposed leader takes a live replica's state.
#[test]
fn lsa_replicas_follow_the_acquisitions_granted_and_answer_only_what_was_granted() {
    let mut total = OrderStats::default();
    for seed in 0..120 {
        total += run_order_with(seed, 6000, OrderRun { pacing: Pacing::Loose, ..OrderRun::default() })
            .unwrap_or_else(|violation| panic!("{violation}"));
    }
    println!("{total:?}");
    assert!(total.delivered > 20_000 && total.decided > 20_000, "{total:?}");
    assert!(total.batches_led > 10_000 && total.batches_followed > total.batches_led, "{total:?}");
    // Nearly every led batch was granted; the others were overruled with their leader. Batches
    // of two requests or more had their acquisitions travel in parts.
    assert!(total.batches_granted > total.batches_led * 9 / 10, "{total:?}");
    assert!(total.later_parts_proposed > 1_000, "{total:?}");
    // Followers waiting for a batch's acquisitions held their calls for their next entry, as a
    // node does, and every call was still answered.
    assert!(total.calls_gathered > 10_000, "{total:?}");
    assert!(total.claims > total.leaders_crashed && total.leads_overruled > 0, "{total:?}");
    // Group leaders whose replica did not serve handed the group over, so that one that serves
    // leads the acquisitions.
    assert!(total.handovers > 0, "{total:?}");
    assert!(total.crashes > 20 && total.partitions > 100 && total.corruptions > 40, "{total:?}");
    assert_eq!(total.corruptions_replaced, total.corruptions + total.corruptions_copied, "{total:?}");
    // A follower that waits for acquisitions closes a window after the others' digests of it
    // are in the order, and finds itself dissenting as it digests its own: that digest must
    // still go out for the others to report it (dropped with the rest, 1 of 146 went
    // unreported over these seeds; on nodes, whose executors lag behind delivery, often).
    assert_eq!(total.dissents_unreported, 0, "{total:?}");
}

/// Two faults at once, beyond what three replicas mask: a corrupted state and another replica
/// cut off long enough to take a live replica's state, often the corrupted one's. The group
/// may stall; no client may ever decide a wrong answer, under either pacing. (Found by this
/// test's first runs, 2026-12-07: a state taken from a donor contradicted by the third replica
/// was cleared unproven while the group stalled (order seed 185 before the log kept a tail);
/// a refuted state was cleared later by the refuter's agreement, though the answers it had
/// copied were wrong (seed 3); a dispute older than the judge's windows, or than a restarted
/// replica's knowledge, was forgotten (seeds 165, 327, order-lsa 906).)
#[test]
fn beyond_the_fault_model_the_group_stalls_rather_than_answer_wrongly() {
    let mut total = OrderStats::default();
    for (pacing, seeds) in [(Pacing::Scheduled, 0..80), (Pacing::Loose, 0..40)] {
        for seed in seeds {
            let run = OrderRun { pacing, faults: Faults::TwoAtOnce, trace: false };
            total += run_order_with(seed, 6000, run).unwrap_or_else(|violation| panic!("{pacing:?}: {violation}"));
        }
    }
    println!("{total:?}");
    // Corrupted states copied, states refuted for it, and groups that stalled.
    assert!(total.corruptions > 80 && total.corruptions_copied > 30, "{total:?}");
    assert!(total.probations_refuted > 60 && total.stalled > 60, "{total:?}");
    assert!(total.decided > 20_000, "{total:?}");
}
