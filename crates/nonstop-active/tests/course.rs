//! A replica's `Course` under random sequences of what the order and the network bring:
//! entries with and without other replicas' digests (agreeing or not), snapshots, states
//! arriving from donors at any boundary, and the clock. Whatever comes, the course must keep
//! what active replication relies on:
//! * it answers only with a state that follows the order and is proven: `Serving` implies it
//!   may donate;
//! * it proposes no digest between taking a state and that state's clearing;
//! * what it hands out to execute follows what it executed, entry after entry, and nothing is
//!   handed out while it awaits a state;
//! * a state it asks for covers everything it executed.

use nonstop_active::course::{Course, Event, Standing, Taken};
use nonstop_active::dissent::{Digest, Outcomes, StateVerdict};
use nonstop_active::membership::member_id;
use nonstop_active::order::{Delivered, Request};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Step {
    /// The order delivers an entry of `requests` requests, closing a window if `closes`, with
    /// the digest of the last window closed from `from` (node 1 or 2), agreeing or not.
    Deliver { requests: u64, closes: bool, digest: Option<(u64, bool)> },
    /// The group's snapshot replaces the entries this replica missed.
    Restore,
    /// A donor's state arrives at the `pick`-th entry boundary known, counted from the last.
    Transfer { pick: usize },
    /// The driver's clock moves on.
    Tick { ms: u64 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..4u64, any::<bool>(), proptest::option::of((1..=2u64, any::<bool>())))
            .prop_map(|(requests, closes, digest)| Step::Deliver { requests, closes, digest }),
        1 => Just(Step::Restore),
        2 => (0..4usize).prop_map(|pick| Step::Transfer { pick }),
        1 => (0..700u64).prop_map(|ms| Step::Tick { ms }),
    ]
}

/// The answer every replica gives to every request: the course only sees digests of them.
const ANSWER: &[u8] = b"ok";

/// The digest a replica that answered `requests` requests of window `window` proposes, or a
/// different one.
fn digest_of(node: u64, window: u64, requests: u64, agreeing: bool) -> Option<Digest> {
    let mut outcomes = Outcomes::new();
    for _ in 0..requests {
        outcomes.executed(&Ok(if agreeing { ANSWER.to_vec() } else { b"no".to_vec() }));
    }
    let (window, hash) = outcomes.closed(window)?;
    Some(Digest { member: member_id(node, 0), window, hash, since: 0 })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_course_keeps_its_promises_whatever_comes(steps in proptest::collection::vec(step(), 1..80)) {
        let mut course = Course::founder(member_id(3, 0), &[1, 2, 3], 1 << 20);
        // The order as delivered: the end of every entry so far, the windows closed and the
        // requests in the open window.
        let (mut boundaries, mut delivered, mut window, mut in_window) = (vec![0u64], 0u64, 0u64, 0u64);
        let mut last_closed: Option<(u64, u64)> = None;
        let (mut executed_end, mut awaiting, mut proving, mut now) = (0u64, false, false, 0u64);
        for step in steps {
            match step {
                Step::Deliver { requests, closes, digest } => {
                    let first = delivered;
                    delivered += requests;
                    in_window += requests;
                    let digests = digest
                        .zip(last_closed)
                        .and_then(|((node, agreeing), (window, count))| digest_of(node, window, count, agreeing))
                        .into_iter()
                        .collect();
                    let closes = (closes && in_window > 0).then(|| {
                        last_closed = Some((window, in_window));
                        window += 1;
                        in_window = 0;
                        window - 1
                    });
                    let requests = (0..requests)
                        .map(|n| Request { client: 1, number: first + n + 1, refused: 0, body: vec![] })
                        .collect();
                    let entry = Delivered { index: first + 1, first, requests, turned_away: vec![], time_ms: now, digests, closes, leads: vec![], grant_leader: None };
                    course.delivered(entry).unwrap();
                    boundaries.push(delivered);
                }
                Step::Restore => course.restored(delivered, &[]),
                Step::Transfer { pick } => {
                    // Any boundary: one before the position awaited is a stale state.
                    if course.awaiting_from().is_none() {
                        continue;
                    }
                    let position = boundaries[boundaries.len() - 1 - pick % boundaries.len()];
                    match course.transferred(position, member_id(1, 0), now).unwrap() {
                        Taken::Installed => {
                            (awaiting, proving, executed_end) = (false, true, position);
                        }
                        Taken::Stale { .. } => {}
                    }
                }
                Step::Tick { ms } => {
                    now += ms;
                    course.tick(now);
                }
            }
            // The driver: execute what is handed out, act on what is decided.
            loop {
                while let Some(event) = course.poll_event() {
                    match event {
                        Event::NeedState { from, .. } => {
                            prop_assert!(from >= executed_end, "a state from {from} would not cover {executed_end} executed");
                            awaiting = true;
                        }
                        Event::Propose(_) => prop_assert!(!proving, "a digest proposed while the state taken is unproven"),
                        Event::Probation(StateVerdict::Cleared { .. }) => proving = false,
                        Event::Probation(StateVerdict::Refuted { .. }) | Event::Reported(_) => {}
                        Event::ProposeLead(_) | Event::Granted { .. } => prop_assert!(false, "{event:?} of a course not loose"),
                    }
                }
                let Some(next) = course.next_entry() else { break };
                let entry = next.entry;
                prop_assert!(!awaiting, "an entry handed out while awaiting a state");
                prop_assert_eq!(entry.first, executed_end, "handed out out of order");
                for _ in &entry.requests {
                    course.executed(&Ok(ANSWER.to_vec()));
                }
                executed_end = entry.first + entry.requests.len() as u64;
                course.entry_executed();
            }
            let standing = course.standing();
            if standing == Standing::Serving {
                prop_assert!(course.donation(0).is_ok(), "serving without a state it may donate");
                prop_assert!(!awaiting && !proving);
            }
            if matches!(standing, Standing::Proving | Standing::Refuted { .. }) {
                prop_assert!(proving, "{standing:?} without a state taken");
            }
        }
    }
}
