//! Three control nodes (five in one test) on a deterministic in-memory network: elections,
//! proposals from any node, crashes with restarts from the durable log, partitions, and one
//! promotion per term.

use nonstop_control::cluster::{Applied, Command, NodeId, PromotionReason};
use nonstop_control::log::{FileLog, MemoryLog, RaftLog};
use nonstop_control::{ControlConfig, ControlNode};
use nonstop_proto::{CheckpointId, Term};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

struct Net {
    nodes: BTreeMap<u64, Option<ControlNode>>,
    disks: BTreeMap<u64, MemoryLog>,
    queue: VecDeque<(u64, u64, Vec<u8>)>,
    cut: BTreeSet<(u64, u64)>,
    applied: BTreeMap<u64, Vec<Applied>>,
    compact_every: u64,
    size: u64,
}

fn voters() -> Vec<NodeId> {
    voters_of(3)
}

fn voters_of(size: u64) -> Vec<NodeId> {
    (1..=size).map(NodeId).collect()
}

impl Net {
    fn new() -> Net {
        Net::with_compaction(1024)
    }

    fn with_compaction(compact_every: u64) -> Net {
        Net::of(3, compact_every)
    }

    fn of(size: u64, compact_every: u64) -> Net {
        let mut net = Net {
            nodes: BTreeMap::new(),
            disks: BTreeMap::new(),
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            applied: BTreeMap::new(),
            compact_every,
            size,
        };
        for id in 1..=size {
            net.disks.insert(id, MemoryLog::default());
            net.start(id);
        }
        net
    }

    fn start(&mut self, id: u64) {
        let log: Box<dyn RaftLog> = Box::new(self.disks[&id].clone());
        let config =
            ControlConfig { compact_every: self.compact_every, ..ControlConfig::new(NodeId(id), voters_of(self.size)) };
        let node = ControlNode::new(config, log).unwrap();
        self.nodes.insert(id, Some(node));
        self.applied.insert(id, Vec::new());
    }

    fn crash(&mut self, id: u64) {
        self.nodes.insert(id, None);
        self.queue.retain(|(_, to, _)| *to != id);
    }

    fn node(&mut self, id: u64) -> &mut ControlNode {
        self.nodes.get_mut(&id).unwrap().as_mut().expect("node is up")
    }

    fn isolate(&mut self, id: u64) {
        for other in 1..=self.size {
            if other != id {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
    }

    fn poll(&mut self, id: u64) {
        let Some(Some(node)) = self.nodes.get_mut(&id) else { return };
        let output = node.poll().unwrap();
        self.applied.get_mut(&id).unwrap().extend(output.applied);
        for (to, bytes) in output.messages {
            self.queue.push_back((id, to.0, bytes));
        }
    }

    fn deliver(&mut self) {
        while let Some((from, to, bytes)) = self.queue.pop_front() {
            if self.cut.contains(&(from, to)) {
                continue;
            }
            if let Some(Some(node)) = self.nodes.get_mut(&to) {
                node.step(&bytes).unwrap();
                self.poll(to);
            }
        }
    }

    fn run(&mut self, ticks: usize) {
        for _ in 0..ticks {
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            for id in ids {
                if let Some(Some(node)) = self.nodes.get_mut(&id) {
                    node.tick();
                }
                self.poll(id);
            }
            self.deliver();
        }
    }

    fn leader(&self) -> Option<u64> {
        self.nodes.values().flatten().find(|n| n.is_leader()).map(|n| n.id().0)
    }

    fn propose(&mut self, via: u64, command: &Command) {
        self.node(via).propose(command).unwrap();
        self.poll(via);
        self.deliver();
    }
}

fn create() -> Command {
    Command::CreateService { service: "bank".into(), primary: NodeId(1), backups_wanted: 1, min_backups: 0 }
}

fn add(node: u64) -> Command {
    Command::AddBackup {
        service: "bank".into(),
        term: Term(1),
        node: NodeId(node),
        version: if node == 3 { 2 } else { 1 },
    }
}

fn promote(node: u64) -> Command {
    Command::Promote {
        service: "bank".into(),
        from_term: Term(1),
        node: NodeId(node),
        checkpoint: CheckpointId(5),
        reason: PromotionReason::Failover,
    }
}

#[test]
fn a_leader_is_elected_and_a_follower_proposal_applies_everywhere() {
    let mut net = Net::new();
    net.run(40);
    let leader = net.leader().expect("a leader within 40 ticks");
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    net.propose(follower, &create());
    net.run(5);
    for id in 1..=3 {
        let record = net.node(id).state().service("bank").cloned().expect("applied on every node");
        assert_eq!(record.primary, NodeId(1));
    }
}

#[test]
fn only_one_of_two_competing_promotions_wins_on_every_node() {
    let mut net = Net::new();
    net.run(40);
    let leader = net.leader().unwrap();
    net.propose(leader, &create());
    net.propose(leader, &add(2));
    net.propose(leader, &add(3));
    net.run(5);
    // Two nodes each ask to be promoted from term 1, through different proposers.
    net.propose(2, &promote(2));
    net.propose(3, &promote(3));
    net.run(5);
    let records: Vec<_> = (1..=3).map(|id| net.node(id).state().service("bank").cloned().unwrap()).collect();
    assert!(records.iter().all(|r| r == &records[0]), "every node applied the same outcome");
    assert_eq!(records[0].term, Term(2));
    let wins =
        net.applied[&1].iter().filter(|a| matches!(a.command, Command::Promote { .. }) && a.outcome.is_ok()).count();
    assert_eq!(wins, 1, "one promotion per term");
}

#[test]
fn a_crashed_leader_is_replaced_and_rejoins_from_its_log() {
    let mut net = Net::new();
    net.run(40);
    let old = net.leader().unwrap();
    net.propose(old, &create());
    net.run(3);
    net.crash(old);
    net.run(60);
    let new = net.leader().expect("the two survivors elect a leader");
    assert_ne!(new, old);
    net.propose(new, &add(2));
    net.run(3);
    net.start(old);
    net.run(30);
    let state = net.node(old).state().clone();
    assert_eq!(state.service("bank").unwrap().backups, vec![NodeId(2)], "the restarted node caught up");
    assert_eq!(Some(&state), net.nodes[&new].as_ref().map(|n| n.state()));
}

#[test]
fn a_partitioned_minority_commits_nothing() {
    let mut net = Net::new();
    net.run(40);
    let leader = net.leader().unwrap();
    net.propose(leader, &create());
    net.run(3);
    net.isolate(leader);
    // The isolated leader accepts the proposal into its log but cannot commit it.
    net.node(leader).propose(&add(3)).unwrap();
    net.run(60);
    assert!(net.node(leader).state().service("bank").unwrap().backups.is_empty());
    assert!(!net.node(leader).is_leader(), "check-quorum made the cut-off leader step down");
    let majority_leader = net.leader().expect("the majority elects its own leader");
    assert_ne!(majority_leader, leader);
    net.propose(majority_leader, &add(2));
    net.run(3);
    net.heal();
    net.run(40);
    for id in 1..=3 {
        assert_eq!(net.node(id).state().service("bank").unwrap().backups, vec![NodeId(2)], "node {id}");
    }
}

#[test]
fn a_node_restarts_from_a_file_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.log");
    let config = ControlConfig::new(NodeId(1), vec![NodeId(1)]);
    let mut node = ControlNode::new(config.clone(), Box::new(FileLog::open(&path).unwrap())).unwrap();
    node.campaign().unwrap();
    node.poll().unwrap();
    node.propose(&create()).unwrap();
    let applied = node.poll().unwrap().applied;
    assert_eq!(applied.len(), 1);
    drop(node);
    let mut node = ControlNode::new(config, Box::new(FileLog::open(&path).unwrap())).unwrap();
    node.campaign().unwrap();
    let applied = node.poll().unwrap().applied;
    assert_eq!(applied.len(), 1, "the committed command is applied again from the log");
    assert!(node.state().service("bank").is_some());
}

#[test]
fn bad_messages_are_refused_without_effect() {
    let mut net = Net::new();
    net.run(40);
    let node = net.node(1);
    assert!(node.step(b"not protobuf \xff\xff\xff").is_err());
    assert!(node.step(&[]).is_err(), "an empty message is addressed to node 0");
}

#[test]
fn a_node_far_behind_catches_up_from_a_snapshot_and_logs_stay_bounded() {
    let mut net = Net::with_compaction(16);
    net.run(40);
    let leader = net.leader().unwrap();
    net.propose(leader, &create());
    net.run(3);
    let behind = (1..=3).find(|&id| id != leader).unwrap();
    net.crash(behind);
    for request in 0..200 {
        let lease =
            Command::GrantLease { service: "bank".into(), term: Term(1), node: NodeId(1), request, fresh: false };
        net.propose(leader, &lease);
        net.run(1);
    }
    let version = net.node(leader).state().service("bank").unwrap().version;
    net.propose(leader, &Command::AddBackup { service: "bank".into(), term: Term(1), node: NodeId(2), version });
    net.run(3);
    // The leader compacted its log: far fewer records than commands.
    let records = net.disks[&leader].clone().load().unwrap().len();
    assert!(records < 100, "the durable log was compacted: {records} records");
    net.start(behind);
    net.run(40);
    let expected = net.node(leader).state().clone();
    assert_eq!(net.node(behind).state(), &expected, "caught up through the snapshot");
    assert_eq!(expected.service("bank").unwrap().backups, vec![NodeId(2)]);
    // And it restarts from its own compacted log.
    net.crash(behind);
    net.start(behind);
    net.run(40);
    assert_eq!(net.node(behind).state().service("bank"), expected.service("bank"));
}

#[test]
fn a_log_whose_commit_runs_past_its_entries_is_refused() {
    use nonstop_control::log::Record;
    let mut log = MemoryLog::default();
    log.append(&[Record::HardState { term: 1, vote: 1, commit: 5 }]).unwrap();
    let error = ControlNode::new(ControlConfig::new(NodeId(1), voters()), Box::new(log)).unwrap_err();
    assert!(error.to_string().contains("committed"), "{error}");
}

/// When the leader's process dies, the lowest surviving voter stands at once and the others
/// wait their turn. One that the first asks for its vote and refuses it, for having the longer
/// log, stands at once instead: the first cannot win, and waiting out the turn would only
/// lengthen the failover.
#[test]
fn a_survivor_with_the_longer_log_stands_when_the_first_cannot_win() {
    let mut net = Net::new();
    net.run(40);
    let old = net.leader().unwrap();
    let survivors: Vec<u64> = (1..=3).filter(|id| *id != old).collect();
    let (first, longer) = (survivors[0], survivors[1]);
    // The last entry reaches only `longer` (with the leader, a majority: it commits).
    net.cut.insert((old, first));
    net.propose(old, &create());
    net.crash(old);
    net.heal();
    for id in [first, longer] {
        net.node(id).on_leader_lost(NodeId(old), |node| node.0 != old);
    }
    net.poll(first);
    net.poll(longer);
    net.deliver();
    assert_eq!(net.leader(), Some(longer), "elected without waiting for its turn");
    net.run(3);
    assert!(net.node(first).state().service("bank").is_some(), "the entry the first missed reached it");
}

/// With five voters two survivors can refuse the first the same way: only the one whose turn
/// comes next stands at once; the other waits for its turn, else the two could split the vote
/// and leave the failover to the election timeout.
#[test]
fn only_the_survivor_next_in_turn_stands_when_the_first_cannot_win() {
    let mut net = Net::of(5, 1024);
    net.run(40);
    let old = net.leader().unwrap();
    let survivors: Vec<u64> = (1..=5).filter(|id| *id != old).collect();
    // The last entry reaches the second and the fourth in turn (with the leader, a majority).
    net.cut.insert((old, survivors[0]));
    net.cut.insert((old, survivors[2]));
    net.propose(old, &create());
    net.crash(old);
    net.heal();
    let term = net.node(survivors[0]).raft_term();
    for id in &survivors {
        net.node(*id).on_leader_lost(NodeId(old), |node| node.0 != old);
    }
    // The first's vote requests, stepped by each without anything of theirs sent yet.
    net.poll(survivors[0]);
    let requests: Vec<(u64, u64, Vec<u8>)> = net.queue.drain(..).collect();
    for (_, to, bytes) in requests.into_iter().filter(|(_, to, _)| *to != old) {
        net.node(to).step(&bytes).unwrap();
    }
    assert_eq!(net.node(survivors[1]).raft_term(), term + 2, "next in turn, refused: stands");
    assert_eq!(net.node(survivors[3]).raft_term(), term + 1, "refused too, but waits for its turn");
    for id in &survivors {
        net.poll(*id);
    }
    net.deliver();
    assert_eq!(net.leader(), Some(survivors[1]), "elected without waiting for an election timeout");
}

/// A restarted node knows which of the commands it applies again were committed before it
/// went down (what its log said), so its driver can tell replays from news.
#[test]
fn a_restarted_node_knows_what_it_replays() {
    let mut net = Net::new();
    assert_eq!(net.node(1).recovered_commit(), 0, "a fresh node replays nothing");
    net.run(40);
    let leader = net.leader().unwrap();
    net.propose(leader, &create());
    net.run(3);
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let created_at = net.applied[&follower].last().expect("the follower applied the creation").index;
    net.crash(follower);
    net.start(follower);
    assert!(net.node(follower).recovered_commit() >= created_at, "the creation is a replay");
    net.run(3);
    let replayed = net.applied[&follower].iter().find(|a| a.index == created_at).expect("applied again on restart");
    assert!(replayed.index <= net.node(follower).recovered_commit());
}
