//! LSA streams on real threads whose leader dies part way: a follower takes over and leads,
//! another follows it, and both answer every request alike, and as the dead leader did for
//! those it answered.

use nonstop_active::execute::Handler;
use nonstop_active::schedule::{MutexId, ScheduleError};
use nonstop_active::stream::{Leading, Reply, Stream};
use nonstop_active::sync::{Mutex, Worker};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

mod common;

/// Logs behind three mutexes: a request appends its own number to the log its first byte
/// names, and answers what that log held then, so every reply depends on the order of entry.
struct Logs(Vec<Mutex<Vec<u8>>>);

impl Handler for Logs {
    fn handle(&self, worker: &Worker, request: &[u8]) -> Result<Vec<u8>, ScheduleError> {
        let mut log = worker.lock(&self.0[usize::from(request[0]) % self.0.len()])?;
        log.push(request[1]);
        let seen = log.clone();
        drop(log);
        // Another thread may take the mutex meanwhile, as between two sections.
        std::thread::sleep(Duration::from_micros(u64::from(request[1] % 5) * 20));
        Ok(seen)
    }
}

fn logs() -> Arc<Logs> {
    Arc::new(Logs((0..3).map(|m| Mutex::new(MutexId(m), Vec::new())).collect()))
}

/// Every reply of `replies`, by request number, once `count` have come.
fn collect(replies: Receiver<Reply>, count: usize) -> BTreeMap<u64, Vec<u8>> {
    (0..count)
        .map(|_| {
            let (number, reply) = replies.recv().expect("a reply");
            (number, reply.expect("answered"))
        })
        .collect()
}

#[test]
fn a_follower_takes_over_a_dead_leaders_stream_and_another_follows_it() {
    for round in 0..20u8 {
        let outcome = common::unless_deadlocked("the streams", move || {
            let requests: Vec<Vec<u8>> = (0..60u8).map(|n| vec![n.wrapping_mul(7) ^ round, n]).collect();
            let (cut, threads) = (10 + usize::from(round), 4);
            let (to_one, from_leader_one) = channel();
            let (to_two, from_leader_two) = channel();
            let (leader_replies_to, leader_replies) = channel();
            let mut leader = Stream::leader(threads, logs(), vec![to_one, to_two], leader_replies_to);
            let (lead_one, leaders_one) = channel();
            let (lead_two, leaders_two) = channel();
            lead_one.send(Leading::Follow(from_leader_one)).unwrap();
            lead_two.send(Leading::Follow(from_leader_two)).unwrap();
            let (one_replies_to, one_replies) = channel();
            let (two_replies_to, two_replies) = channel();
            let mut one = Stream::following(threads, logs(), leaders_one, one_replies_to);
            let mut two = Stream::following(threads, logs(), leaders_two, two_replies_to);
            // The leader answers the first requests, then dies with the rest given to it.
            leader.submit(requests[..cut].to_vec());
            let answered = collect(leader_replies, cut);
            leader.submit(requests[cut..].to_vec());
            leader.halt();
            // The control plane names replica one the leader; replica two follows it.
            let (to_two_again, from_one) = channel();
            lead_one.send(Leading::Lead(vec![to_two_again])).unwrap();
            lead_two.send(Leading::Follow(from_one)).unwrap();
            for stream in [&mut one, &mut two] {
                stream.submit(requests.clone());
            }
            let (by_one, by_two) = (collect(one_replies, requests.len()), collect(two_replies, requests.len()));
            drop((one, two));
            (answered, by_one, by_two)
        });
        let (answered, by_one, by_two) = outcome;
        assert_eq!(by_one, by_two, "round {round}: the new leader and its follower answer alike");
        for (number, reply) in &answered {
            assert_eq!(by_one.get(number), Some(reply), "round {round}: request {number} as the dead leader answered");
        }
    }
}
