//! A replica's worker threads executing the ordered requests, batch by batch.
//!
//! Every replica receives the same batches in the same order (the total order) and must give
//! the same replies. Inside a batch, request `i` goes to worker thread `i mod threads`, and each
//! thread handles its requests in batch order; the threads take shared state only through
//! [`Worker::lock`], so the scheduler decides every acquisition. A batch ends when every thread
//! has handled its requests, and the next starts with a fresh round of the scheduler.
//!
//! Why a batch runs to its end before the next starts: the preemptive schedulers fire a round
//! when no thread runs, and a thread waiting for a request that has not arrived yet would count
//! as stopped on one replica and not on another, so when a request becomes visible would depend
//! on the network's timing. Batch boundaries are part of the order itself, so "the requests of
//! this batch, and then no more until every thread is done" is the same on every replica.
//! LSA needs no such barrier in one process ([`crate::stream::Stream`] takes the order as it
//! comes); across nodes an LSA executor runs batches too ([`Executor::execute_leading`],
//! [`Executor::execute_following`]), so that every replica's state stands at the same points
//! of the order between batches, where digests compare it and a state transfer copies it.
//!
//! ```
//! use nonstop_active::execute::{Executor, Handler};
//! use nonstop_active::schedule::{Algorithm, MutexId, ScheduleError};
//! use nonstop_active::sync::{Mutex, Worker};
//! use std::sync::Arc;
//!
//! /// Appends each request's first byte to a shared log and answers the log's length.
//! struct Log(Mutex<Vec<u8>>);
//! impl Handler for Log {
//!     fn handle(&self, worker: &Worker, request: &[u8]) -> Result<Vec<u8>, ScheduleError> {
//!         let mut log = worker.lock(&self.0)?;
//!         log.push(request[0]);
//!         Ok(vec![log.len() as u8])
//!     }
//! }
//!
//! let log = Arc::new(Log(Mutex::new(MutexId(0), Vec::new())));
//! let executor = Executor::new(Algorithm::Pds1, 2, log.clone()).unwrap();
//! let replies = executor.execute(Arc::new(vec![vec![7], vec![8], vec![9]])).unwrap();
//! // Thread 0 handles requests 0 and 2, thread 1 request 1; the first round's tie goes to thread 0.
//! assert_eq!(replies, vec![vec![1], vec![2], vec![3]]);
//! ```

use crate::schedule::{Algorithm, Grant, Role, ScheduleError, ThreadId};
use crate::sync::{Replica, Worker};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;
use thiserror::Error;

/// A service that runs actively replicated: what one worker thread does with one request.
///
/// Deterministic by contract: the reply and every change must follow from the request and what
/// the thread reads under the mutexes it takes through `worker` (no clocks, no randomness, no
/// state outside those mutexes).
pub trait Handler: Send + Sync + 'static {
    /// Handles `request` on `worker`'s thread and answers it. A lock fails only when the
    /// replica is stopping ([`ScheduleError::Stopped`]): return that error, and the request
    /// answers it instead of a reply.
    fn handle(&self, worker: &Worker, request: &[u8]) -> Result<Vec<u8>, ScheduleError>;
}

/// Why a batch could not be executed.
#[derive(Debug, Error)]
pub enum ExecuteError {
    /// A thread reported something impossible to its scheduler (a bug in the handler).
    #[error("the scheduler refused a worker's step: {0}")]
    Schedule(#[from] ScheduleError),
    /// The handler panicked on a request.
    #[error("the handler panicked on request {position} of the batch or stream: {message}")]
    Panicked {
        /// The request's position in its batch (or, streamed, in the whole order).
        position: u64,
        /// What the panic said.
        message: String,
    },
    /// A batch was asked of an executor with no scheduler of its own (LSA: its batches are led
    /// or follow a leader's acquisitions), a led or followed batch of one that has (NPDS,
    /// PDS), or [`Executor::new`] was given LSA ([`Executor::loose`] makes its executor).
    #[error(
        "an LSA executor runs batches led or following a leader's acquisitions, the others by their scheduler: {0}"
    )]
    WrongPacing(&'static str),
    /// An LSA follower's threads did not make the acquisitions its leader shipped: some waited
    /// for grants that went to threads that never asked, or acquisitions were left over. Its
    /// state or its leader's is not the order's.
    #[error(
        "the worker threads did not make the leader's acquisitions ({0}): this replica's state or its leader's differs"
    )]
    Unfollowed(String),
    /// The executor's threads are gone: it runs no batch any more; make a new one.
    #[error("the executor's worker threads are gone: make a new executor")]
    ThreadsGone,
}

/// One batch for one worker thread.
struct Job {
    worker: Worker,
    batch: Arc<Vec<Vec<u8>>>,
}

/// What a worker thread did with its part of a batch: the replies, by position.
type Done = Result<Vec<(usize, Vec<u8>)>, ExecuteError>;

/// How an executor's batches take their mutexes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pacing {
    /// By its own scheduler, alike on every replica (NPDS, PDS-1, PDS-2).
    Scheduled(Algorithm),
    /// LSA: each batch led, or following a leader's acquisitions.
    Loose,
}

/// One replica's worker threads, executing batches with one scheduling algorithm. Shared
/// between threads, it runs one batch at a time.
pub struct Executor {
    pacing: Pacing,
    jobs: Vec<Sender<Job>>,
    /// Held for a whole batch: a second caller's batch would take the first's answers.
    done: std::sync::Mutex<Receiver<Done>>,
    threads: Vec<JoinHandle<()>>,
    /// A thread was found gone: the batch in progress then was left half given out, and its
    /// other threads' answers would be taken for a later batch's, so no batch runs any more.
    broken: std::sync::atomic::AtomicBool,
}

impl Executor {
    /// `threads` worker threads (at least one) running `handler`, scheduled by `algorithm`:
    /// NPDS, PDS-1 or PDS-2, batch by batch ([`Executor::execute`]). LSA has no scheduler that
    /// decides alone: its executor is [`Executor::loose`].
    pub fn new<H: Handler>(algorithm: Algorithm, threads: u16, handler: Arc<H>) -> Result<Executor, ExecuteError> {
        if let Algorithm::Lsa(_) = algorithm {
            return Err(ExecuteError::WrongPacing("an LSA executor is made with Executor::loose"));
        }
        Ok(Executor::start(Pacing::Scheduled(algorithm), threads, handler))
    }

    /// `threads` worker threads (at least one) running `handler` under LSA: each batch led
    /// ([`Executor::execute_leading`]) or following a leader's acquisitions
    /// ([`Executor::execute_following`]).
    pub fn loose<H: Handler>(threads: u16, handler: Arc<H>) -> Executor {
        Executor::start(Pacing::Loose, threads, handler)
    }

    fn start<H: Handler>(pacing: Pacing, threads: u16, handler: Arc<H>) -> Executor {
        let threads = threads.max(1);
        let (done_to, done) = channel();
        let (mut jobs, mut handles) = (Vec::new(), Vec::new());
        for index in 0..threads {
            let (job_to, job_from) = channel::<Job>();
            let (handler, done_to) = (handler.clone(), done_to.clone());
            let count = usize::from(threads);
            handles.push(
                std::thread::Builder::new()
                    .name(format!("active-worker-{index}"))
                    .spawn(move || {
                        while let Ok(job) = job_from.recv() {
                            if done_to.send(handle_part(handler.as_ref(), job, usize::from(index), count)).is_err() {
                                return;
                            }
                        }
                    })
                    .expect("spawning a worker thread"),
            );
            jobs.push(job_to);
        }
        Executor {
            pacing,
            jobs,
            done: std::sync::Mutex::new(done),
            threads: handles,
            broken: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Executes `batch` to its end under the executor's scheduler (NPDS, PDS-1, PDS-2) and
    /// answers its replies in the batch's order.
    pub fn execute(&self, batch: Arc<Vec<Vec<u8>>>) -> Result<Vec<Vec<u8>>, ExecuteError> {
        let Pacing::Scheduled(algorithm) = self.pacing else {
            return Err(ExecuteError::WrongPacing("give an LSA batch its leader or its acquisitions"));
        };
        self.run(&Replica::new(algorithm, self.jobs.len() as u16), batch)
    }

    /// LSA: executes `batch` as its leader, the threads taking mutexes as they come, and
    /// answers its replies and the acquisitions made, in order, for the followers.
    pub fn execute_leading(&self, batch: Arc<Vec<Vec<u8>>>) -> Result<(Vec<Vec<u8>>, Vec<Grant>), ExecuteError> {
        self.is_loose()?;
        let replica = Replica::new(Algorithm::Lsa(Role::Leader), self.jobs.len() as u16);
        let replies = self.run(&replica, batch)?;
        Ok((replies, replica.take_shipped()))
    }

    /// LSA: executes `batch` as a follower of the leader that made `acquisitions` executing it.
    /// [`ExecuteError::Unfollowed`] if this replica's threads do not make those acquisitions
    /// (its state or the leader's is not the order's): the batch is then half executed.
    pub fn execute_following(
        &self,
        batch: Arc<Vec<Vec<u8>>>,
        acquisitions: &[Grant],
    ) -> Result<Vec<Vec<u8>>, ExecuteError> {
        self.is_loose()?;
        let replica = Replica::new(Algorithm::Lsa(Role::Follower), self.jobs.len() as u16);
        for &(mutex, thread) in acquisitions {
            if usize::from(thread.0) >= self.jobs.len() {
                return Err(ExecuteError::Unfollowed(format!(
                    "an acquisition by thread {} of {}",
                    thread.0,
                    self.jobs.len()
                )));
            }
            replica.shipped(mutex, thread)?;
        }
        // Every acquisition of the batch is known: a thread that waits for one not shipped, or
        // behind one that will never be taken, must stop instead of waiting for ever.
        replica.order_ended();
        let replies = match self.run(&replica, batch) {
            Err(ExecuteError::Schedule(ScheduleError::Stopped)) => {
                return Err(ExecuteError::Unfollowed(
                    "a thread waited for an acquisition the leader did not make".into(),
                ));
            }
            other => other?,
        };
        match replica.grants_left() {
            0 => Ok(replies),
            left => Err(ExecuteError::Unfollowed(format!("{left} of the leader's acquisitions were not made here"))),
        }
    }

    fn is_loose(&self) -> Result<(), ExecuteError> {
        match self.pacing {
            Pacing::Loose => Ok(()),
            Pacing::Scheduled(_) => {
                Err(ExecuteError::WrongPacing("only an LSA executor's batches are led or followed"))
            }
        }
    }

    /// Runs `batch` to its end on the threads, scheduled by `replica`.
    fn run(&self, replica: &Arc<Replica>, batch: Arc<Vec<Vec<u8>>>) -> Result<Vec<Vec<u8>>, ExecuteError> {
        let gone = || {
            self.broken.store(true, std::sync::atomic::Ordering::Relaxed);
            ExecuteError::ThreadsGone
        };
        let done = self.done.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.broken.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(ExecuteError::ThreadsGone);
        }
        let threads = self.jobs.len() as u16;
        for (index, jobs) in self.jobs.iter().enumerate() {
            let worker = replica.worker(ThreadId(index as u16))?;
            jobs.send(Job { worker, batch: batch.clone() }).map_err(|_| gone())?;
        }
        let mut failure = None;
        let mut replies = vec![Vec::new(); batch.len()];
        for _ in 0..threads {
            match done.recv().map_err(|_| gone())? {
                Ok(part) => part.into_iter().for_each(|(position, reply)| replies[position] = reply),
                Err(error) => failure = Some(failure.unwrap_or(error)),
            }
        }
        failure.map_or(Ok(replies), Err)
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        self.jobs.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Thread `index` of `count`: requests `index`, `index + count`, … of the batch, in order, then
/// the thread's exit from the batch's scheduler.
fn handle_part<H: Handler + ?Sized>(handler: &H, job: Job, index: usize, count: usize) -> Done {
    let mut replies = Vec::new();
    for position in (index..job.batch.len()).step_by(count) {
        match handle_one(handler, &job.worker, &job.batch[position], position as u64) {
            Ok(reply) => replies.push((position, reply)),
            Err(panicked) => {
                // The thread still leaves the batch, so that the others can finish it.
                let _ = job.worker.exit();
                return Err(panicked);
            }
        }
    }
    job.worker.exit()?;
    Ok(replies)
}

/// `handler`'s reply to `request` (number `position` of its batch or stream), a panic caught.
pub(crate) fn handle_one<H: Handler + ?Sized>(
    handler: &H,
    worker: &Worker,
    request: &[u8],
    position: u64,
) -> Result<Vec<u8>, ExecuteError> {
    let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler.handle(worker, request)));
    match handled {
        Ok(reply) => Ok(reply?),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(ExecuteError::Panicked { position, message })
        }
    }
}
