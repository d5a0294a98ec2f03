//! Mutexes for a replica's worker threads, granted in the order a [`Scheduler`] decides.
//!
//! The thin driver around the pure scheduler: real threads, a lock and a condition variable.
//! Each worker thread holds a [`Worker`] and takes every shared value through
//! [`Worker::lock`]; it blocks until the scheduler names it, so the threads of every replica
//! enter each mutex in the same order whatever their speed.
//!
//! ```
//! use nonstop_active::schedule::{Algorithm, MutexId, ThreadId};
//! use nonstop_active::sync::{Mutex, Replica};
//! let replica = Replica::new(Algorithm::Pds1, 2);
//! let log = Mutex::new(MutexId(0), Vec::new());
//! std::thread::scope(|scope| {
//!     for id in 0..2 {
//!         let (worker, log) = (replica.worker(ThreadId(id)).unwrap(), &log);
//!         scope.spawn(move || {
//!             worker.lock(log).unwrap().push(id);
//!             worker.exit().unwrap();
//!         });
//!     }
//! });
//! // Both asked in the first round: the tie went to thread 0, on every run.
//! assert_eq!(log.into_inner(), vec![0, 1]);
//! ```

use crate::schedule::{Action, Algorithm, MutexId, ScheduleError, Scheduler, ThreadId};
use std::sync::{Arc, Condvar, MutexGuard};

/// The scheduler of one replica's worker threads, shared by them.
#[derive(Debug)]
pub struct Replica {
    shared: std::sync::Mutex<Shared>,
    changed: Condvar,
}

struct Shared {
    scheduler: Scheduler,
    /// Which threads have their [`Worker`]: one each.
    issued: Vec<bool>,
    /// LSA leader: where each acquisition goes, in order.
    shipping: Shipping,
    /// Whether grants can still come.
    standing: Standing,
}

/// Whether a replica's threads may still be granted what they wait for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Standing {
    /// Serving: every wait ends in a grant.
    Serving,
    /// An LSA follower whose leader's order ended ([`Replica::order_ended`]): the grants
    /// shipped are still given, and a thread that waits for one not shipped stops.
    OrderEnded,
    /// Stopped ([`Replica::halt`]): every thread that waits stops.
    Halted,
}

/// LSA leader: what becomes of the acquisitions to ship.
enum Shipping {
    /// Kept until [`Replica::take_shipped`].
    Kept(Vec<(MutexId, ThreadId)>),
    /// Handed to a sink as they happen ([`Replica::shipping_to`]), under the replica's lock,
    /// so in order.
    To(Box<dyn FnMut(MutexId, ThreadId) + Send>),
}

impl Shared {
    /// Whether thread `id` may go on: the scheduler lets it run, or it has left.
    fn may_go_on(&self, id: ThreadId) -> bool {
        self.scheduler.may_run(id) || self.scheduler.exited(id)
    }

    /// Whether thread `id` waits for a grant that will never come.
    fn stranded(&self, id: ThreadId) -> bool {
        match self.standing {
            Standing::Serving => false,
            Standing::OrderEnded => self.scheduler.waits_unshipped(id) || self.scheduler.stuck(),
            Standing::Halted => !self.may_go_on(id),
        }
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("scheduler", &self.scheduler).field("issued", &self.issued).finish()
    }
}

impl Replica {
    /// A replica of `threads` worker threads scheduled by `algorithm`.
    pub fn new(algorithm: Algorithm, threads: u16) -> Arc<Replica> {
        Replica::with_shipping(algorithm, threads, Shipping::Kept(Vec::new()))
    }

    /// An LSA leader (or any replica: only a leader ships) whose acquisitions go to `sink` as
    /// they happen, in order, instead of waiting for [`Replica::take_shipped`]: for a driver
    /// that streams them to the followers.
    pub fn shipping_to(
        algorithm: Algorithm,
        threads: u16,
        sink: impl FnMut(MutexId, ThreadId) + Send + 'static,
    ) -> Arc<Replica> {
        Replica::with_shipping(algorithm, threads, Shipping::To(Box::new(sink)))
    }

    fn with_shipping(algorithm: Algorithm, threads: u16, shipping: Shipping) -> Arc<Replica> {
        let shared = Shared {
            scheduler: Scheduler::new(algorithm, threads),
            issued: vec![false; threads as usize],
            shipping,
            standing: Standing::Serving,
        };
        Arc::new(Replica { shared: std::sync::Mutex::new(shared), changed: Condvar::new() })
    }

    /// The handle worker thread `id` uses. Each id gets one: two threads acting as one would
    /// both run where the scheduler lets one.
    pub fn worker(self: &Arc<Replica>, id: ThreadId) -> Result<Worker, ScheduleError> {
        let mut shared = self.lock_shared();
        let threads = shared.scheduler.threads_count();
        match shared.issued.get_mut(id.0 as usize) {
            None => Err(ScheduleError::UnknownThread { thread: id.0, threads }),
            Some(true) => Err(ScheduleError::WorkerTaken { thread: id.0 }),
            Some(issued) => {
                *issued = true;
                Ok(Worker { scheduling: Scheduling::By(self.clone()), id })
            }
        }
    }

    /// LSA follower: the leader's next acquisition of `mutex` was by `thread`.
    pub fn shipped(&self, mutex: MutexId, thread: ThreadId) -> Result<(), ScheduleError> {
        let mut shared = self.lock_shared();
        let actions = shared.scheduler.shipped(mutex, thread)?;
        self.apply(&mut shared, actions);
        Ok(())
    }

    /// LSA follower whose leader died, once it has been given every grant that leader shipped:
    /// it leads from here ([`Scheduler::take_over`]), its acquisitions going to `sink` as they
    /// happen, in order. A thread that waited for a grant nobody shipped may now be granted.
    pub fn take_over(&self, sink: impl FnMut(MutexId, ThreadId) + Send + 'static) -> Result<(), ScheduleError> {
        let mut shared = self.lock_shared();
        let actions = shared.scheduler.take_over()?;
        shared.shipping = Shipping::To(Box::new(sink));
        self.apply(&mut shared, actions);
        Ok(())
    }

    /// LSA follower: acquisitions shipped and not granted yet ([`Scheduler::grants_left`]).
    pub fn grants_left(&self) -> usize {
        self.lock_shared().scheduler.grants_left()
    }

    /// LSA leader: the acquisitions made since the last call, in order, to ship (none if they
    /// go to a sink).
    pub fn take_shipped(&self) -> Vec<(MutexId, ThreadId)> {
        match &mut self.lock_shared().shipping {
            Shipping::Kept(kept) => std::mem::take(kept),
            Shipping::To(_) => Vec::new(),
        }
    }

    /// LSA follower: its leader's order has ended (the leader is gone), so no more grants will
    /// come. The grants already shipped are still given; a thread that waits, now or later, for
    /// a mutex the order holds nothing more for gets [`ScheduleError::Stopped`] and must stop
    /// instead of waiting for ever. If one does, the replica's state is no longer a replica's:
    /// it must be re-integrated.
    pub fn order_ended(&self) {
        self.stand(Standing::OrderEnded);
    }

    /// Stops the replica (it crashed, or was taken out): every thread that waits for a grant,
    /// now or later, gets [`ScheduleError::Stopped`] at once.
    pub fn halt(&self) {
        self.stand(Standing::Halted);
    }

    /// Whether [`Replica::halt`] stopped it.
    pub fn halted(&self) -> bool {
        self.lock_shared().standing == Standing::Halted
    }

    fn stand(&self, standing: Standing) {
        let mut shared = self.lock_shared();
        if shared.standing != Standing::Halted {
            shared.standing = standing;
        }
        drop(shared);
        self.changed.notify_all();
    }

    fn lock_shared(&self) -> MutexGuard<'_, Shared> {
        // A thread that panicked while holding it left the scheduler between two calls, whole.
        self.shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps what is to be shipped, and wakes the waiting threads if one of them may now run.
    fn apply(&self, shared: &mut Shared, actions: Vec<Action>) {
        let mut woken = false;
        for action in actions {
            match action {
                Action::Run { .. } => woken = true,
                Action::Ship { mutex, thread } => match &mut shared.shipping {
                    Shipping::Kept(kept) => kept.push((mutex, thread)),
                    Shipping::To(sink) => sink(mutex, thread),
                },
            }
        }
        if woken {
            self.changed.notify_all();
        }
    }

    /// Reports `event` of `id` to the scheduler once `id` may run, then waits until it may run
    /// again: at once after an unlock or an exit, once named after a lock.
    fn report(
        &self,
        id: ThreadId,
        event: impl FnOnce(&mut Scheduler) -> Result<Vec<Action>, ScheduleError>,
    ) -> Result<(), ScheduleError> {
        let mut shared = self.wait_turn(self.lock_shared(), id);
        if !shared.may_go_on(id) {
            return Err(ScheduleError::Stopped);
        }
        let actions = event(&mut shared.scheduler)?;
        self.apply(&mut shared, actions);
        if shared.standing == Standing::OrderEnded && shared.scheduler.stuck() {
            // No grant will end any wait: every waiting thread must hear it, not only this one.
            self.changed.notify_all();
        }
        if !self.wait_turn(shared, id).may_go_on(id) {
            return Err(ScheduleError::Stopped);
        }
        Ok(())
    }

    /// Waits until the scheduler lets `id` run (a thread that exited is let go).
    fn wait_turn<'a>(&'a self, mut shared: MutexGuard<'a, Shared>, id: ThreadId) -> MutexGuard<'a, Shared> {
        while !shared.may_go_on(id) && !shared.stranded(id) {
            shared = self.changed.wait(shared).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        shared
    }
}

/// One worker thread's access to its replica's mutexes.
#[derive(Debug)]
pub struct Worker {
    scheduling: Scheduling,
    id: ThreadId,
}

/// Who decides when a [`Worker`] takes a mutex.
#[derive(Debug)]
enum Scheduling {
    /// Its replica's scheduler.
    By(Arc<Replica>),
    /// Nobody: first come, first served as the operating system wakes threads.
    Unscheduled,
}

impl Worker {
    /// A worker of a server that is not replicated: it takes each mutex as the operating
    /// system lets it, with no scheduler and no determinism, so that the same service code
    /// measures what deterministic scheduling costs against none.
    pub fn unscheduled(id: ThreadId) -> Worker {
        Worker { scheduling: Scheduling::Unscheduled, id }
    }

    /// The thread's id.
    pub fn id(&self) -> ThreadId {
        self.id
    }

    /// Takes `mutex` when the scheduler grants it to this thread; the guard releases it.
    pub fn lock<'a, T>(&'a self, mutex: &'a Mutex<T>) -> Result<Guard<'a, T>, ScheduleError> {
        if let Scheduling::By(replica) = &self.scheduling {
            replica.report(self.id, |scheduler| scheduler.lock(self.id, mutex.id))?;
        }
        // Uncontended: the scheduler grants a mutex to one thread at a time.
        let value = mutex.value.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        Ok(Guard { worker: self, id: mutex.id, value: Some(value) })
    }

    /// This thread is done.
    pub fn exit(self) -> Result<(), ScheduleError> {
        match &self.scheduling {
            Scheduling::By(replica) => replica.report(self.id, |scheduler| scheduler.exit(self.id)),
            Scheduling::Unscheduled => Ok(()),
        }
    }
}

/// A value shared by a replica's worker threads, taken in the scheduler's order.
#[derive(Debug)]
pub struct Mutex<T> {
    id: MutexId,
    value: std::sync::Mutex<T>,
}

impl<T> Mutex<T> {
    /// A mutex known to the scheduler as `id` (the same on every replica).
    pub fn new(id: MutexId, value: T) -> Mutex<T> {
        Mutex { id, value: std::sync::Mutex::new(value) }
    }

    /// The value, once no thread can take it any more.
    pub fn into_inner(self) -> T {
        self.value.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A taken [`Mutex`]: the value, until it is dropped.
#[derive(Debug)]
pub struct Guard<'a, T> {
    worker: &'a Worker,
    id: MutexId,
    value: Option<std::sync::MutexGuard<'a, T>>,
}

impl<T> std::ops::Deref for Guard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.value.as_deref().expect("held until dropped")
    }
}

impl<T> std::ops::DerefMut for Guard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.value.as_deref_mut().expect("held until dropped")
    }
}

impl<T> Drop for Guard<'_, T> {
    fn drop(&mut self) {
        // The value first: the next thread the scheduler names takes it at once.
        drop(self.value.take());
        let (worker, id) = (self.worker, self.id);
        if let Scheduling::By(replica) = &worker.scheduling {
            // This thread holds the mutex, so the scheduler cannot refuse the unlock.
            let unlocked = replica.report(worker.id, |scheduler| scheduler.unlock(worker.id, id));
            debug_assert!(unlocked.is_ok(), "{unlocked:?}");
        }
    }
}
