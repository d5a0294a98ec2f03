//! Replicas executing the same ordered batches on real threads, each with its own thread
//! timings: every scheduler must give the same replies and leave the same state on all of them.

use nonstop_active::execute::{ExecuteError, Executor, Handler};
use nonstop_active::schedule::{Algorithm, MutexId, Role, ScheduleError};
use nonstop_active::sync::{Mutex, Worker};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::channel;
use std::time::Duration;

mod common;

const THREADS: u16 = 4;
const MUTEXES: u64 = 3;

/// Each request names mutexes to enter in turn; each entry folds the request into the
/// mutex's value, and the reply is what the request saw: the order of entries shows in both.
/// The pauses between steps come from a per-replica seed, so replicas differ in timing only.
struct Folder {
    values: Vec<Mutex<u64>>,
    timing: AtomicU64,
}

impl Folder {
    fn new(timing_seed: u64) -> Arc<Folder> {
        let values = (0..MUTEXES).map(|m| Mutex::new(MutexId(m as u32), 17)).collect();
        Arc::new(Folder { values, timing: AtomicU64::new(timing_seed) })
    }

    fn pause(&self) {
        let draw = self.timing.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        std::thread::sleep(Duration::from_micros((draw >> 58) * 8));
    }

    fn state(&self, worker: &Worker) -> Vec<u64> {
        self.values.iter().map(|value| *worker.lock(value).unwrap()).collect()
    }
}

impl Handler for Folder {
    fn handle(&self, worker: &Worker, request: &[u8]) -> Result<Vec<u8>, ScheduleError> {
        if request == b"panic" {
            panic!("asked to");
        }
        let mut seen = Vec::new();
        for &mutex in request {
            self.pause();
            let mut value = worker.lock(&self.values[usize::from(mutex) % MUTEXES as usize])?;
            *value = value.wrapping_mul(31).wrapping_add(u64::from(mutex) + request.len() as u64);
            seen.extend_from_slice(&value.to_le_bytes());
        }
        Ok(seen)
    }
}

/// Batches of requests, each a few mutexes drawn from `seed`.
fn batches(seed: u64, count: usize) -> Vec<Arc<Vec<Vec<u8>>>> {
    let mut draw = seed;
    let mut next = move || {
        draw = draw.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        draw >> 33
    };
    (0..count)
        .map(|_| {
            let requests = 1 + next() as usize % 12;
            Arc::new((0..requests).map(|_| (0..1 + next() % 4).map(|_| (next() % MUTEXES) as u8).collect()).collect())
        })
        .collect()
}

/// One replica's replies to every batch, and its final state.
type Outcome = (Vec<Vec<Vec<u8>>>, Vec<u64>);

/// Runs `batches` on three replicas of `algorithm` at once and answers each replica's replies
/// and final state.
fn run_three(algorithm: Algorithm, batches: &[Arc<Vec<Vec<u8>>>], timing: u64) -> Vec<Outcome> {
    let batches = batches.to_vec();
    common::unless_deadlocked("three replicas", move || run_three_unguarded(algorithm, &batches, timing))
}

fn run_three_unguarded(algorithm: Algorithm, batches: &[Arc<Vec<Vec<u8>>>], timing: u64) -> Vec<Outcome> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3u64)
            .map(|replica| {
                scope.spawn(move || {
                    let folder = Folder::new(timing * 10 + replica);
                    let executor = Executor::new(algorithm, THREADS, folder.clone()).unwrap();
                    let replies: Vec<_> =
                        batches.iter().map(|batch| executor.execute(batch.clone()).unwrap()).collect();
                    drop(executor);
                    (replies, folder.state(&Worker::unscheduled(nonstop_active::schedule::ThreadId(0))))
                })
            })
            .collect();
        handles.into_iter().map(|handle| handle.join().unwrap()).collect()
    })
}

#[test]
fn replicas_with_different_timings_reply_alike_and_end_alike() {
    // LSA replicas take the order streamed: streamed_lsa_followers_reply_as_their_leader...
    for algorithm in [Algorithm::Npds, Algorithm::Pds1, Algorithm::Pds2] {
        for seed in 0..4 {
            let batches = batches(seed, 6);
            let first = run_three(algorithm, &batches, seed);
            assert!(first.iter().all(|result| result == &first[0]), "{algorithm:?} seed {seed}");
            for timing in [seed + 100, seed + 200] {
                let again = run_three(algorithm, &batches, timing);
                for (replica, result) in again.iter().enumerate() {
                    assert_eq!(result, &first[0], "{algorithm:?} seed {seed} timing {timing}: replica {replica}");
                }
            }
        }
    }
}

#[test]
fn a_batch_of_fewer_requests_than_threads_and_an_empty_one_finish() {
    for algorithm in [Algorithm::Npds, Algorithm::Pds1, Algorithm::Pds2] {
        let executor = Executor::new(algorithm, THREADS, Folder::new(1)).unwrap();
        assert_eq!(executor.execute(Arc::new(Vec::new())).unwrap(), Vec::<Vec<u8>>::new());
        let replies = executor.execute(Arc::new(vec![vec![0]])).unwrap();
        assert_eq!(replies.len(), 1);
    }
}

/// Runs `batches` on an LSA leader and two followers given its acquisitions, batch by batch,
/// each with its own timing; answers each replica's replies and final state.
fn lead_and_follow(batches: &[Arc<Vec<Vec<u8>>>], timing: u64) -> Vec<Outcome> {
    let batches = batches.to_vec();
    common::unless_deadlocked("an LSA leader and followers", move || {
        let folders: Vec<Arc<Folder>> = (0..3).map(|replica| Folder::new(timing * 10 + replica)).collect();
        let executors: Vec<Executor> = folders.iter().map(|folder| Executor::loose(THREADS, folder.clone())).collect();
        let mut replies = vec![Vec::new(); 3];
        for batch in &batches {
            let (led, acquisitions) = executors[0].execute_leading(batch.clone()).unwrap();
            replies[0].push(led);
            for (follower, executor) in executors.iter().enumerate().skip(1) {
                replies[follower].push(executor.execute_following(batch.clone(), &acquisitions).unwrap());
            }
        }
        drop(executors);
        let unscheduled = Worker::unscheduled(nonstop_active::schedule::ThreadId(0));
        replies.into_iter().zip(&folders).map(|(replies, folder)| (replies, folder.state(&unscheduled))).collect()
    })
}

/// Runs `run` on batches drawn from four seeds, each at three timings of the replicas'
/// threads: every replica must reply and end alike.
fn alike_whatever_the_timing<T: PartialEq>(batches_per_seed: usize, run: impl Fn(&[Arc<Vec<Vec<u8>>>], u64) -> Vec<T>) {
    for seed in 0..4 {
        let batches = batches(seed, batches_per_seed);
        for timing in [seed, seed + 100, seed + 200] {
            let results = run(&batches, timing);
            assert!(results.iter().all(|result| result == &results[0]), "seed {seed} timing {timing}");
        }
    }
}

#[test]
fn lsa_followers_of_batches_reply_as_their_leader_whatever_the_timing() {
    alike_whatever_the_timing(6, lead_and_follow);
}

#[test]
fn an_lsa_follower_given_acquisitions_its_threads_do_not_make_says_so_instead_of_waiting() {
    use nonstop_active::schedule::ThreadId;
    let follow = |batch: Vec<Vec<u8>>, acquisitions: Vec<(MutexId, ThreadId)>| {
        common::unless_deadlocked("an LSA follower", move || {
            let executor = Executor::loose(2, Folder::new(6));
            let outcome = executor.execute_following(Arc::new(batch), &acquisitions);
            // The executor still runs batches after one it could not follow.
            assert_eq!(
                executor.execute_following(Arc::new(vec![vec![2]]), &[(MutexId(2), ThreadId(0))]).unwrap().len(),
                1
            );
            outcome.map_err(|error| error.to_string())
        })
    };
    let (m, t) = (MutexId, ThreadId);
    // Thread 0 takes mutex 0 then 1, thread 1 mutex 1 then 0.
    let batch = vec![vec![0, 1], vec![1, 0]];
    let made = vec![(m(0), t(0)), (m(1), t(1)), (m(1), t(0)), (m(0), t(1))];
    assert!(follow(batch.clone(), made.clone()).is_ok());
    // One acquisition missing: a thread waits for a grant never shipped.
    let missing = follow(batch.clone(), made[..3].to_vec()).unwrap_err();
    assert!(missing.contains("waited for an acquisition"), "{missing}");
    // One too many: the leader's threads took a mutex these did not.
    let extra = follow(batch.clone(), [made.clone(), vec![(m(2), t(1))]].concat()).unwrap_err();
    assert!(extra.contains("1 of the leader's acquisitions were not made here"), "{extra}");
    // Each thread waits behind the other: neither can go on.
    let crossed = follow(batch.clone(), vec![(m(0), t(1)), (m(1), t(0)), (m(0), t(0)), (m(1), t(1))]).unwrap_err();
    assert!(crossed.contains("waited for an acquisition"), "{crossed}");
    // A thread the follower does not have.
    let stranger = follow(batch, vec![(m(0), t(7))]).unwrap_err();
    assert!(stranger.contains("thread 7 of 2"), "{stranger}");
}

#[test]
fn a_batch_is_refused_an_executor_of_the_other_pacing() {
    for role in [Role::Leader, Role::Follower] {
        assert!(matches!(
            Executor::new(Algorithm::Lsa(role), THREADS, Folder::new(4)),
            Err(ExecuteError::WrongPacing(_))
        ));
    }
    let lsa = Executor::loose(THREADS, Folder::new(4));
    assert!(matches!(lsa.execute(Arc::new(vec![vec![0]])), Err(ExecuteError::WrongPacing(_))));
    let pds = Executor::new(Algorithm::Pds2, THREADS, Folder::new(4)).unwrap();
    assert!(matches!(pds.execute_leading(Arc::new(vec![vec![0]])), Err(ExecuteError::WrongPacing(_))));
    assert!(matches!(pds.execute_following(Arc::new(vec![vec![0]]), &[]), Err(ExecuteError::WrongPacing(_))));
}

#[test]
fn a_handler_that_panics_fails_its_batch_and_the_next_batch_runs() {
    for algorithm in [Algorithm::Npds, Algorithm::Pds1, Algorithm::Pds2] {
        let executor = Executor::new(algorithm, THREADS, Folder::new(2)).unwrap();
        let batch = Arc::new(vec![vec![0, 1], b"panic".to_vec(), vec![2], vec![1, 0]]);
        match executor.execute(batch) {
            Err(ExecuteError::Panicked { position: 1, message }) => assert_eq!(message, "asked to"),
            other => panic!("{algorithm:?}: {other:?}"),
        }
        assert_eq!(executor.execute(Arc::new(vec![vec![0], vec![1]])).unwrap().len(), 2);
    }
}

/// One streamed replica's replies by request number, and its final state.
type Streamed = (Vec<Vec<u8>>, Vec<u64>);

/// Runs `batches` through an LSA leader and two followers streaming (no batch ends), with
/// pauses between submissions, and answers each replica's replies by number and final state.
fn stream_three(batches: &[Arc<Vec<Vec<u8>>>], timing: u64) -> Vec<Streamed> {
    let batches = batches.to_vec();
    common::unless_deadlocked("three streamed replicas", move || stream_three_unguarded(&batches, timing))
}

fn stream_three_unguarded(batches: &[Arc<Vec<Vec<u8>>>], timing: u64) -> Vec<Streamed> {
    use nonstop_active::stream::Stream;
    let folders: Vec<Arc<Folder>> = (0..3).map(|replica| Folder::new(timing * 10 + replica)).collect();
    let (to_followers, from_leader): (Vec<_>, Vec<_>) = (0..2).map(|_| channel()).unzip();
    let (replies_to, replies): (Vec<_>, Vec<_>) = (0..3).map(|_| channel()).unzip();
    let mut replies_to = replies_to.into_iter();
    let mut streams = vec![Stream::leader(THREADS, folders[0].clone(), to_followers, replies_to.next().unwrap())];
    for (folder, leader) in folders[1..].iter().zip(from_leader) {
        streams.push(Stream::follower(THREADS, folder.clone(), leader, replies_to.next().unwrap()));
    }
    let total: usize = batches.iter().map(|batch| batch.len()).sum();
    for (index, batch) in batches.iter().enumerate() {
        for stream in &mut streams {
            stream.submit(batch.iter().cloned());
        }
        std::thread::sleep(Duration::from_micros((timing * 37 + index as u64 * 101) % 300));
    }
    drop(streams);
    replies
        .into_iter()
        .zip(&folders)
        .map(|(replies, folder)| {
            let mut numbered: Vec<(u64, Vec<u8>)> = replies.iter().map(|(n, reply)| (n, reply.unwrap())).collect();
            assert_eq!(numbered.len(), total);
            numbered.sort();
            let state = folder.state(&Worker::unscheduled(nonstop_active::schedule::ThreadId(0)));
            (numbered.into_iter().map(|(_, reply)| reply).collect(), state)
        })
        .collect()
}

#[test]
fn streamed_lsa_followers_reply_as_their_leader_whatever_the_timing() {
    alike_whatever_the_timing(8, stream_three);
}

#[test]
fn a_streamed_follower_whose_leader_ends_early_stops_instead_of_waiting() {
    use nonstop_active::stream::Stream;
    let (to_follower, from_leader) = channel();
    let (replies_to, replies) = channel();
    let mut follower = Stream::follower(THREADS, Folder::new(5), from_leader, replies_to);
    follower.submit([vec![0], vec![1], vec![2]]);
    // The leader ships one grant and is gone.
    to_follower.send((MutexId(0), nonstop_active::schedule::ThreadId(0))).unwrap();
    drop(to_follower);
    drop(follower);
    let answered: Vec<_> = replies.iter().collect();
    assert_eq!(answered.len(), 3);
    assert!(answered.iter().any(|(_, reply)| reply.is_ok()), "{answered:?}");
    assert!(answered.iter().any(|(_, reply)| reply.is_err()), "{answered:?}");
}
