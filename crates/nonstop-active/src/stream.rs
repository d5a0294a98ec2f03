//! LSA replicas without batch barriers: long-lived worker threads take requests as the order
//! delivers them.
//!
//! [`crate::execute::Executor`] runs each batch to its end before the next, because the
//! preemptive schedulers must know which requests a round can see. Loose synchronization does not
//! need that: a follower grants every mutex in the order its leader shipped, whatever its own
//! threads' timing or how its requests arrived, so the only thing the replicas must agree on is
//! which thread handles which request. Here that is fixed by the order itself: request `s` of the
//! whole stream (counted from 0) goes to thread `s mod threads`, and each thread handles its
//! requests in order. No thread waits for a batch's slowest request.
//!
//! ```
//! use nonstop_active::execute::Handler;
//! use nonstop_active::schedule::{MutexId, ScheduleError};
//! use nonstop_active::stream::Stream;
//! use nonstop_active::sync::{Mutex, Worker};
//! use std::sync::Arc;
//! use std::sync::mpsc::channel;
//!
//! struct Counter(Mutex<u64>);
//! impl Handler for Counter {
//!     fn handle(&self, worker: &Worker, _: &[u8]) -> Result<Vec<u8>, ScheduleError> {
//!         let mut count = worker.lock(&self.0)?;
//!         *count += 1;
//!         Ok(count.to_le_bytes().to_vec())
//!     }
//! }
//!
//! let (to_follower, from_leader) = channel();
//! let (leader_replies, from_leader_replies) = channel();
//! let (follower_replies, from_follower_replies) = channel();
//! let mut leader = Stream::leader(2, Arc::new(Counter(Mutex::new(MutexId(0), 0))), vec![to_follower], leader_replies);
//! let mut follower = Stream::follower(2, Arc::new(Counter(Mutex::new(MutexId(0), 0))), from_leader, follower_replies);
//! for stream in [&mut leader, &mut follower] {
//!     stream.submit(vec![vec![], vec![], vec![]]);
//! }
//! let answered = |(number, reply): (u64, Result<Vec<u8>, _>)| (number, reply.unwrap());
//! let mut leader_seen: Vec<_> = (0..3).map(|_| answered(from_leader_replies.recv().unwrap())).collect();
//! let mut follower_seen: Vec<_> = (0..3).map(|_| answered(from_follower_replies.recv().unwrap())).collect();
//! leader_seen.sort_by_key(|(number, _)| *number);
//! follower_seen.sort_by_key(|(number, _)| *number);
//! // Whichever thread got there first on the leader, the follower's counts match it.
//! assert_eq!(leader_seen, follower_seen);
//! ```

use crate::execute::{ExecuteError, Handler, handle_one};
use crate::schedule::{Algorithm, Role, ScheduleError, ThreadId};
use crate::sync::Replica;
use std::ops::Range;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

/// A request's number in the stream, and its reply (or why there is none).
pub type Reply = (u64, Result<Vec<u8>, ExecuteError>);

pub use crate::schedule::Grant;

/// Whose order an LSA follower takes next ([`Stream::following`]).
pub enum Leading {
    /// A leader's: its grants, until its stream ends (it died, or stopped).
    Follow(Receiver<Grant>),
    /// Its own: once every grant before was given, it takes over ([`Replica::take_over`]) and
    /// ships its acquisitions to these followers.
    Lead(Vec<Sender<Grant>>),
}

/// One LSA replica's worker threads, fed from the order as it comes.
pub struct Stream {
    replica: Arc<Replica>,
    queues: Vec<Sender<(u64, Vec<u8>)>>,
    next: u64,
    threads: Vec<JoinHandle<()>>,
}

impl Stream {
    /// The leader, with `threads` worker threads (at least one): they take mutexes first
    /// come, first served, and every acquisition goes to each of `followers`, in order, as it
    /// happens. Replies go to `replies`.
    pub fn leader<H: Handler>(
        threads: u16,
        handler: Arc<H>,
        followers: Vec<Sender<Grant>>,
        replies: Sender<Reply>,
    ) -> Stream {
        let threads = threads.max(1);
        let replica = Replica::shipping_to(Algorithm::Lsa(Role::Leader), threads, move |mutex, thread| {
            for follower in &followers {
                // A follower that is gone no longer needs the order.
                let _ = follower.send((mutex, thread));
            }
        });
        Stream::start(&replica, threads, handler, replies)
    }

    /// A follower, with as many worker threads as its leader (at least one): they take each
    /// mutex in the order `leader` shipped it. When the
    /// leader's stream ends, the grants it shipped are still given; a thread that waits for
    /// one it did not ship stops, and its request answers [`ExecuteError::Schedule`].
    pub fn follower<H: Handler>(
        threads: u16,
        handler: Arc<H>,
        leader: Receiver<Grant>,
        replies: Sender<Reply>,
    ) -> Stream {
        let (leading, leaders) = channel();
        let _ = leading.send(Leading::Follow(leader));
        Stream::following(threads, handler, leaders, replies)
    }

    /// A follower that outlives its leader: it takes the grants of the leaders `leaders` names,
    /// in turn, each until that leader's stream ends, or leads from the point `leaders` says so
    /// ([`Leading::Lead`]: every grant before given first, as on every other follower). When
    /// `leaders` ends with no leader named, a thread that waits for a grant nobody shipped
    /// stops, as under [`Stream::follower`].
    pub fn following<H: Handler>(
        threads: u16,
        handler: Arc<H>,
        leaders: Receiver<Leading>,
        replies: Sender<Reply>,
    ) -> Stream {
        let threads = threads.max(1);
        let replica = Replica::new(Algorithm::Lsa(Role::Follower), threads);
        {
            // Not joined: it ends with its leaders' streams, which may outlive this follower.
            let replica = replica.clone();
            std::thread::Builder::new()
                .name("active-lsa-feeder".into())
                .spawn(move || {
                    for leading in leaders {
                        match leading {
                            Leading::Follow(grants) => {
                                for (mutex, thread) in grants {
                                    if replica.shipped(mutex, thread).is_err() {
                                        return replica.order_ended();
                                    }
                                }
                            }
                            Leading::Lead(followers) => {
                                let ship = move |mutex, thread| {
                                    for follower in &followers {
                                        // A follower that is gone no longer needs the order.
                                        let _ = follower.send((mutex, thread));
                                    }
                                };
                                if replica.take_over(ship).is_err() {
                                    replica.order_ended();
                                }
                                return;
                            }
                        }
                    }
                    // No more grants will come: a thread still waiting for one must stop.
                    replica.order_ended();
                })
                .expect("spawning the follower's feeder");
        }
        Stream::start(&replica, threads, handler, replies)
    }

    fn start<H: Handler>(replica: &Arc<Replica>, threads: u16, handler: Arc<H>, replies: Sender<Reply>) -> Stream {
        let (mut queues, mut handles) = (Vec::new(), Vec::new());
        for index in 0..threads {
            let (queue, requests) = channel::<(u64, Vec<u8>)>();
            let worker = replica.worker(ThreadId(index)).expect("one worker per thread id");
            let (handler, replies, replica) = (handler.clone(), replies.clone(), replica.clone());
            handles.push(
                std::thread::Builder::new()
                    .name(format!("active-lsa-{index}"))
                    .spawn(move || {
                        for (number, request) in requests {
                            let reply = if replica.halted() {
                                Err(ExecuteError::Schedule(ScheduleError::Stopped))
                            } else {
                                handle_one(handler.as_ref(), &worker, &request, number)
                            };
                            if replies.send((number, reply)).is_err() {
                                break;
                            }
                        }
                        let _ = worker.exit();
                    })
                    .expect("spawning a worker thread"),
            );
            queues.push(queue);
        }
        Stream { replica: replica.clone(), queues, next: 0, threads: handles }
    }

    /// Stops the replica now (it crashed, or was taken out): every thread stops at its next
    /// wait for a mutex, and the requests not finished answer [`ExecuteError::Schedule`].
    pub fn halt(self) {
        self.replica.halt();
    }

    /// Appends `requests` to the stream, in order, and answers their numbers.
    pub fn submit(&mut self, requests: impl IntoIterator<Item = Vec<u8>>) -> Range<u64> {
        let first = self.next;
        for request in requests {
            let thread = (self.next % self.queues.len() as u64) as usize;
            // A thread that is gone (its handler's channel closed) answers nothing more.
            let _ = self.queues[thread].send((self.next, request));
            self.next += 1;
        }
        first..self.next
    }
}

impl Drop for Stream {
    /// Lets every thread finish the requests it was given, then joins them. A follower's
    /// threads finish as far as its leader's order goes: dropping one waits for its leader to
    /// ship the grants its requests need, or to end.
    fn drop(&mut self) {
        self.queues.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
