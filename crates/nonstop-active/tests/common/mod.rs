//! What the scheduler tests share: the threads' scripts.

#![allow(dead_code)] // each test file uses part of it

use nonstop_active::schedule::MutexId;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// One step of a thread's script.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    Compute(u32),
    Lock(MutexId),
    Unlock(MutexId),
}

/// A thread's script: critical sections on one or two mutexes (taken in increasing order, so
/// the mutex graph has no cycle, as the papers assume), with computing before and inside.
pub fn script(rng: &mut SmallRng, mutexes: u32, sections: usize) -> Vec<Op> {
    let mut ops = Vec::new();
    for _ in 0..sections {
        ops.push(Op::Compute(rng.random_range(0..5)));
        let first = MutexId(rng.random_range(0..mutexes));
        ops.push(Op::Lock(first));
        ops.push(Op::Compute(rng.random_range(0..3)));
        let nested =
            (first.0 + 1 < mutexes && rng.random_bool(0.3)).then(|| MutexId(rng.random_range(first.0 + 1..mutexes)));
        if let Some(second) = nested {
            ops.push(Op::Lock(second));
            ops.push(Op::Compute(rng.random_range(0..3)));
            ops.push(Op::Unlock(second));
        }
        ops.push(Op::Unlock(first));
    }
    ops
}

/// `threads` scripts drawn from `seed`.
pub fn scripts(seed: u64, threads: usize, mutexes: u32, sections: usize) -> Vec<Vec<Op>> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..threads).map(|_| script(&mut rng, mutexes, sections)).collect()
}

/// How long a test of real threads may take before it counts as deadlocked. Not a measure of
/// speed: these tests finish in about a second; a scheduler that deadlocks its threads would
/// otherwise hang the test suite instead of failing it.
const DEADLOCK_AFTER: std::time::Duration = std::time::Duration::from_secs(120);

/// Runs `body` on a thread of its own and answers what it returns; fails, naming `what`, if it
/// has not returned after [`DEADLOCK_AFTER`] (its threads are left behind: the test has failed).
pub fn unless_deadlocked<T: Send + 'static>(what: &str, body: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(body());
    });
    match result.recv_timeout(DEADLOCK_AFTER) {
        Ok(value) => value,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what} did not finish in {DEADLOCK_AFTER:?}: its threads are deadlocked")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("{what} panicked (see above)"),
    }
}
