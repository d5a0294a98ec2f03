//! The history of client operations and the checker that judges it, in the spirit of Jepsen:
//! every operation is recorded as invoked, then ok, fail or unknown, with the times it was
//! invoked and answered; after the run the checker compares the history with itself and with the
//! service's final state.
//!
//! The bank makes the checks exact. Client `c` owns account `c - 1` and numbers its transfers
//! 1, 2, 3, …; their amounts follow from `(c, number)` ([`crate::delta_of`]). So a state
//! that remembers request `R` for `c` must show exactly the balance of requests `1..=R`, and the
//! answer to request `r` must be that of `1..=r`. The checker reports:
//!
//! * **acked_lost**: acknowledged transfers missing from the final state;
//! * **applied_twice**: transfers applied more than once (the service's own count, or a balance
//!   that only a doubled or half-applied transfer explains);
//! * **wrong_answers**: an answer whose balance is not the one its request number implies;
//! * **stale_reads**: a read that missed a transfer acknowledged before the read was invoked;
//! * **reads_taken_back**: a read that saw a transfer the service later forgot — state that a
//!   failover took back;
//! * **split_brain**: replies released for the same service by two nodes at overlapping times —
//!   two nodes answering in one term, or an older term answering a request invoked after a newer
//!   term had already answered. This is passive replication's rule ([`Answers::OnePrimary`]);
//!   an actively replicated service's answers are the votes of its replicas, all of which answer
//!   in every term ([`Answers::Voted`]): replicas that went apart show as wrong answers, reads
//!   taken back, or replicas whose states differ, which the caller compares.

mod amounts;

pub use amounts::{ExpectedBalances, delta_of, expected_balance};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

/// What an operation asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Transfer number `request` of the client into its account.
    Transfer {
        /// The request number.
        request: u64,
        /// The amount.
        delta: i64,
    },
    /// Read what the service remembers of the client and its account's balance.
    Read,
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Answered by `node` in `term`.
    Ok {
        /// The term of the primary that answered.
        term: u64,
        /// The node that answered (its client address).
        node: SocketAddr,
        /// The last request the service had applied for the client (for a transfer: its own).
        request: u64,
        /// The account's balance in the answer.
        balance: i64,
    },
    /// Refused: certainly not applied.
    Fail {
        /// Why.
        reason: String,
    },
    /// No answer: it may or may not have been applied.
    Unknown {
        /// The last problem seen.
        reason: String,
    },
}

/// One operation of one client process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Operation {
    /// The process that issued it (a client or a reader thread).
    pub process: u64,
    /// The client whose state it concerns.
    pub client: u64,
    /// What it asked.
    pub op: Op,
    /// When it was invoked, in µs from the start of the history.
    pub invoked_us: u64,
    /// When it ended, in µs from the start of the history.
    pub completed_us: u64,
    /// How it ended.
    pub outcome: Outcome,
}

impl Operation {
    fn ok(&self) -> Option<(u64, SocketAddr, u64, i64)> {
        match self.outcome {
            Outcome::Ok { term, node, request, balance } => Some((term, node, request, balance)),
            _ => None,
        }
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |us: u64| us as f64 / 1e3;
        write!(f, "{:>10.3} ms  process {:>3} ", ms(self.invoked_us), self.process)?;
        match self.op {
            Op::Transfer { request, delta } => write!(f, "transfer #{request} ({delta:+}) of client {}", self.client)?,
            Op::Read => write!(f, "read of client {}", self.client)?,
        }
        match &self.outcome {
            Outcome::Ok { term, node, request, balance } => write!(
                f,
                " -> ok at {:.3} ms: term {term} from {node}, last request {request}, balance {balance}",
                ms(self.completed_us)
            ),
            Outcome::Fail { reason } => write!(f, " -> fail at {:.3} ms: {reason}", ms(self.completed_us)),
            Outcome::Unknown { reason } => write!(f, " -> unknown at {:.3} ms: {reason}", ms(self.completed_us)),
        }
    }
}

/// What the service remembers of a client at the end (from an audit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FinalState {
    /// The last request applied (0: none).
    pub request: u64,
    /// Requests applied in all.
    pub applied: u64,
    /// The client's account's balance.
    pub balance: i64,
}

/// Counts per kind of violation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Violations {
    /// Acknowledged transfers missing from the final state.
    pub acked_lost: u64,
    /// Transfers applied more than once.
    pub applied_twice: u64,
    /// Answers whose balance contradicts their request number.
    pub wrong_answers: u64,
    /// Reads that missed a transfer acknowledged before they were invoked.
    pub stale_reads: u64,
    /// Reads that saw state the service later forgot.
    pub reads_taken_back: u64,
    /// Replies released by two nodes at overlapping times.
    pub split_brain: u64,
}

impl Violations {
    /// All violations.
    pub fn total(&self) -> u64 {
        self.acked_lost
            + self.applied_twice
            + self.wrong_answers
            + self.stale_reads
            + self.reads_taken_back
            + self.split_brain
    }
}

impl std::ops::AddAssign for Violations {
    fn add_assign(&mut self, other: Violations) {
        self.acked_lost += other.acked_lost;
        self.applied_twice += other.applied_twice;
        self.wrong_answers += other.wrong_answers;
        self.stale_reads += other.stale_reads;
        self.reads_taken_back += other.reads_taken_back;
        self.split_brain += other.split_brain;
    }
}

/// One violation, with the least history that shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Example {
    /// The kind (a field name of [`Violations`]).
    pub kind: &'static str,
    /// What is wrong.
    pub explanation: String,
    /// The operations that show it, by invocation time.
    pub history: Vec<Operation>,
}

/// Operation counts by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Transfers answered.
    pub transfers_ok: u64,
    /// Reads answered.
    pub reads_ok: u64,
    /// Operations refused.
    pub failed: u64,
    /// Operations without an answer.
    pub unknown: u64,
}

/// The checker's verdict on one history.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckReport {
    /// Operations by outcome.
    pub operations: Counts,
    /// Violations by kind.
    pub violations: Violations,
    /// Up to [`EXAMPLES_PER_KIND`] examples of each kind found.
    pub examples: Vec<Example>,
}

/// How many examples of each kind a report keeps.
pub const EXAMPLES_PER_KIND: usize = 3;

/// Operations of the same client shown around a violation, on each side.
const CONTEXT: usize = 4;

impl CheckReport {
    /// A few lines for people: the counts, then each example with its history.
    pub fn summary(&self) -> String {
        let v = &self.violations;
        let o = &self.operations;
        let mut text = format!(
            "history: {} transfers and {} reads answered, {} refused, {} without answer\n\
             violations: {} (acked_lost {}, applied_twice {}, wrong_answers {}, stale_reads {}, reads_taken_back {}, split_brain {})\n",
            o.transfers_ok,
            o.reads_ok,
            o.failed,
            o.unknown,
            v.total(),
            v.acked_lost,
            v.applied_twice,
            v.wrong_answers,
            v.stale_reads,
            v.reads_taken_back,
            v.split_brain
        );
        for example in &self.examples {
            text += &format!("{}: {}\n", example.kind, example.explanation);
            for op in &example.history {
                text += &format!("    {op}\n");
            }
        }
        text
    }
}

struct Checker<'a> {
    by_client: BTreeMap<u64, Vec<&'a Operation>>,
    report: CheckReport,
}

impl<'a> Checker<'a> {
    fn found(&mut self, kind: &'static str, count: u64, explanation: String, history: Vec<Operation>) {
        let v = &mut self.report.violations;
        match kind {
            "acked_lost" => v.acked_lost += count,
            "applied_twice" => v.applied_twice += count,
            "wrong_answers" => v.wrong_answers += count,
            "stale_reads" => v.stale_reads += count,
            "reads_taken_back" => v.reads_taken_back += count,
            "split_brain" => v.split_brain += count,
            _ => unreachable!("unknown violation kind {kind}"),
        }
        if self.report.examples.iter().filter(|e| e.kind == kind).count() < EXAMPLES_PER_KIND {
            self.report.examples.push(Example { kind, explanation, history });
        }
    }

    /// The client's operations around `op` (or its last ones if `op` is `None`).
    fn around(&self, client: u64, op: Option<&Operation>) -> Vec<Operation> {
        let ops = self.by_client.get(&client).map(Vec::as_slice).unwrap_or_default();
        let at = op.and_then(|op| ops.iter().position(|o| *o == op)).unwrap_or(ops.len().saturating_sub(1));
        ops[at.saturating_sub(CONTEXT)..(at + CONTEXT + 1).min(ops.len())].iter().map(|o| (*o).clone()).collect()
    }
}

/// Who answers a service's clients, which decides what split brain is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answers {
    /// One primary per term (passive replication): two nodes answering in a term is split brain.
    OnePrimary,
    /// Every replica, its answers voted on by the client (active replication): a reply's node is
    /// the replica whose vote won, and any replica may win in any term.
    Voted,
}

/// Checks `history` (every client's operations) against itself and against `finals`, what the
/// service remembers of each client at the end, for a service with one primary per term.
pub fn check(history: &[Operation], finals: &BTreeMap<u64, FinalState>) -> CheckReport {
    check_answers(history, finals, Answers::OnePrimary)
}

/// [`check`], for a service answered as `answers` says.
pub fn check_answers(history: &[Operation], finals: &BTreeMap<u64, FinalState>, answers: Answers) -> CheckReport {
    let mut sorted: Vec<&Operation> = history.iter().collect();
    sorted.sort_by_key(|o| (o.invoked_us, o.process));
    let mut checker = Checker { by_client: BTreeMap::new(), report: CheckReport::default() };
    for op in &sorted {
        checker.by_client.entry(op.client).or_default().push(op);
        let counts = &mut checker.report.operations;
        match (&op.outcome, op.op) {
            (Outcome::Ok { .. }, Op::Transfer { .. }) => counts.transfers_ok += 1,
            (Outcome::Ok { .. }, Op::Read) => counts.reads_ok += 1,
            (Outcome::Fail { .. }, _) => counts.failed += 1,
            (Outcome::Unknown { .. }, _) => counts.unknown += 1,
        }
    }
    let clients: Vec<u64> = checker.by_client.keys().copied().collect();
    for client in clients {
        check_client(&mut checker, client, finals.get(&client).copied().unwrap_or_default());
    }
    if answers == Answers::OnePrimary {
        check_split_brain(&mut checker, &sorted);
    }
    checker.report
}

fn check_client(checker: &mut Checker<'_>, client: u64, last: FinalState) {
    let ops = checker.by_client[&client].clone();
    let mut expected = ExpectedBalances::new(client);
    // Answers must match their request numbers.
    for op in &ops {
        if let Some((_, _, request, balance)) = op.ok()
            && balance != expected.after(request)
        {
            let explanation = format!(
                "client {client}'s answer shows balance {balance} after request {request}; exactly-once application gives {}",
                expected.after(request)
            );
            checker.found("wrong_answers", 1, explanation, checker.around(client, Some(op)));
        }
    }
    // The final state against what was acknowledged and what was read.
    let acked = ops.iter().filter(|o| matches!(o.op, Op::Transfer { .. })).filter_map(|o| o.ok().map(|ok| (ok.2, *o)));
    if let Some((request, op)) = acked.max_by_key(|(request, _)| *request)
        && last.request < request
    {
        let explanation = format!(
            "client {client}'s transfer #{request} was acknowledged but the service remembers only up to #{}",
            last.request
        );
        checker.found("acked_lost", request - last.request, explanation, checker.around(client, Some(op)));
    }
    if last.applied > last.request {
        let explanation =
            format!("client {client}: {} transfers applied for {} request numbers", last.applied, last.request);
        checker.found("applied_twice", last.applied - last.request, explanation, checker.around(client, None));
    } else if last.balance != expected.after(last.request) {
        let explanation = format!(
            "client {client}'s account holds {} after request {}; exactly-once application gives {}",
            last.balance,
            last.request,
            expected.after(last.request)
        );
        checker.found("applied_twice", 1, explanation, checker.around(client, None));
    }
    // Reads: never below what was acknowledged before them, never above what survives.
    let mut acked_before: Vec<(u64, u64)> = ops
        .iter()
        .filter(|o| matches!(o.op, Op::Transfer { .. }))
        .filter_map(|o| o.ok().map(|ok| (o.completed_us, ok.2)))
        .collect();
    acked_before.sort();
    let mut best = 0;
    for entry in &mut acked_before {
        best = best.max(entry.1);
        entry.1 = best;
    }
    let mut reads: Vec<&Operation> = ops.iter().copied().filter(|o| o.op == Op::Read && o.ok().is_some()).collect();
    reads.sort_by_key(|o| o.completed_us);
    // For "a later read saw less": reads by invocation, and from each one on, the read that saw
    // the lowest request — so each read finds the lowest later one by a binary search, not by
    // scanning every later read (a ten-minute soak has tens of thousands per client).
    let mut by_invocation = reads.clone();
    by_invocation.sort_by_key(|o| o.invoked_us);
    let mut lowest_from: Vec<(u64, &Operation)> = Vec::with_capacity(by_invocation.len());
    for read in by_invocation.iter().rev() {
        let seen = (read.ok().expect("filtered on ok").2, *read);
        let lowest = lowest_from.last().map_or(seen, |&low| if seen.0 <= low.0 { seen } else { low });
        lowest_from.push(lowest);
    }
    lowest_from.reverse();
    for read in &reads {
        let seen = read.ok().expect("filtered on ok").2;
        let at = acked_before.partition_point(|(completed, _)| *completed < read.invoked_us);
        let must_see = if at == 0 { 0 } else { acked_before[at - 1].1 };
        if seen < must_see {
            let explanation = format!(
                "client {client}: a read saw request #{seen}, but #{must_see} had been acknowledged before the read began"
            );
            checker.found("stale_reads", 1, explanation, checker.around(client, Some(read)));
        }
        let first_later = by_invocation.partition_point(|later| later.invoked_us <= read.completed_us);
        let later_low = lowest_from.get(first_later).copied();
        let taken_back = match later_low {
            Some((request, later)) if request < seen => Some((request, Some(later))),
            _ if last.request < seen => Some((last.request, None)),
            _ => None,
        };
        if let Some((request, later)) = taken_back {
            let explanation = match later {
                Some(_) => format!("client {client}: a read saw request #{seen}, a later read only #{request}"),
                None => format!("client {client}: a read saw request #{seen}, the final state only #{request}"),
            };
            let mut history = checker.around(client, Some(read));
            if let Some(later) = later {
                history.extend(checker.around(client, Some(later)));
                history.sort_by_key(|o| o.invoked_us);
                history.dedup();
            }
            checker.found("reads_taken_back", 1, explanation, history);
        }
    }
}

fn check_split_brain(checker: &mut Checker<'_>, sorted: &[&Operation]) {
    // One node per term.
    let mut nodes_of_term: BTreeMap<u64, BTreeMap<SocketAddr, &Operation>> = BTreeMap::new();
    for op in sorted {
        if let Some((term, node, _, _)) = op.ok() {
            nodes_of_term.entry(term).or_default().entry(node).or_insert(op);
        }
    }
    for (term, nodes) in &nodes_of_term {
        if nodes.len() > 1 {
            let names: BTreeSet<String> = nodes.keys().map(|n| n.to_string()).collect();
            let explanation = format!("term {term} was answered by {} nodes: {names:?}", nodes.len());
            let history = nodes.values().map(|o| (*o).clone()).collect();
            checker.found("split_brain", nodes.len() as u64 - 1, explanation, history);
        }
    }
    // No older term answers what was invoked after a newer term had answered: the first answer
    // of each term, and for every term the earliest answer of any newer one.
    let mut first_of_term: BTreeMap<u64, &Operation> = BTreeMap::new();
    for op in sorted {
        if let Some((term, ..)) = op.ok() {
            let first = first_of_term.entry(term).or_insert(op);
            if op.completed_us < first.completed_us {
                *first = op;
            }
        }
    }
    let mut earliest_newer: BTreeMap<u64, &Operation> = BTreeMap::new();
    let mut best: Option<&Operation> = None;
    for (term, first) in first_of_term.iter().rev() {
        if let Some(best) = best {
            earliest_newer.insert(*term, best);
        }
        if best.is_none_or(|b| first.completed_us < b.completed_us) {
            best = Some(first);
        }
    }
    for op in sorted {
        let Some((term, ..)) = op.ok() else { continue };
        if let Some(newer) = earliest_newer.get(&term)
            && op.invoked_us > newer.completed_us
        {
            let (newer_term, newer_node, ..) = newer.ok().expect("only answered operations");
            let (_, node, ..) = op.ok().expect("answered");
            let explanation = format!(
                "{node} answered in term {term} a request invoked after {newer_node} had answered in term {newer_term}"
            );
            checker.found("split_brain", 1, explanation, vec![(*newer).clone(), (*op).clone()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expected_balance;

    fn node(n: u8) -> SocketAddr {
        SocketAddr::from(([10, 77, 0, n], 7101))
    }

    fn transfer(client: u64, request: u64, at: u64, term: u64, from: u8) -> Operation {
        Operation {
            process: client,
            client,
            op: Op::Transfer { request, delta: crate::delta_of(client, request) },
            invoked_us: at,
            completed_us: at + 10,
            outcome: Outcome::Ok { term, node: node(from), request, balance: expected_balance(client, request) },
        }
    }

    fn read(client: u64, seen: u64, at: u64, term: u64, from: u8) -> Operation {
        Operation {
            process: 100,
            client,
            op: Op::Read,
            invoked_us: at,
            completed_us: at + 10,
            outcome: Outcome::Ok { term, node: node(from), request: seen, balance: expected_balance(client, seen) },
        }
    }

    fn finals(client: u64, request: u64) -> BTreeMap<u64, FinalState> {
        let state = FinalState { request, applied: request, balance: expected_balance(client, request) };
        BTreeMap::from([(client, state)])
    }

    /// A soak's worth of operations — a million transfers and as many reads of one client —
    /// is checked in linear-logarithmic time (this test would not finish otherwise).
    #[test]
    fn a_soak_sized_history_is_checked_quickly() {
        let transfers = 1_000_000u64;
        let mut balances = ExpectedBalances::new(1);
        let mut ops = Vec::new();
        for request in 1..=transfers {
            // Built here, not with the helpers: they sum the balance from request 1 each time.
            let outcome = Outcome::Ok { term: 1, node: node(1), request, balance: balances.after(request) };
            let op = Op::Transfer { request, delta: crate::delta_of(1, request) };
            let at = request * 100;
            let (invoked_us, completed_us) = (at, at + 10);
            ops.push(Operation { process: 1, client: 1, op, invoked_us, completed_us, outcome: outcome.clone() });
            let (invoked_us, completed_us) = (at + 20, at + 30);
            ops.push(Operation { process: 100, client: 1, op: Op::Read, invoked_us, completed_us, outcome });
        }
        let started = std::time::Instant::now();
        let report = check(&ops, &finals(1, transfers));
        assert_eq!(report.violations.total(), 0, "{}", report.summary());
        assert_eq!(report.operations.reads_ok, transfers);
        eprintln!("checked {} operations in {:?}", ops.len(), started.elapsed());
    }

    fn history(ops: usize) -> Vec<Operation> {
        (1..=ops as u64).map(|r| transfer(1, r, r * 100, 1 + r / 4, 1 + (r / 4) as u8)).collect()
    }

    #[test]
    fn a_clean_history_has_no_violation() {
        let mut ops = history(10);
        ops.push(read(1, 10, 2000, 3, 3));
        ops.push(Operation { outcome: Outcome::Unknown { reason: "timeout".into() }, ..transfer(1, 11, 3000, 3, 3) });
        let report = check(&ops, &finals(1, 11));
        assert_eq!(report.violations, Violations::default(), "{}", report.summary());
        assert_eq!(report.operations, Counts { transfers_ok: 10, reads_ok: 1, failed: 0, unknown: 1 });
    }

    #[test]
    fn a_lost_acknowledged_transfer_is_found() {
        let report = check(&history(10), &finals(1, 8));
        assert_eq!(report.violations.acked_lost, 2, "{}", report.summary());
        assert_eq!(report.violations.total(), 2);
        assert!(report.examples[0].history.iter().any(|o| matches!(o.op, Op::Transfer { request: 10, .. })));
    }

    #[test]
    fn doubled_transfers_are_found_by_count_and_by_balance() {
        let mut doubled = finals(1, 10);
        doubled.get_mut(&1).unwrap().applied = 11;
        assert_eq!(check(&history(10), &doubled).violations.applied_twice, 1);
        let mut off = finals(1, 10);
        off.get_mut(&1).unwrap().balance += crate::delta_of(1, 7);
        assert_eq!(check(&history(10), &off).violations.applied_twice, 1);
    }

    #[test]
    fn an_answer_with_the_wrong_balance_is_found() {
        let mut ops = history(5);
        if let Outcome::Ok { balance, .. } = &mut ops[2].outcome {
            *balance += 1;
        }
        assert_eq!(check(&ops, &finals(1, 5)).violations.wrong_answers, 1);
    }

    #[test]
    fn a_read_missing_an_acknowledged_transfer_is_stale() {
        let mut ops = history(5);
        ops.push(read(1, 3, 600, 2, 2));
        let report = check(&ops, &finals(1, 5));
        assert_eq!(report.violations.stale_reads, 1, "{}", report.summary());
    }

    #[test]
    fn a_read_of_state_later_forgotten_is_taken_back() {
        // The read saw request 7 (applied, never acknowledged); a failover lost it: the final
        // state and a later read remember only 6.
        let mut ops = history(6);
        ops.push(read(1, 7, 700, 2, 2));
        ops.push(read(1, 6, 900, 3, 3));
        let report = check(&ops, &finals(1, 6));
        assert_eq!(report.violations.reads_taken_back, 1, "{}", report.summary());
        assert_eq!(report.violations.total(), 1);
    }

    #[test]
    fn two_nodes_in_one_term_or_an_old_term_answering_late_is_split_brain() {
        let mut ops = history(4);
        ops.push(transfer(2, 1, 150, 1, 2));
        let report = check(&ops, &BTreeMap::from([(1, finals(1, 4)[&1]), (2, finals(2, 1)[&2])]));
        assert_eq!(report.violations.split_brain, 1, "{}", report.summary());
        // Term 2 answered at 410 µs; term 1 then answers a request invoked at 500 µs.
        let mut ops = history(4);
        ops.push(transfer(2, 1, 500, 1, 1));
        let report = check(&ops, &BTreeMap::from([(1, finals(1, 4)[&1]), (2, finals(2, 1)[&2])]));
        assert_eq!(report.violations.split_brain, 1, "{}", report.summary());
        // Invoked before term 2 answered: the old primary may still release it.
        let mut ops = history(4);
        ops.push(transfer(2, 1, 405, 1, 1));
        let report = check(&ops, &BTreeMap::from([(1, finals(1, 4)[&1]), (2, finals(2, 1)[&2])]));
        assert_eq!(report.violations.split_brain, 0, "{}", report.summary());
    }

    #[test]
    fn voted_answers_of_several_replicas_in_one_term_are_no_split_brain_but_still_checked() {
        let mut ops = history(4);
        ops.push(transfer(2, 1, 150, 1, 2));
        let both = BTreeMap::from([(1, finals(1, 4)[&1]), (2, finals(2, 1)[&2])]);
        let report = check_answers(&ops, &both, Answers::Voted);
        assert_eq!(report.violations.total(), 0, "{}", report.summary());
        // A lost transfer is lost whoever answered.
        let report =
            check_answers(&ops, &BTreeMap::from([(1, finals(1, 3)[&1]), (2, finals(2, 1)[&2])]), Answers::Voted);
        assert_eq!(report.violations.acked_lost, 1, "{}", report.summary());
    }
}
