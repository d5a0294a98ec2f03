//! The schedulers driving real threads through `nonstop_active::sync`: the same scripts run
//! with different, random thread timings must enter every mutex in the same order and leave
//! the same shared state, as two replicas must.

use nonstop_active::schedule::{Algorithm, MutexId, Role, ScheduleError, ThreadId};
use nonstop_active::sync::{Guard, Mutex, Replica};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::time::Duration;

mod common;
use common::{Op, scripts};

/// What a mutex protects: who entered it, in order, and a value that depends on that order.
type Shared = (Vec<u16>, u64);

const THREADS: u16 = 5;
const MUTEXES: u32 = 3;

/// Runs `scripts` on real threads of `replica`, each computing for random, seeded times;
/// fails if they deadlock.
fn run(replica: &Arc<Replica>, scripts: &[Vec<Op>], timing: u64) -> Vec<Shared> {
    let (replica, scripts) = (replica.clone(), scripts.to_vec());
    common::unless_deadlocked("the replica's threads", move || run_unguarded(&replica, &scripts, timing))
}

fn run_unguarded(replica: &Arc<Replica>, scripts: &[Vec<Op>], timing: u64) -> Vec<Shared> {
    let mutexes: Vec<Mutex<Shared>> = (0..MUTEXES).map(|m| Mutex::new(MutexId(m), (Vec::new(), 17))).collect();
    std::thread::scope(|scope| {
        for (index, script) in scripts.iter().enumerate() {
            let (worker, mutexes) = (replica.worker(ThreadId(index as u16)).unwrap(), &mutexes);
            scope.spawn(move || {
                let mut rng = SmallRng::seed_from_u64(timing * 1000 + index as u64);
                let mut held: Vec<Guard<'_, Shared>> = Vec::new();
                for op in script {
                    match *op {
                        Op::Compute(steps) => {
                            for _ in 0..steps {
                                std::thread::sleep(Duration::from_micros(rng.random_range(0..40)));
                            }
                        }
                        Op::Lock(mutex) => {
                            let mut guard = worker.lock(&mutexes[mutex.0 as usize]).unwrap();
                            guard.0.push(worker.id().0);
                            guard.1 = guard.1.wrapping_mul(31).wrapping_add(u64::from(worker.id().0) + 1);
                            held.push(guard);
                        }
                        Op::Unlock(_) => drop(held.pop()),
                    }
                }
                drop(held);
                worker.exit().unwrap();
            });
        }
    });
    mutexes.into_iter().map(Mutex::into_inner).collect()
}

#[test]
fn real_threads_enter_each_mutex_in_one_order_whatever_their_timing() {
    for algorithm in [Algorithm::Npds, Algorithm::Pds1, Algorithm::Pds2] {
        for workload in 0..3 {
            let scripts = scripts(workload, THREADS as usize, MUTEXES, 6);
            let first = run(&Replica::new(algorithm, THREADS), &scripts, 0);
            for timing in 1..4 {
                let other = run(&Replica::new(algorithm, THREADS), &scripts, timing);
                assert_eq!(first, other, "{algorithm:?}, workload {workload}, timing {timing}");
            }
        }
    }
}

#[test]
fn each_worker_id_is_handed_out_once_and_only_if_it_exists() {
    let replica = Replica::new(Algorithm::Pds1, 2);
    let _first = replica.worker(ThreadId(1)).unwrap();
    assert_eq!(replica.worker(ThreadId(1)).err(), Some(ScheduleError::WorkerTaken { thread: 1 }));
    assert_eq!(replica.worker(ThreadId(2)).err(), Some(ScheduleError::UnknownThread { thread: 2, threads: 2 }));
}

#[test]
fn real_lsa_followers_repeat_the_leader_s_order() {
    let scripts = scripts(9, THREADS as usize, MUTEXES, 6);
    let leader = Replica::new(Algorithm::Lsa(Role::Leader), THREADS);
    let led = run(&leader, &scripts, 0);
    let order = leader.take_shipped();
    for timing in 1..4 {
        let follower = Replica::new(Algorithm::Lsa(Role::Follower), THREADS);
        for &(mutex, thread) in &order {
            follower.shipped(mutex, thread).unwrap();
        }
        assert_eq!(run(&follower, &scripts, timing), led, "timing {timing}");
    }
}
