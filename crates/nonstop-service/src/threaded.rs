//! A multithreaded service, for active replication: worker threads that share state under
//! nonstop's mutexes, every replica's threads taking them in the order a deterministic
//! scheduler decides.
//!
//! A [`Service`](crate::Service) keeps its state in the node's region and runs one request at
//! a time; a passive backup copies the region. A [`ThreadedService`] keeps its state in
//! [`Mutex`] values and runs requests on several threads at once; nothing copies it, so it runs
//! only actively replicated (`replication = "active"`): every replica executes the same
//! ordered requests, its threads taking the mutexes through [`Worker::lock`] in the order the
//! service's scheduler decides (`scheduler = "npds"`, `"pds1"` or `"pds2"`), which depends on
//! the requests alone, never on the threads' timing. So every replica reaches the same state
//! and gives the same replies, which the clients vote on.
//!
//! Exactly-once is the platform's, as for every service: the order delivers each client's
//! request once, and a retry is answered with what the replica answered then. A replica that
//! fell behind or was found wrong takes a live replica's state: [`ThreadedService::snapshot`]
//! on the donor, [`ThreadedService::restore`] on the receiver, both between two batches, when
//! no worker thread runs.
//!
//! ```
//! use nonstop_service::threaded::{HandleError, Mutex, MutexId, ThreadedService, Worker};
//!
//! /// Named counters, each behind a mutex of its own.
//! struct Counters(Vec<Mutex<u64>>);
//!
//! impl ThreadedService for Counters {
//!     type Request = (u32, u64); // counter, increment
//!     type Reply = u64;
//!     type Query = u32;
//!     type Answer = u64;
//!     type State = Vec<u64>;
//!
//!     fn handle(&self, worker: &Worker, &(counter, by): &(u32, u64)) -> Result<u64, HandleError> {
//!         let counter = self.0.get(counter as usize).ok_or_else(|| HandleError::refused("no such counter"))?;
//!         let mut value = worker.lock(counter)?;
//!         *value += by;
//!         Ok(*value)
//!     }
//!     fn query(&self, reader: &Worker, &counter: &u32) -> Result<u64, HandleError> {
//!         let counter = self.0.get(counter as usize).ok_or_else(|| HandleError::refused("no such counter"))?;
//!         Ok(*reader.lock(counter)?)
//!     }
//!     fn snapshot(&self, reader: &Worker) -> Result<Vec<u64>, HandleError> {
//!         self.0.iter().map(|counter| Ok(*reader.lock(counter)?)).collect()
//!     }
//!     fn restore(&self, reader: &Worker, state: Vec<u64>) -> Result<(), String> {
//!         if state.len() != self.0.len() {
//!             return Err(format!("{} counters, not {}", state.len(), self.0.len()));
//!         }
//!         for (counter, value) in self.0.iter().zip(state) {
//!             *reader.lock(counter).map_err(|e| e.to_string())? = value;
//!         }
//!         Ok(())
//!     }
//!     fn check(&self, _reader: &Worker) -> Result<String, String> {
//!         Ok(format!("{} counters", self.0.len()))
//!     }
//! }
//!
//! let counters = Counters((0..4).map(|id| Mutex::new(MutexId(id), 0)).collect());
//! let hosted = nonstop_service::HostedThreads::new("counters", counters);
//! let executor = hosted.executor(nonstop_service::threaded::Scheduler::Pds2, 2).unwrap();
//! let request = |counter: u32, by: u64| postcard::to_stdvec(&(counter, by)).unwrap();
//! let batch = vec![request(1, 5), request(1, 2), request(9, 1)];
//! // The executor's own scheduler decides every acquisition (under LSA a batch is led, or
//! // follows its leader's acquisitions).
//! let scheduled = nonstop_service::threaded::Acquisitions::Scheduled;
//! let outcomes = hosted.execute(&executor, batch, &scheduled).unwrap().outcomes;
//! let value = |outcome: &Result<Vec<u8>, String>| postcard::from_bytes::<u64>(outcome.as_ref().unwrap()).unwrap();
//! // Thread 0 asked for counter 1 in the first round with thread 1: the tie went to thread 0.
//! assert_eq!((value(&outcomes[0]), value(&outcomes[1])), (5, 7));
//! assert_eq!(outcomes[2], Err("no such counter".to_string()));
//! ```

use crate::hosted::CallError;
pub use nonstop_active::course::Acquisitions;
use nonstop_active::execute::{ExecuteError, Executor, Handler};
use nonstop_active::schedule::{Algorithm, Grant};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::sync::Arc;
use thiserror::Error;

pub use nonstop_active::schedule::{MutexId, ScheduleError, ThreadId};
pub use nonstop_active::sync::{Guard, Mutex, Worker};

/// A service whose worker threads share state under [`Mutex`]es, run actively replicated.
///
/// Deterministic by contract: a request's reply and every change it makes follow from the
/// request and what its thread reads under the mutexes it takes through the [`Worker`] (no
/// clocks, no randomness, no state outside those mutexes, no mutex taken any other way). Two
/// replicas whose threads run at different speeds then take every mutex in the same order and
/// reach the same state. A request that needs the time carries it.
///
/// The methods other than [`ThreadedService::handle`] are given a reader: a worker outside the
/// scheduler, for a query answered between executions, or for the snapshot, restore and check
/// of a state no worker thread runs on.
pub trait ThreadedService: Send + Sync + 'static {
    /// What a client asks (encoded by nonstop with postcard).
    type Request: Serialize + DeserializeOwned;
    /// What [`ThreadedService::handle`] answers.
    type Reply: Serialize + DeserializeOwned;
    /// A read-only question.
    type Query: Serialize + DeserializeOwned;
    /// What [`ThreadedService::query`] answers.
    type Answer: Serialize + DeserializeOwned;
    /// Its whole state, as one replica sends it to another.
    type State: Serialize + DeserializeOwned;

    /// Handles `request` on `worker`'s thread and answers it. Take shared state only through
    /// `worker.lock(..)`, and pass its error on (`?`): it fails only when the replica stops.
    fn handle(&self, worker: &Worker, request: &Self::Request) -> Result<Self::Reply, HandleError>;

    /// Answers a read-only question from the state as it stands. The replicas' answers are
    /// voted on like replies; replicas at different points of the order may disagree around a
    /// write, and the client asks again until enough agree.
    fn query(&self, reader: &Worker, query: &Self::Query) -> Result<Self::Answer, HandleError>;

    /// Its whole state (no worker thread runs).
    fn snapshot(&self, reader: &Worker) -> Result<Self::State, HandleError>;

    /// Replaces its whole state by `state`, another replica's snapshot (no worker thread runs).
    /// Refuse a state that does not fit (another shape of the service: a config that differs
    /// between nodes).
    fn restore(&self, reader: &Worker, state: Self::State) -> Result<(), String>;

    /// Its consistency check: `Ok(summary)` or `Err(violation)`.
    fn check(&self, reader: &Worker) -> Result<String, String>;

    /// A request for load tests: what client `client` might ask next, from a random `draw`
    /// (`None`, the default: the service offers no load).
    fn sample(&self, client: u64, draw: u64) -> Option<Self::Request> {
        let _ = (client, draw);
        None
    }
}

/// Why a request or query of a [`ThreadedService`] was not answered with a reply.
#[derive(Debug, Error)]
pub enum HandleError {
    /// The request is wrong and retrying will not help. Every replica must refuse alike, so
    /// decide a refusal from the request and the state only; anything the request changed
    /// before stays changed (the platform undoes nothing here).
    #[error("{0}")]
    Refused(String),
    /// A mutex could not be taken: the replica is stopping.
    #[error(transparent)]
    Stopped(#[from] ScheduleError),
}

impl HandleError {
    /// A refusal with `reason`.
    pub fn refused(reason: impl fmt::Display) -> HandleError {
        HandleError::Refused(reason.to_string())
    }
}

/// How a replica's worker threads are scheduled on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheduler {
    /// Non-preemptive: one thread runs at a time (`npds`).
    Npds,
    /// Preemptive, rounds of at most one acquisition per thread (`pds1`).
    Pds1,
    /// Preemptive, rounds of at most two acquisitions per thread (`pds2`).
    Pds2,
    /// Loose synchronization (`lsa`): one replica's threads take mutexes as they come, and
    /// the others take them in that order, shipped through the order.
    Lsa,
}

impl Scheduler {
    /// Every scheduler, by name.
    pub const ALL: [Scheduler; 4] = [Scheduler::Npds, Scheduler::Pds1, Scheduler::Pds2, Scheduler::Lsa];

    /// Its name in a config.
    pub fn name(self) -> &'static str {
        match self {
            Scheduler::Npds => "npds",
            Scheduler::Pds1 => "pds1",
            Scheduler::Pds2 => "pds2",
            Scheduler::Lsa => "lsa",
        }
    }

    /// The scheduler named `name`.
    pub fn from_name(name: &str) -> Option<Scheduler> {
        Scheduler::ALL.into_iter().find(|scheduler| scheduler.name() == name)
    }

    /// The scheduler named `name`, or why there is none: what a config or a command line is
    /// answered with.
    pub fn parse(name: &str) -> Result<Scheduler, String> {
        Scheduler::from_name(name)
            .ok_or_else(|| format!("{name:?} is no scheduler: use \"npds\", \"pds1\", \"pds2\" or \"lsa\""))
    }

    /// Whether each batch is led by one replica or follows its acquisitions (LSA), rather
    /// than scheduled alike by every replica.
    pub fn is_loose(self) -> bool {
        self == Scheduler::Lsa
    }

    /// The algorithm that schedules every batch alike on each replica (`None` for LSA, whose
    /// batches are led or follow a leader's acquisitions).
    fn algorithm(self) -> Option<Algorithm> {
        match self {
            Scheduler::Npds => Some(Algorithm::Npds),
            Scheduler::Pds1 => Some(Algorithm::Pds1),
            Scheduler::Pds2 => Some(Algorithm::Pds2),
            Scheduler::Lsa => None,
        }
    }
}

/// What executing one request answered: the service's reply (encoded), or its refusal.
pub type Outcome = Result<Vec<u8>, String>;

/// What executing one batch gave ([`HostedThreads::execute`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ran {
    /// Each request's outcome, in order.
    pub outcomes: Vec<Outcome>,
    /// LSA, leading: the acquisitions the threads made, in order, for the others to follow.
    pub led: Option<Vec<Grant>>,
}

/// What the node calls: [`ThreadedService`] with its types erased.
trait RunThreads: Send + Sync {
    fn executor(&self, scheduler: Scheduler, threads: u16) -> Result<Executor, ExecuteError>;
    fn query(&self, body: &[u8]) -> Result<Vec<u8>, CallError>;
    fn snapshot(&self) -> Result<Vec<u8>, String>;
    fn restore(&self, state: &[u8]) -> Result<(), String>;
    fn check(&self) -> Result<String, String>;
    fn sample(&self, client: u64, draw: u64) -> Option<Vec<u8>>;
}

/// A multithreaded service ready to run on a node's replica: a cheap handle.
#[derive(Clone)]
pub struct HostedThreads {
    kind: String,
    run: Arc<dyn RunThreads>,
}

impl fmt::Debug for HostedThreads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostedThreads").field("kind", &self.kind).finish()
    }
}

impl HostedThreads {
    /// `service`, hosted as kind `kind`.
    pub fn new<S: ThreadedService>(kind: &str, service: S) -> HostedThreads {
        HostedThreads { kind: kind.to_string(), run: Arc::new(ThreadsHost(Arc::new(service))) }
    }

    /// Its kind, as the registry knows it.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// `threads` worker threads (at least one) that execute its requests in batches, scheduled
    /// by `scheduler`.
    pub fn executor(&self, scheduler: Scheduler, threads: u16) -> Result<Executor, ExecuteError> {
        self.run.executor(scheduler, threads)
    }

    /// Executes `requests` (encoded) as one batch on `executor`'s threads, to its end, the
    /// threads taking mutexes as `acquisitions` says: each one's outcome, in order, and, when
    /// it led the batch (LSA), the acquisitions its threads made. A request that does not
    /// decode is refused alike on every replica. An error means the replica's threads failed
    /// (a handler panicked, or they could not follow the acquisitions given): its state is no
    /// longer a replica's.
    pub fn execute(
        &self,
        executor: &Executor,
        requests: Vec<Vec<u8>>,
        acquisitions: &Acquisitions,
    ) -> Result<Ran, ExecuteError> {
        let requests = Arc::new(requests);
        let (replies, led) = match acquisitions {
            Acquisitions::Scheduled => (executor.execute(requests)?, None),
            Acquisitions::Lead => {
                let (replies, made) = executor.execute_leading(requests)?;
                (replies, Some(made))
            }
            Acquisitions::Follow(acquisitions) => (executor.execute_following(requests, acquisitions)?, None),
        };
        Ok(Ran { outcomes: replies.iter().map(|reply| decode_outcome(reply)).collect(), led })
    }

    /// Answers a read-only question (encoded) from the state as it stands.
    pub fn query(&self, body: &[u8]) -> Result<Vec<u8>, CallError> {
        self.run.query(body)
    }

    /// Its whole state, encoded, for another replica (call it when no worker thread runs).
    pub fn snapshot(&self) -> Result<Vec<u8>, String> {
        self.run.snapshot()
    }

    /// Replaces its state by another replica's [`HostedThreads::snapshot`] (when no worker
    /// thread runs).
    pub fn restore(&self, state: &[u8]) -> Result<(), String> {
        self.run.restore(state)
    }

    /// The service's consistency check.
    pub fn check(&self) -> Result<String, String> {
        self.run.check()
    }

    /// A request for load tests, encoded ([`ThreadedService::sample`]).
    pub fn sample(&self, client: u64, draw: u64) -> Option<Vec<u8>> {
        self.run.sample(client, draw)
    }
}

/// The erased host of service `S`; also the [`Handler`] its worker threads run.
struct ThreadsHost<S>(Arc<S>);

/// `S`'s handler for an executor's threads: bytes in, an encoded [`Outcome`] out.
struct Handle<S>(Arc<S>);

impl<S: ThreadedService> Handler for Handle<S> {
    fn handle(&self, worker: &Worker, request: &[u8]) -> Result<Vec<u8>, ScheduleError> {
        let outcome = match postcard::from_bytes::<S::Request>(request) {
            Err(error) => Err(format!("bad request: {error}")),
            Ok(request) => match self.0.handle(worker, &request) {
                Ok(reply) => Ok(postcard::to_stdvec(&reply).expect("replies encode")),
                Err(HandleError::Refused(reason)) => Err(reason),
                Err(HandleError::Stopped(stopped)) => return Err(stopped),
            },
        };
        Ok(encode_outcome(&outcome))
    }
}

fn encode_outcome(outcome: &Outcome) -> Vec<u8> {
    postcard::to_stdvec(outcome).expect("outcomes encode")
}

fn decode_outcome(bytes: &[u8]) -> Outcome {
    // Written by `encode_outcome` in this process.
    postcard::from_bytes(bytes).unwrap_or_else(|error| Err(format!("an outcome did not decode: {error}")))
}

/// A reader outside the scheduler: the thread id is not a worker's, and counts for nothing.
fn reader() -> Worker {
    Worker::unscheduled(ThreadId(u16::MAX))
}

impl<S: ThreadedService> RunThreads for ThreadsHost<S> {
    fn executor(&self, scheduler: Scheduler, threads: u16) -> Result<Executor, ExecuteError> {
        let handler = Arc::new(Handle(self.0.clone()));
        match scheduler.algorithm() {
            Some(algorithm) => Executor::new(algorithm, threads, handler),
            None => Ok(Executor::loose(threads, handler)),
        }
    }

    fn query(&self, body: &[u8]) -> Result<Vec<u8>, CallError> {
        let query = postcard::from_bytes::<S::Query>(body).map_err(|e| CallError::BadRequest(e.to_string()))?;
        match self.0.query(&reader(), &query) {
            Ok(answer) => Ok(postcard::to_stdvec(&answer).expect("answers encode")),
            Err(HandleError::Refused(reason)) => Err(CallError::Refused(reason)),
            Err(HandleError::Stopped(stopped)) => Err(CallError::Failed(stopped.to_string())),
        }
    }

    fn snapshot(&self) -> Result<Vec<u8>, String> {
        let state = self.0.snapshot(&reader()).map_err(|error| error.to_string())?;
        postcard::to_stdvec(&state).map_err(|error| format!("the state does not encode: {error}"))
    }

    fn restore(&self, state: &[u8]) -> Result<(), String> {
        let state = postcard::from_bytes::<S::State>(state).map_err(|e| format!("the state does not decode: {e}"))?;
        self.0.restore(&reader(), state)
    }

    fn check(&self) -> Result<String, String> {
        self.0.check(&reader())
    }

    fn sample(&self, client: u64, draw: u64) -> Option<Vec<u8>> {
        self.0.sample(client, draw).map(|request| postcard::to_stdvec(&request).expect("requests encode"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log of request values behind one mutex; replies its length after the append.
    struct Log(Mutex<Vec<u32>>);

    impl ThreadedService for Log {
        type Request = u32;
        type Reply = usize;
        type Query = ();
        type Answer = Vec<u32>;
        type State = Vec<u32>;

        fn handle(&self, worker: &Worker, value: &u32) -> Result<usize, HandleError> {
            if *value == 0 {
                return Err(HandleError::refused("zero is not logged"));
            }
            let mut log = worker.lock(&self.0)?;
            log.push(*value);
            Ok(log.len())
        }
        fn query(&self, reader: &Worker, _: &()) -> Result<Vec<u32>, HandleError> {
            Ok(reader.lock(&self.0)?.clone())
        }
        fn snapshot(&self, reader: &Worker) -> Result<Vec<u32>, HandleError> {
            Ok(reader.lock(&self.0)?.clone())
        }
        fn restore(&self, reader: &Worker, state: Vec<u32>) -> Result<(), String> {
            *reader.lock(&self.0).map_err(|e| e.to_string())? = state;
            Ok(())
        }
        fn check(&self, reader: &Worker) -> Result<String, String> {
            let log = reader.lock(&self.0).map_err(|e| e.to_string())?;
            match log.contains(&0) {
                true => Err("a zero was logged".into()),
                false => Ok(format!("{} values", log.len())),
            }
        }
    }

    fn log() -> HostedThreads {
        HostedThreads::new("log", Log(Mutex::new(MutexId(0), Vec::new())))
    }

    fn encode(value: u32) -> Vec<u8> {
        postcard::to_stdvec(&value).unwrap()
    }

    #[test]
    fn a_batch_runs_in_the_schedulers_order_refusals_and_bad_requests_answered() {
        let hosted = log();
        let executor = hosted.executor(Scheduler::Pds1, 3).unwrap();
        let outcomes = hosted
            .execute(&executor, vec![encode(5), encode(0), encode(7), vec![0xff; 6]], &Acquisitions::Scheduled)
            .unwrap()
            .outcomes;
        let len = |outcome: &Outcome| postcard::from_bytes::<usize>(outcome.as_ref().unwrap()).unwrap();
        assert_eq!((len(&outcomes[0]), len(&outcomes[2])), (1, 2));
        assert_eq!(outcomes[1], Err("zero is not logged".to_string()));
        assert!(outcomes[3].as_ref().unwrap_err().starts_with("bad request"), "{:?}", outcomes[3]);
        let answer = hosted.query(&postcard::to_stdvec(&()).unwrap()).unwrap();
        assert_eq!(postcard::from_bytes::<Vec<u32>>(&answer).unwrap(), vec![5, 7]);
        assert_eq!(hosted.check(), Ok("2 values".into()));
    }

    #[test]
    fn a_snapshot_restored_elsewhere_is_the_same_state_and_garbage_changes_nothing() {
        let (donor, receiver) = (log(), log());
        let executor = donor.executor(Scheduler::Npds, 2).unwrap();
        donor.execute(&executor, vec![encode(3), encode(4), encode(9)], &Acquisitions::Scheduled).unwrap();
        let state = donor.snapshot().unwrap();
        receiver.restore(&state).unwrap();
        assert_eq!(receiver.snapshot().unwrap(), state);
        assert!(receiver.restore(&[0xff, 0xff, 0xff]).unwrap_err().contains("does not decode"));
        assert_eq!(receiver.snapshot().unwrap(), state, "a refused state changes nothing");
    }

    #[test]
    fn schedulers_are_named_as_configs_name_them() {
        for scheduler in Scheduler::ALL {
            assert_eq!(Scheduler::from_name(scheduler.name()), Some(scheduler));
        }
        assert!(Scheduler::parse("pds3").unwrap_err().contains("\"lsa\""));
        assert_eq!(Scheduler::parse("pds1"), Ok(Scheduler::Pds1));
        assert_eq!(Scheduler::parse("lsa").map(Scheduler::is_loose), Ok(true));
    }
}
