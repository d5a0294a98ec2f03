//! Two replicas whose threads run at different speeds must acquire every mutex in the same
//! order and end in the same state. Each thread runs a fixed script (its share of the
//! requests); a seeded "physical" schedule decides which runnable thread takes its next step,
//! standing in for the timing of real threads on a replica. Over many seeds, a deterministic
//! scheduler gives one acquisition order and one state; a plain first-come mutex does not,
//! which shows the test can tell them apart.

use nonstop_active::schedule::{Action, Algorithm, MutexId, Role, ScheduleError, Scheduler, ThreadId};
use proptest::prelude::*;

mod common;
use common::{Op, scripts};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, VecDeque};

/// What decides who gets a mutex: the deterministic scheduler, or the first-come baseline.
trait Grants {
    fn initially_running(&self) -> Vec<ThreadId>;
    fn lock(&mut self, thread: ThreadId, mutex: MutexId) -> Result<Vec<Action>, ScheduleError>;
    fn unlock(&mut self, thread: ThreadId, mutex: MutexId) -> Result<Vec<Action>, ScheduleError>;
    fn exit(&mut self, thread: ThreadId) -> Result<Vec<Action>, ScheduleError>;
    /// Between two steps: what arrives from elsewhere (an LSA follower's shipped order).
    /// `stalled`: no thread can run until something arrives.
    fn tick(&mut self, _stalled: bool) -> Vec<Action> {
        vec![]
    }
}

impl Grants for Scheduler {
    fn initially_running(&self) -> Vec<ThreadId> {
        Scheduler::initially_running(self)
    }
    fn lock(&mut self, thread: ThreadId, mutex: MutexId) -> Result<Vec<Action>, ScheduleError> {
        Scheduler::lock(self, thread, mutex)
    }
    fn unlock(&mut self, thread: ThreadId, mutex: MutexId) -> Result<Vec<Action>, ScheduleError> {
        Scheduler::unlock(self, thread, mutex)
    }
    fn exit(&mut self, thread: ThreadId) -> Result<Vec<Action>, ScheduleError> {
        Scheduler::exit(self, thread)
    }
}

/// An LSA follower whose leader's order arrives a little at a time, as from the network.
struct Following {
    scheduler: Scheduler,
    order: VecDeque<(MutexId, ThreadId)>,
    rng: SmallRng,
}

impl Grants for Following {
    fn initially_running(&self) -> Vec<ThreadId> {
        self.scheduler.initially_running()
    }
    fn lock(&mut self, thread: ThreadId, mutex: MutexId) -> Result<Vec<Action>, ScheduleError> {
        self.scheduler.lock(thread, mutex)
    }
    fn unlock(&mut self, thread: ThreadId, mutex: MutexId) -> Result<Vec<Action>, ScheduleError> {
        self.scheduler.unlock(thread, mutex)
    }
    fn exit(&mut self, thread: ThreadId) -> Result<Vec<Action>, ScheduleError> {
        self.scheduler.exit(thread)
    }
    fn tick(&mut self, stalled: bool) -> Vec<Action> {
        let mut actions = Vec::new();
        while (stalled && actions.is_empty() || self.rng.random_bool(0.2))
            && let Some((mutex, thread)) = self.order.pop_front()
        {
            actions.extend(self.scheduler.shipped(mutex, thread).unwrap());
        }
        actions
    }
}

/// An ordinary mutex: whoever asks first gets it (what a replica without a deterministic
/// scheduler does).
struct FirstCome {
    threads: u16,
    mutexes: BTreeMap<MutexId, (Option<ThreadId>, VecDeque<ThreadId>)>,
}

impl Grants for FirstCome {
    fn initially_running(&self) -> Vec<ThreadId> {
        (0..self.threads).map(ThreadId).collect()
    }
    fn lock(&mut self, thread: ThreadId, mutex: MutexId) -> Result<Vec<Action>, ScheduleError> {
        let (holder, queue) = self.mutexes.entry(mutex).or_default();
        if holder.is_none() {
            *holder = Some(thread);
            return Ok(vec![Action::Run { thread, acquired: Some(mutex) }]);
        }
        queue.push_back(thread);
        Ok(vec![])
    }
    fn unlock(&mut self, _: ThreadId, mutex: MutexId) -> Result<Vec<Action>, ScheduleError> {
        let (holder, queue) = self.mutexes.get_mut(&mutex).expect("held");
        *holder = queue.pop_front();
        Ok(holder.iter().map(|&thread| Action::Run { thread, acquired: Some(mutex) }).collect())
    }
    fn exit(&mut self, _: ThreadId) -> Result<Vec<Action>, ScheduleError> {
        Ok(vec![])
    }
}

/// What a replica's run produced: each mutex's acquisitions in order, and the shared state.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    acquisitions: BTreeMap<MutexId, Vec<ThreadId>>,
    state: BTreeMap<MutexId, u64>,
    /// What an LSA leader shipped, in order (not compared: followers ship nothing).
    shipped: Shipped,
}

#[derive(Debug, Default)]
struct Shipped(Vec<(MutexId, ThreadId)>);

impl PartialEq for Shipped {
    fn eq(&self, _: &Shipped) -> bool {
        true
    }
}

impl Eq for Shipped {}

/// Runs the scripts under `grants`, the threads stepping in the order a `physical` seed draws.
/// Checks mutual exclusion at every grant, and that every thread finishes (no lockout).
fn run(grants: &mut dyn Grants, scripts: &[Vec<Op>], physical: u64) -> Outcome {
    let mut rng = SmallRng::seed_from_u64(physical);
    let count = scripts.len();
    let mut next = vec![0usize; count];
    let mut left = vec![0u32; count];
    let mut runnable = vec![false; count];
    let mut done = vec![false; count];
    for thread in grants.initially_running() {
        runnable[thread.0 as usize] = true;
    }
    let mut holders: BTreeMap<MutexId, ThreadId> = BTreeMap::new();
    let mut outcome = Outcome { acquisitions: BTreeMap::new(), state: BTreeMap::new(), shipped: Shipped::default() };
    let mut apply = |actions: Vec<Action>, runnable: &mut Vec<bool>, holders: &mut BTreeMap<MutexId, ThreadId>| {
        for action in actions {
            let (thread, acquired) = match action {
                Action::Run { thread, acquired } => (thread, acquired),
                Action::Ship { mutex, thread } => {
                    outcome.shipped.0.push((mutex, thread));
                    continue;
                }
            };
            runnable[thread.0 as usize] = true;
            if let Some(mutex) = acquired {
                assert!(holders.insert(mutex, thread).is_none(), "two threads hold {mutex:?}");
                outcome.acquisitions.entry(mutex).or_default().push(thread);
                // The shared data the mutex protects: what it holds depends on who came in
                // which order, as a service's state would.
                let value = outcome.state.entry(mutex).or_insert(17);
                *value = value.wrapping_mul(31).wrapping_add(u64::from(thread.0) + 1);
            }
        }
    };
    for _ in 0..1_000_000 {
        let stalled = (0..count).all(|t| !runnable[t] || done[t]);
        apply(grants.tick(stalled), &mut runnable, &mut holders);
        let candidates: Vec<usize> = (0..count).filter(|&t| runnable[t] && !done[t]).collect();
        if candidates.is_empty() {
            assert!(done.iter().all(|d| *d), "threads left waiting for ever: {done:?}");
            return outcome;
        }
        let index = candidates[rng.random_range(0..candidates.len())];
        let thread = ThreadId(index as u16);
        if left[index] > 0 {
            left[index] -= 1;
            continue;
        }
        let actions = match scripts[index].get(next[index]) {
            None => {
                done[index] = true;
                grants.exit(thread).unwrap()
            }
            Some(&Op::Compute(steps)) => {
                left[index] = steps;
                vec![]
            }
            Some(&Op::Lock(mutex)) => {
                runnable[index] = false;
                grants.lock(thread, mutex).unwrap()
            }
            Some(&Op::Unlock(mutex)) => {
                assert_eq!(holders.remove(&mutex), Some(thread));
                grants.unlock(thread, mutex).unwrap()
            }
        };
        next[index] += 1;
        apply(actions, &mut runnable, &mut holders);
    }
    panic!("no end after a million steps");
}

#[test]
fn deterministic_schedulers_give_one_order_whatever_the_threads_timing() {
    for algorithm in [Algorithm::Npds, Algorithm::Pds1, Algorithm::Pds2] {
        for workload in 0..20 {
            let scripts = scripts(workload, 6, 4, 12);
            let first = run(&mut Scheduler::new(algorithm, 6), &scripts, 0);
            for physical in 1..30 {
                let other = run(&mut Scheduler::new(algorithm, 6), &scripts, physical);
                assert_eq!(first, other, "{algorithm:?}, workload {workload}, timing {physical}");
            }
        }
    }
}

/// The leader's order is its threads' timing; every follower, whatever its own timing and
/// however late the order reaches it, repeats it.
#[test]
fn lsa_followers_repeat_the_leader_s_order() {
    for workload in 0..20 {
        let scripts = scripts(workload, 6, 4, 12);
        let leader = run(&mut Scheduler::new(Algorithm::Lsa(Role::Leader), 6), &scripts, 1000 + workload);
        let acquisitions: usize = leader.acquisitions.values().map(Vec::len).sum();
        assert_eq!(leader.shipped.0.len(), acquisitions, "the leader ships every acquisition");
        for physical in 0..20 {
            let mut follower = Following {
                scheduler: Scheduler::new(Algorithm::Lsa(Role::Follower), 6),
                order: leader.shipped.0.iter().copied().collect(),
                rng: SmallRng::seed_from_u64(physical),
            };
            let followed = run(&mut follower, &scripts, physical);
            assert_eq!(followed, leader, "workload {workload}, timing {physical}");
        }
    }
}

/// An LSA follower whose leader dies after shipping part of its order: once it was given all of
/// that part, it takes over and ships from there.
struct TakingOver {
    following: Following,
    led: bool,
}

impl Grants for TakingOver {
    fn initially_running(&self) -> Vec<ThreadId> {
        self.following.initially_running()
    }
    fn lock(&mut self, thread: ThreadId, mutex: MutexId) -> Result<Vec<Action>, ScheduleError> {
        self.following.lock(thread, mutex)
    }
    fn unlock(&mut self, thread: ThreadId, mutex: MutexId) -> Result<Vec<Action>, ScheduleError> {
        self.following.unlock(thread, mutex)
    }
    fn exit(&mut self, thread: ThreadId) -> Result<Vec<Action>, ScheduleError> {
        self.following.exit(thread)
    }
    fn tick(&mut self, stalled: bool) -> Vec<Action> {
        if self.led {
            return vec![];
        }
        let mut actions = self.following.tick(stalled);
        // The leader's death is noticed a while after its last grant arrived.
        if self.following.order.is_empty() && (stalled || self.following.rng.random_bool(0.1)) {
            self.led = true;
            actions.extend(self.following.scheduler.take_over().unwrap());
        }
        actions
    }
}

/// The leader dies part way: a follower takes over and ships from there, and another follower,
/// given the dead leader's part and then the new leader's, ends with the new leader's order and
/// state whatever the timings; both begin as the dead leader's order did.
#[test]
fn an_lsa_follower_that_takes_over_continues_one_order() {
    for workload in 0..20 {
        let scripts = scripts(workload, 6, 4, 12);
        let leader = run(&mut Scheduler::new(Algorithm::Lsa(Role::Leader), 6), &scripts, 2000 + workload);
        for physical in 0..20 {
            let cut = (workload * 7 + physical * 3) as usize % (leader.shipped.0.len() + 1);
            let shipped_before = &leader.shipped.0[..cut];
            let mut successor = TakingOver {
                following: Following {
                    scheduler: Scheduler::new(Algorithm::Lsa(Role::Follower), 6),
                    order: shipped_before.iter().copied().collect(),
                    rng: SmallRng::seed_from_u64(physical),
                },
                led: false,
            };
            let took_over = run(&mut successor, &scripts, physical);
            let mut follower = Following {
                scheduler: Scheduler::new(Algorithm::Lsa(Role::Follower), 6),
                order: shipped_before.iter().chain(&took_over.shipped.0).copied().collect(),
                rng: SmallRng::seed_from_u64(physical + 100),
            };
            let followed = run(&mut follower, &scripts, physical + 100);
            let at = format!("workload {workload}, cut {cut}, timing {physical}");
            assert_eq!(followed, took_over, "{at}");
            let acquired: usize = took_over.acquisitions.values().map(Vec::len).sum();
            assert_eq!(cut + took_over.shipped.0.len(), acquired, "{at}: every grant but those owed is shipped");
            for (mutex, threads) in &took_over.acquisitions {
                let before: Vec<ThreadId> =
                    shipped_before.iter().filter(|(m, _)| m == mutex).map(|(_, t)| *t).collect();
                assert!(threads.starts_with(&before), "{at}: {mutex:?} began as the dead leader's order");
            }
        }
    }
}

#[test]
fn first_come_mutexes_diverge_so_the_test_can_tell() {
    let scripts = scripts(3, 6, 4, 12);
    let first_come = |physical| run(&mut FirstCome { threads: 6, mutexes: BTreeMap::new() }, &scripts, physical);
    let first = first_come(0);
    assert!((1..30).any(|physical| first_come(physical) != first), "first-come grants did not depend on timing");
}

#[test]
fn pds_rounds_grant_several_mutexes_at_once_and_pds2_needs_fewer_rounds() {
    // Many threads asking for different mutexes: a round grants several at once, and with a
    // second acquisition allowed per round, fewer rounds are needed.
    let scripts = scripts(5, 8, 8, 10);
    let acquisitions = scripts.iter().flatten().filter(|op| matches!(op, Op::Lock(_))).count() as u64;
    let rounds = |algorithm| {
        let mut scheduler = Scheduler::new(algorithm, 8);
        run(&mut scheduler, &scripts, 1);
        scheduler.rounds()
    };
    let (pds1, pds2) = (rounds(Algorithm::Pds1), rounds(Algorithm::Pds2));
    assert!(pds1 < acquisitions, "PDS-1: {pds1} rounds for {acquisitions} acquisitions");
    assert!(pds2 < pds1, "PDS-2: {pds2} rounds, PDS-1: {pds1}");
}

proptest! {
    #[test]
    fn any_workload_and_any_two_timings_agree(
        workload in any::<u64>(),
        threads in 1usize..8,
        mutexes in 1u32..6,
        timings in (any::<u64>(), any::<u64>()),
    ) {
        for algorithm in [Algorithm::Npds, Algorithm::Pds1, Algorithm::Pds2] {
            let scripts = scripts(workload, threads, mutexes, 6);
            let one = run(&mut Scheduler::new(algorithm, threads as u16), &scripts, timings.0);
            let two = run(&mut Scheduler::new(algorithm, threads as u16), &scripts, timings.1);
            prop_assert_eq!(one, two);
        }
    }
}
