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
