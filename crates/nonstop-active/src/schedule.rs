//! Deterministic mutex scheduling for multithreaded replicas, as a pure state machine.
//!
//! The service's threads share state under mutexes. Each thread's own steps are deterministic
//! (the same requests in the same order give the same steps), so if every replica grants every
//! mutex to the same threads in the same order, every replica computes the same states. A
//! [`Scheduler`] decides that order from what the threads ask for, never from when they ask:
//! the driver reports each lock, unlock and exit, blocks the thread that asked, and lets a
//! thread go on only when an [`Action::Run`] names it.
//!
//! Four algorithms, from the survey this project follows (Iyer, "Design of High
//! Availability Systems and Networks: Replication"):
//!
//! * [`Algorithm::Npds`], non-preemptive (Transactional Drago's): one thread runs at a time
//!   and hands the turn on, in thread order, only when it blocks on a held mutex or exits.
//! * [`Algorithm::Pds1`], preemptive (Basile, Kalbarczyk and Iyer, "A Preemptive Deterministic
//!   Scheduling Algorithm for Multithreaded Replicas", DSN 2003): all threads run at once, and
//!   every lock suspends its thread until the next round. A round fires when no thread runs;
//!   its requests are then all known, and they join each mutex's queue in thread order, so a
//!   thread acquires at most one mutex per round and ties go to the lower thread id. Threads
//!   queued behind a holder are served in that order as it unlocks, within or after the round.
//! * [`Algorithm::Pds2`]: PDS with up to two acquisitions per thread per round, the round cut
//!   in two steps. A second request waits until no thread before it (in thread order) can
//!   still ask for the same mutex in this step, then is granted at once if the mutex is free;
//!   once no thread runs, the second requests still waiting join their queues in thread
//!   order. This is our reading of the paper's rule ("avoid a suspension whenever the thread
//!   would acquire the mutex first, whatever the other threads ask next"); its tests check
//!   that it gives one order whatever the timing.
//! * [`Algorithm::Lsa`], loose synchronization (Basile, Kalbarczyk and Iyer, "Loose
//!   Synchronization of Multithreaded Replicas", SRDS 2002): the leader's threads take mutexes
//!   first come, first served, and the leader ships each acquisition ([`Action::Ship`]); a
//!   follower grants each mutex to the threads in the order shipped
//!   ([`Scheduler::shipped`]), whatever order its own threads ask in. When the leader dies, a
//!   follower given all it shipped takes over ([`Scheduler::take_over`]): it gives the grants
//!   shipped but not given yet first, then leads and ships.
//!
//! ```
//! use nonstop_active::schedule::{Action, Algorithm, MutexId, Scheduler, ThreadId};
//! let mut scheduler = Scheduler::new(Algorithm::Pds1, 2);
//! let (t0, t1, m) = (ThreadId(0), ThreadId(1), MutexId(7));
//! // Thread 1 asks first, but thread 0 is still running: no round yet.
//! assert_eq!(scheduler.lock(t1, m).unwrap(), vec![]);
//! // Now both are suspended: the round fires, and the tie goes to thread 0.
//! assert_eq!(scheduler.lock(t0, m).unwrap(), vec![Action::Run { thread: t0, acquired: Some(m) }]);
//! assert_eq!(scheduler.unlock(t0, m).unwrap(), vec![Action::Run { thread: t1, acquired: Some(m) }]);
//! ```

use std::collections::{BTreeMap, VecDeque};
use thiserror::Error;

/// A worker thread of a replica, numbered from 0: the same numbers on every replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct ThreadId(pub u16);

/// A mutex of the service's shared state: the same numbers on every replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct MutexId(pub u32);

/// One acquisition of an LSA leader: the mutex, and the thread that took it.
pub type Grant = (MutexId, ThreadId);

/// How the order of acquisitions is decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// Non-preemptive: one thread at a time.
    Npds,
    /// Preemptive, in rounds of at most one acquisition per thread.
    Pds1,
    /// Preemptive, in rounds of at most two acquisitions per thread, the second taken at once
    /// when the thread would be first to it whatever the others ask next.
    Pds2,
    /// Loose synchronization: the leader's threads take mutexes as they come and the leader
    /// ships each acquisition; a follower grants each mutex in the order shipped.
    Lsa(Role),
}

impl Algorithm {
    /// PDS: how many mutexes a thread may acquire per round.
    fn per_round(self) -> Option<u8> {
        match self {
            Algorithm::Pds1 => Some(1),
            Algorithm::Pds2 => Some(2),
            Algorithm::Npds | Algorithm::Lsa(_) => None,
        }
    }
}

/// A replica's part in [`Algorithm::Lsa`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Decides the order, and ships it ([`Action::Ship`]).
    Leader,
    /// Follows the order shipped ([`Scheduler::shipped`]).
    Follower,
}

/// What the driver does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// `thread` may run on; it now holds `acquired` if that names a mutex it asked for.
    Run {
        /// The thread.
        thread: ThreadId,
        /// The mutex it asked for and now holds, if it waited for one.
        acquired: Option<MutexId>,
    },
    /// LSA leader: `thread` acquired `mutex`; send this to the followers, in this order, before
    /// any reply that depends on it leaves.
    Ship {
        /// The mutex.
        mutex: MutexId,
        /// The thread that acquired it.
        thread: ThreadId,
    },
}

/// A thread reported something it cannot have done: a bug in the service or the driver.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ScheduleError {
    /// No such thread.
    #[error("thread {thread} does not exist: this scheduler has {threads} threads")]
    UnknownThread {
        /// The thread named.
        thread: u16,
        /// How many there are.
        threads: usize,
    },
    /// Only a thread that was told to run may lock, unlock or exit.
    #[error("thread {thread} is not running: it must wait for its Action::Run before it locks, unlocks or exits")]
    NotRunning {
        /// The thread.
        thread: u16,
    },
    /// A thread unlocked a mutex it does not hold.
    #[error("thread {thread} unlocks mutex {mutex}, which it does not hold")]
    NotHeld {
        /// The thread.
        thread: u16,
        /// The mutex.
        mutex: u32,
    },
    /// A thread locked a mutex it holds (these mutexes are not recursive).
    #[error("thread {thread} locks mutex {mutex}, which it holds already: it would wait for itself")]
    HeldAlready {
        /// The thread.
        thread: u16,
        /// The mutex.
        mutex: u32,
    },
    /// A second handle was asked for a worker thread that has one.
    #[error("worker thread {thread} has its handle already: give each thread its own id")]
    WorkerTaken {
        /// The thread.
        thread: u16,
    },
    /// An LSA order was given to a scheduler that is not an LSA follower.
    #[error("only an LSA follower takes a shipped order: this scheduler runs {algorithm:?}")]
    NotAFollower {
        /// The scheduler's algorithm.
        algorithm: Algorithm,
    },
    /// The replica is stopping (halted, or an LSA follower whose leader's order ended before
    /// this thread's grant): the thread must stop; its request will not finish here.
    #[error("this replica is stopping (halted, or its leader's order ended before this grant): stop the thread")]
    Stopped,
    /// A thread exited holding a mutex, which no other thread could then take.
    #[error("thread {thread} exits holding mutex {mutex}: unlock it first")]
    ExitHolding {
        /// The thread.
        thread: u16,
        /// The mutex.
        mutex: u32,
    },
}

/// Where a thread is, as the scheduler sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Running (NPDS: holding the turn).
    Running,
    /// NPDS: may run, waiting for the turn; holding `acquired` once it runs, if that is a
    /// mutex handed to it while it waited.
    Ready { acquired: Option<MutexId> },
    /// PDS: asked for `mutex`; waits for the next round to join its queue.
    Asking(MutexId),
    /// PDS-2: asked for `mutex` as its second of the round; waits until it is known that no
    /// thread before it can still ask for the same mutex this round.
    Deferred(MutexId),
    /// In `mutex`'s queue, waiting for the threads before it to unlock.
    Queued(MutexId),
    /// Gone.
    Exited,
}

/// One mutex: who holds it, and who waits for it in order.
#[derive(Debug, Default)]
struct Mutex {
    holder: Option<ThreadId>,
    queue: VecDeque<ThreadId>,
    /// LSA leader that took over from a follower's place ([`Scheduler::take_over`]): the
    /// grants its old leader shipped that were not given yet. They are given first, in that
    /// order (every follower gives them too), and not shipped again.
    owed: VecDeque<ThreadId>,
}

/// The scheduler of one replica's threads. Pure: no threads, locks or clocks of its own.
#[derive(Debug)]
pub struct Scheduler {
    algorithm: Algorithm,
    steps: Vec<Step>,
    /// PDS: mutexes each thread acquired in the current round.
    used: Vec<u8>,
    mutexes: BTreeMap<MutexId, Mutex>,
    rounds: u64,
}

impl Scheduler {
    /// A scheduler of `threads` threads, which start as [`Scheduler::initially_running`] says.
    pub fn new(algorithm: Algorithm, threads: u16) -> Scheduler {
        let first = |index: u16| match algorithm {
            Algorithm::Pds1 | Algorithm::Pds2 | Algorithm::Lsa(_) => Step::Running,
            Algorithm::Npds if index == 0 => Step::Running,
            Algorithm::Npds => Step::Ready { acquired: None },
        };
        Scheduler {
            algorithm,
            steps: (0..threads).map(first).collect(),
            used: vec![0; threads as usize],
            mutexes: BTreeMap::new(),
            rounds: 0,
        }
    }

    /// The threads that may run from the start (every one under PDS; thread 0 under NPDS).
    pub fn initially_running(&self) -> Vec<ThreadId> {
        self.threads().filter(|thread| self.may_run(*thread)).collect()
    }

    /// Whether `thread` may run now: it was told to ([`Action::Run`], or from the start) and
    /// has not asked for a mutex since. False for a thread that does not exist.
    pub fn may_run(&self, thread: ThreadId) -> bool {
        self.steps.get(thread.0 as usize) == Some(&Step::Running)
    }

    /// LSA follower: whether `thread` waits for a mutex its leader has not shipped to it (not in
    /// that mutex's shipped order at all). Once the leader's order has ended, such a thread
    /// will never run again. False for every other algorithm and step.
    pub fn waits_unshipped(&self, thread: ThreadId) -> bool {
        if self.algorithm != Algorithm::Lsa(Role::Follower) {
            return false;
        }
        match self.steps.get(thread.0 as usize) {
            Some(Step::Queued(mutex)) => !self.mutexes.get(mutex).is_some_and(|m| m.queue.contains(&thread)),
            _ => false,
        }
    }

    /// LSA follower: whether no thread can go on whatever is shipped next to the threads that
    /// wait: none runs, and at least one waits (every live thread waits for a mutex whose
    /// next grant, if shipped, is a thread that never takes it). Once the leader's order has
    /// ended, the threads that wait then will never run again: the leader's acquisitions are
    /// not the ones this replica's threads make, so its state or the leader's differs from
    /// the order's. False for every other algorithm.
    pub fn stuck(&self) -> bool {
        self.algorithm == Algorithm::Lsa(Role::Follower)
            && self.steps.iter().all(|step| matches!(step, Step::Queued(_) | Step::Exited))
            && self.steps.iter().any(|step| matches!(step, Step::Queued(_)))
    }

    /// LSA follower: acquisitions shipped and not granted yet. Once every thread has exited, any
    /// left were made by the leader's threads and not by this replica's.
    pub fn grants_left(&self) -> usize {
        match self.algorithm {
            Algorithm::Lsa(Role::Follower) => self.mutexes.values().map(|mutex| mutex.queue.len()).sum(),
            _ => 0,
        }
    }

    /// Whether `thread` has exited.
    pub fn exited(&self, thread: ThreadId) -> bool {
        self.steps.get(thread.0 as usize) == Some(&Step::Exited)
    }

    /// How many threads it schedules.
    pub fn threads_count(&self) -> usize {
        self.steps.len()
    }

    /// Rounds fired so far (PDS).
    pub fn rounds(&self) -> u64 {
        self.rounds
    }

    /// `thread` asks for `mutex`; it waits until an [`Action::Run`] names it.
    pub fn lock(&mut self, thread: ThreadId, mutex: MutexId) -> Result<Vec<Action>, ScheduleError> {
        self.running(thread)?;
        if self.mutexes.get(&mutex).and_then(|m| m.holder) == Some(thread) {
            return Err(ScheduleError::HeldAlready { thread: thread.0, mutex: mutex.0 });
        }
        let mut actions = Vec::new();
        match self.algorithm {
            Algorithm::Npds => {
                let entry = self.mutexes.entry(mutex).or_default();
                if entry.holder.is_none() {
                    entry.holder = Some(thread);
                    actions.push(Action::Run { thread, acquired: Some(mutex) });
                } else {
                    entry.queue.push_back(thread);
                    self.steps[thread.0 as usize] = Step::Queued(mutex);
                    self.pass_turn(thread, &mut actions);
                }
            }
            Algorithm::Pds1 | Algorithm::Pds2 => {
                let used = self.used[thread.0 as usize];
                // A first acquisition waits for a round, where every first request is known;
                // one past the budget waits for the next round.
                let within = used > 0 && Some(used) < self.algorithm.per_round();
                self.steps[thread.0 as usize] = if within { Step::Deferred(mutex) } else { Step::Asking(mutex) };
                self.settle(&mut actions);
            }
            Algorithm::Lsa(Role::Leader) => {
                let entry = self.mutexes.entry(mutex).or_default();
                // A grant owed to this thread comes in its turn; one owed to nobody is the
                // leader's to give, first come, first served.
                let owed = entry.owed.contains(&thread);
                if !owed {
                    entry.queue.push_back(thread);
                }
                self.steps[thread.0 as usize] = Step::Queued(mutex);
                self.grant_as_leader(mutex, &mut actions);
            }
            Algorithm::Lsa(Role::Follower) => {
                self.steps[thread.0 as usize] = Step::Queued(mutex);
                self.grant_as_shipped(mutex, &mut actions);
            }
        }
        Ok(actions)
    }

    /// LSA follower: the leader's next acquisition of `mutex` was by `thread`.
    pub fn shipped(&mut self, mutex: MutexId, thread: ThreadId) -> Result<Vec<Action>, ScheduleError> {
        if self.algorithm != Algorithm::Lsa(Role::Follower) {
            return Err(ScheduleError::NotAFollower { algorithm: self.algorithm });
        }
        if thread.0 as usize >= self.steps.len() {
            return Err(ScheduleError::UnknownThread { thread: thread.0, threads: self.steps.len() });
        }
        self.mutexes.entry(mutex).or_default().queue.push_back(thread);
        let mut actions = Vec::new();
        self.grant_as_shipped(mutex, &mut actions);
        Ok(actions)
    }

    /// `thread` releases `mutex`, which goes to the next thread in its queue.
    pub fn unlock(&mut self, thread: ThreadId, mutex: MutexId) -> Result<Vec<Action>, ScheduleError> {
        self.running(thread)?;
        let not_held = ScheduleError::NotHeld { thread: thread.0, mutex: mutex.0 };
        let entry = self.mutexes.get_mut(&mutex).ok_or_else(|| not_held.clone())?;
        if entry.holder != Some(thread) {
            return Err(not_held);
        }
        entry.holder = None;
        let mut actions = Vec::new();
        match self.algorithm {
            // The follower's queue is the order shipped, which may name a thread not asking yet.
            Algorithm::Lsa(Role::Follower) => self.grant_as_shipped(mutex, &mut actions),
            Algorithm::Lsa(Role::Leader) => self.grant_as_leader(mutex, &mut actions),
            algorithm => {
                entry.holder = entry.queue.pop_front();
                if let Some(next) = entry.holder {
                    match algorithm {
                        // Runs when its turn comes.
                        Algorithm::Npds => self.steps[next.0 as usize] = Step::Ready { acquired: Some(mutex) },
                        _ => {
                            self.steps[next.0 as usize] = Step::Running;
                            self.used[next.0 as usize] += 1;
                            actions.push(Action::Run { thread: next, acquired: Some(mutex) });
                        }
                    }
                }
            }
        }
        if self.algorithm.per_round().is_some() {
            // A mutex freed with nobody queued may be what a deferred request waits for.
            self.settle(&mut actions);
        }
        if self.mutexes.get(&mutex).is_some_and(|m| m.queue.is_empty() && m.owed.is_empty() && m.holder.is_none()) {
            self.mutexes.remove(&mutex);
        }
        Ok(actions)
    }

    /// LSA follower: its leader is gone and it leads from here, once it has been given every
    /// grant the old leader shipped (the driver calls it after the last of them). Those not
    /// given yet are still given first, in the order shipped, to the threads they name (every
    /// other follower gives them too); then each free mutex goes to the threads that ask for it,
    /// first come, first served, and every such grant is shipped ([`Action::Ship`]) to the
    /// followers that remain. A thread waiting for a grant nobody shipped may run now.
    pub fn take_over(&mut self) -> Result<Vec<Action>, ScheduleError> {
        if self.algorithm != Algorithm::Lsa(Role::Follower) {
            return Err(ScheduleError::NotAFollower { algorithm: self.algorithm });
        }
        self.algorithm = Algorithm::Lsa(Role::Leader);
        for entry in self.mutexes.values_mut() {
            entry.owed = std::mem::take(&mut entry.queue);
        }
        // Threads that wait for a grant nobody owes them queue in thread order: any order is
        // the leader's to choose, and it ships the one it chose.
        let waiting: Vec<(ThreadId, MutexId)> = self
            .threads()
            .filter_map(|thread| match self.steps[thread.0 as usize] {
                Step::Queued(mutex) => Some((thread, mutex)),
                _ => None,
            })
            .collect();
        for (thread, mutex) in waiting {
            let entry = self.mutexes.entry(mutex).or_default();
            if !entry.owed.contains(&thread) {
                entry.queue.push_back(thread);
            }
        }
        let mut actions = Vec::new();
        let mutexes: Vec<MutexId> = self.mutexes.keys().copied().collect();
        for mutex in mutexes {
            self.grant_as_leader(mutex, &mut actions);
        }
        Ok(actions)
    }

    /// `thread` is done: it runs no more.
    pub fn exit(&mut self, thread: ThreadId) -> Result<Vec<Action>, ScheduleError> {
        self.running(thread)?;
        if let Some((mutex, _)) = self.mutexes.iter().find(|(_, m)| m.holder == Some(thread)) {
            return Err(ScheduleError::ExitHolding { thread: thread.0, mutex: mutex.0 });
        }
        self.steps[thread.0 as usize] = Step::Exited;
        let mut actions = Vec::new();
        match self.algorithm {
            Algorithm::Npds => self.pass_turn(thread, &mut actions),
            Algorithm::Pds1 | Algorithm::Pds2 => self.settle(&mut actions),
            Algorithm::Lsa(_) => {}
        }
        Ok(actions)
    }

    fn threads(&self) -> impl Iterator<Item = ThreadId> + use<> {
        (0..self.steps.len() as u16).map(ThreadId)
    }

    fn running(&self, thread: ThreadId) -> Result<(), ScheduleError> {
        match self.steps.get(thread.0 as usize) {
            None => Err(ScheduleError::UnknownThread { thread: thread.0, threads: self.steps.len() }),
            Some(Step::Running) => Ok(()),
            Some(_) => Err(ScheduleError::NotRunning { thread: thread.0 }),
        }
    }

    /// NPDS: the turn goes to the next ready thread after `from`, in thread order.
    fn pass_turn(&mut self, from: ThreadId, actions: &mut Vec<Action>) {
        let count = self.steps.len();
        let next =
            (1..=count).map(|offset| (from.0 as usize + offset) % count).find_map(|index| match self.steps[index] {
                Step::Ready { acquired } => Some((index, acquired)),
                _ => None,
            });
        if let Some((index, acquired)) = next {
            self.steps[index] = Step::Running;
            actions.push(Action::Run { thread: ThreadId(index as u16), acquired });
        }
    }

    /// LSA leader: a free `mutex` goes to the thread the next grant owed names, once it asks
    /// (nobody else may take it before), or, with nothing owed, to the first thread waiting;
    /// that grant is shipped.
    fn grant_as_leader(&mut self, mutex: MutexId, actions: &mut Vec<Action>) {
        let Some(entry) = self.mutexes.get_mut(&mutex) else { return };
        if entry.holder.is_some() {
            return;
        }
        let next = match entry.owed.front() {
            Some(&owed) if self.steps[owed.0 as usize] == Step::Queued(mutex) => {
                entry.owed.pop_front();
                Some((owed, false))
            }
            Some(_) => None,
            None => entry.queue.pop_front().map(|waiting| (waiting, true)),
        };
        if let Some((next, ship)) = next {
            entry.holder = Some(next);
            self.steps[next.0 as usize] = Step::Running;
            actions.push(Action::Run { thread: next, acquired: Some(mutex) });
            if ship {
                actions.push(Action::Ship { mutex, thread: next });
            }
        }
    }

    /// LSA follower: a free `mutex` goes to the next thread of the order shipped, once that
    /// thread asks for it.
    fn grant_as_shipped(&mut self, mutex: MutexId, actions: &mut Vec<Action>) {
        let Some(entry) = self.mutexes.get_mut(&mutex) else { return };
        if entry.holder.is_some() {
            return;
        }
        if let Some(&next) = entry.queue.front()
            && self.steps[next.0 as usize] == Step::Queued(mutex)
        {
            entry.queue.pop_front();
            entry.holder = Some(next);
            self.steps[next.0 as usize] = Step::Running;
            actions.push(Action::Run { thread: next, acquired: Some(mutex) });
        }
    }

    /// PDS: grants every deferred second request that can be granted now whatever the threads'
    /// timing; once no thread runs, resolves the deferred requests in thread order, and once
    /// none is left, fires a round: every thread asking joins its mutex's queue in thread
    /// order, and each free mutex goes to the first in its queue.
    fn settle(&mut self, actions: &mut Vec<Action>) {
        loop {
            self.grant_early(actions);
            if self.steps.contains(&Step::Running) {
                return;
            }
            let deferred = self.asking(|step| matches!(step, Step::Deferred(_)));
            if !deferred.is_empty() {
                self.join(deferred, actions);
                continue;
            }
            let asking = self.asking(|step| matches!(step, Step::Asking(_)));
            if asking.is_empty() {
                return;
            }
            self.rounds += 1;
            self.used.fill(0);
            self.join(asking, actions);
        }
    }

    /// The threads in a waiting step, in thread order, with the mutex each asks for.
    fn asking(&self, waiting: impl Fn(Step) -> bool) -> Vec<(ThreadId, MutexId)> {
        self.threads()
            .filter_map(|thread| match self.steps[thread.0 as usize] {
                step @ (Step::Asking(mutex) | Step::Deferred(mutex)) if waiting(step) => Some((thread, mutex)),
                _ => None,
            })
            .collect()
    }

    /// `requests` join their mutexes' queues in order; each free mutex goes to its first.
    fn join(&mut self, requests: Vec<(ThreadId, MutexId)>, actions: &mut Vec<Action>) {
        for &(thread, mutex) in &requests {
            self.mutexes.entry(mutex).or_default().queue.push_back(thread);
            self.steps[thread.0 as usize] = Step::Queued(mutex);
        }
        for (_, mutex) in requests {
            let entry = self.mutexes.get_mut(&mutex).expect("joined above");
            if entry.holder.is_none()
                && let Some(first) = entry.queue.pop_front()
            {
                entry.holder = Some(first);
                self.steps[first.0 as usize] = Step::Running;
                self.used[first.0 as usize] += 1;
                actions.push(Action::Run { thread: first, acquired: Some(mutex) });
            }
        }
    }

    /// PDS-2: a deferred second request is granted at once if its mutex is free with nobody
    /// queued, and no thread before it can still come first this round: none asked for the
    /// same mutex, none runs with one acquisition (it may yet ask a second), none waits in a
    /// queue for its first. Otherwise it waits for the step to resolve in thread order.
    fn grant_early(&mut self, actions: &mut Vec<Action>) {
        'again: loop {
            for (thread, mutex) in self.asking(|step| matches!(step, Step::Deferred(_))) {
                let free = self.mutexes.get(&mutex).is_none_or(|m| m.holder.is_none() && m.queue.is_empty());
                let before = (0..thread.0).map(|t| (self.steps[t as usize], self.used[t as usize]));
                let first = before.into_iter().all(|(step, used)| match step {
                    Step::Deferred(asked) => asked != mutex,
                    Step::Running => used != 1,
                    Step::Queued(_) => used != 0,
                    Step::Ready { .. } | Step::Asking(_) | Step::Exited => true,
                });
                if free && first {
                    let entry = self.mutexes.entry(mutex).or_default();
                    entry.holder = Some(thread);
                    self.steps[thread.0 as usize] = Step::Running;
                    self.used[thread.0 as usize] += 1;
                    actions.push(Action::Run { thread, acquired: Some(mutex) });
                    continue 'again;
                }
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_fires_only_when_every_thread_is_suspended_and_grants_in_thread_order() {
        let mut s = Scheduler::new(Algorithm::Pds1, 3);
        let (t0, t1, t2) = (ThreadId(0), ThreadId(1), ThreadId(2));
        let (a, b) = (MutexId(1), MutexId(2));
        assert_eq!(s.initially_running(), vec![t0, t1, t2]);
        assert_eq!(s.lock(t2, a).unwrap(), vec![]);
        assert_eq!(s.lock(t1, b).unwrap(), vec![]);
        assert_eq!(s.rounds(), 0, "thread 0 still runs");
        let granted = s.lock(t0, a).unwrap();
        assert_eq!(
            granted,
            vec![Action::Run { thread: t0, acquired: Some(a) }, Action::Run { thread: t1, acquired: Some(b) }]
        );
        assert_eq!(s.rounds(), 1);
        // Thread 0 asks again: suspended until the next round, which waits for thread 1.
        assert_eq!(s.unlock(t0, a).unwrap(), vec![Action::Run { thread: t2, acquired: Some(a) }]);
        assert_eq!(s.lock(t0, b).unwrap(), vec![]);
        assert_eq!(s.unlock(t1, b).unwrap(), vec![]);
        assert_eq!(s.exit(t1).unwrap(), vec![]);
        assert_eq!(s.unlock(t2, a).unwrap(), vec![]);
        assert_eq!(s.exit(t2).unwrap(), vec![Action::Run { thread: t0, acquired: Some(b) }]);
        assert_eq!(s.rounds(), 2);
    }

    #[test]
    fn pds2_takes_a_second_mutex_at_once_only_when_no_thread_before_can_still_ask() {
        let mut s = Scheduler::new(Algorithm::Pds2, 2);
        let (t0, t1, a, b, c) = (ThreadId(0), ThreadId(1), MutexId(1), MutexId(2), MutexId(3));
        s.lock(t0, a).unwrap();
        let round = s.lock(t1, b).unwrap();
        assert_eq!(round.len(), 2, "round 1 grants both first requests");
        // Thread 1's second request: thread 0 runs with one mutex and may still ask for c.
        assert_eq!(s.lock(t1, c).unwrap(), vec![], "thread 1 waits for thread 0's second request");
        // Thread 0 asks for b, held by thread 1: both requests are known now. Thread 1 takes c
        // (nobody before it asked for c), thread 0 queues behind thread 1 for b.
        assert_eq!(s.lock(t0, b).unwrap(), vec![Action::Run { thread: t1, acquired: Some(c) }]);
        assert_eq!(s.rounds(), 1, "both second acquisitions in the same round");
        s.unlock(t1, c).unwrap();
        assert_eq!(s.unlock(t1, b).unwrap(), vec![Action::Run { thread: t0, acquired: Some(b) }]);
        // Thread 0, first of all threads, takes a free second mutex without waiting.
        let mut s = Scheduler::new(Algorithm::Pds2, 2);
        s.lock(t1, b).unwrap();
        s.lock(t0, a).unwrap();
        assert_eq!(s.lock(t0, c).unwrap(), vec![Action::Run { thread: t0, acquired: Some(c) }]);
        // A third acquisition waits for the next round.
        assert_eq!(s.lock(t0, MutexId(4)).unwrap(), vec![]);
    }

    #[test]
    fn npds_runs_one_thread_and_hands_the_turn_on_only_when_it_blocks() {
        let mut s = Scheduler::new(Algorithm::Npds, 3);
        let (t0, t1, t2, m) = (ThreadId(0), ThreadId(1), ThreadId(2), MutexId(5));
        assert_eq!(s.initially_running(), vec![t0]);
        assert_eq!(s.lock(t0, m).unwrap(), vec![Action::Run { thread: t0, acquired: Some(m) }]);
        assert_eq!(s.exit(t1), Err(ScheduleError::NotRunning { thread: 1 }), "thread 1 has no turn");
        assert_eq!(s.exit(t0), Err(ScheduleError::ExitHolding { thread: 0, mutex: 5 }));
        assert_eq!(s.unlock(t0, m).unwrap(), vec![]);
        assert_eq!(s.exit(t0).unwrap(), vec![Action::Run { thread: t1, acquired: None }]);
        assert_eq!(s.lock(t1, m).unwrap(), vec![Action::Run { thread: t1, acquired: Some(m) }]);
        // Thread 1 now blocks nothing; thread 2 gets the turn only when thread 1 exits.
        assert_eq!(s.unlock(t1, m).unwrap(), vec![]);
        assert_eq!(s.exit(t1).unwrap(), vec![Action::Run { thread: t2, acquired: None }]);
    }

    #[test]
    fn mistakes_are_refused_and_change_nothing() {
        for algorithm in [Algorithm::Npds, Algorithm::Pds1] {
            let mut s = Scheduler::new(algorithm, 2);
            let (t0, m) = (ThreadId(0), MutexId(1));
            assert_eq!(s.lock(ThreadId(9), m), Err(ScheduleError::UnknownThread { thread: 9, threads: 2 }));
            assert_eq!(s.unlock(t0, m), Err(ScheduleError::NotHeld { thread: 0, mutex: 1 }));
            if algorithm == Algorithm::Npds {
                s.lock(t0, m).unwrap();
                assert_eq!(s.lock(t0, m), Err(ScheduleError::HeldAlready { thread: 0, mutex: 1 }));
                assert_eq!(s.unlock(t0, m).unwrap(), vec![]);
            }
            assert_eq!(s.exit(t0).unwrap().len(), usize::from(algorithm == Algorithm::Npds));
            let not_a_follower = ScheduleError::NotAFollower { algorithm };
            assert_eq!(s.shipped(m, t0), Err(not_a_follower));
        }
        let mut follower = Scheduler::new(Algorithm::Lsa(Role::Follower), 2);
        assert_eq!(
            follower.shipped(MutexId(1), ThreadId(2)),
            Err(ScheduleError::UnknownThread { thread: 2, threads: 2 })
        );
    }

    #[test]
    fn a_follower_taking_over_gives_what_was_shipped_first_and_ships_the_rest() {
        let (t0, t1, t2, m, n) = (ThreadId(0), ThreadId(1), ThreadId(2), MutexId(1), MutexId(2));
        let run = |thread, mutex| Action::Run { thread, acquired: Some(mutex) };
        let ship = |thread, mutex| Action::Ship { mutex, thread };
        let mut s = Scheduler::new(Algorithm::Lsa(Role::Follower), 3);
        // The dead leader gave m to thread 1, then thread 0; only thread 0 asks so far. Thread 2
        // waits for n, which the leader never granted anyone.
        s.shipped(m, t1).unwrap();
        s.shipped(m, t0).unwrap();
        assert_eq!(s.lock(t0, m).unwrap(), vec![]);
        assert_eq!(s.lock(t2, n).unwrap(), vec![]);
        assert_eq!(s.take_over().unwrap(), vec![run(t2, n), ship(t2, n)], "n is the new leader's to give");
        assert_eq!(s.take_over(), Err(ScheduleError::NotAFollower { algorithm: Algorithm::Lsa(Role::Leader) }));
        // m still goes to thread 1, then thread 0, as every follower gives it, unshipped.
        assert_eq!(s.lock(t1, m).unwrap(), vec![run(t1, m)]);
        assert_eq!(s.unlock(t1, m).unwrap(), vec![run(t0, m)]);
        // With nothing owed, m is first come, first served, and shipped.
        assert_eq!(s.lock(t1, m).unwrap(), vec![]);
        assert_eq!(s.unlock(t0, m).unwrap(), vec![run(t1, m), ship(t1, m)]);
    }

    #[test]
    fn an_lsa_follower_waits_for_the_thread_the_leader_chose() {
        let (t0, t1, m) = (ThreadId(0), ThreadId(1), MutexId(3));
        let mut leader = Scheduler::new(Algorithm::Lsa(Role::Leader), 2);
        // On the leader thread 1 came first.
        let ship = |thread| Action::Ship { mutex: m, thread };
        assert_eq!(leader.lock(t1, m).unwrap(), vec![Action::Run { thread: t1, acquired: Some(m) }, ship(t1)]);
        assert_eq!(leader.lock(t0, m).unwrap(), vec![]);
        assert_eq!(leader.unlock(t1, m).unwrap(), vec![Action::Run { thread: t0, acquired: Some(m) }, ship(t0)]);
        // On the follower thread 0 asks first, but waits for thread 1's turn.
        let mut follower = Scheduler::new(Algorithm::Lsa(Role::Follower), 2);
        assert_eq!(follower.lock(t0, m).unwrap(), vec![]);
        assert_eq!(follower.shipped(m, t1).unwrap(), vec![], "thread 1 has not asked yet");
        assert_eq!(follower.shipped(m, t0).unwrap(), vec![]);
        assert_eq!(follower.lock(t1, m).unwrap(), vec![Action::Run { thread: t1, acquired: Some(m) }]);
        assert_eq!(follower.unlock(t1, m).unwrap(), vec![Action::Run { thread: t0, acquired: Some(m) }]);
    }
}
