//! Active replication: every replica executes the same requests in the same order and the
//! replies are voted on (docs/active.md has the whole design and what is built of it).
//!
//! Everything here is pure and deterministic, so that a node's replicas and the deterministic
//! simulator (`nonstop sim --kind order`) run the same code:
//!
//! * [`order`]: the total order a replica group's Raft agrees on, entry by entry: which
//!   requests are delivered (each once, in its client's order), the order's time, and the
//!   windows of outcomes the replicas compare.
//! * [`calls`]: a replica's calls: who waits for which request, what to propose, what each
//!   client's last request answered.
//! * [`feed`]: what a replica executes of what the order delivers, and how it catches up by
//!   state transfer when the order's log was compacted past it.
//! * [`membership`]: how a restarted replica rejoins the group as a new member.
//! * [`dissent`]: how replicas find one whose outcomes a majority contradicts, and how a
//!   replica proves a state it took.
//! * [`course`]: the three above acting in one sequence: what a replica executes, when it takes
//!   a state, what it proposes of its outcomes, whether it may answer.
//! * [`loose`]: under LSA, which batches a replica leads and which follow the grant leader's
//!   acquisitions the order carries.
//! * [`schedule`], [`sync`], [`execute`], [`stream`]: the deterministic mutex schedulers (NPDS,
//!   PDS-1, PDS-2, LSA) that let a multithreaded service run actively replicated, and the
//!   replica threads that run batches or a stream of requests under them. Two replicas whose
//!   threads run at different speeds must acquire every mutex in the same order, or their
//!   states drift apart; a [`schedule::Scheduler`] decides that order from the threads'
//!   requests alone, never from their timing.
//! * [`recent`]: a bounded map that forgets the entries used longest ago.

pub mod calls;
pub mod course;
pub mod dissent;
pub mod execute;
pub mod feed;
pub mod loose;
pub mod membership;
pub mod order;
pub mod recent;
pub mod schedule;
pub mod stream;
pub mod sync;
