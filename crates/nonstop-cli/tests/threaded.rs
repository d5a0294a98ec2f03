//! A multithreaded service actively replicated end to end, under each deterministic scheduler:
//! three node processes each run the survey's synthetic server on four worker threads, its
//! clients vote on every reply, and the replies depend on the order in which the threads took
//! the mutexes. So every call decided by a majority, and every replica auditing to the same
//! state, says the replicas' schedulers agreed, whatever their threads' timing. A replica
//! paused past the order's compacted log takes a live replica's snapshot and counts again.

use nonstop::Client;
use nonstop::sync::Scheduler;
use nonstop_node::status::ReplicaStanding;
use nonstop_proto::client::ReplyMode;
use nonstop_testbed::cluster::{ClusterSpec, LocalCluster};
use nonstop_workloads::survey;
use rustix::process::Signal;
use std::time::Duration;

/// Entries the order's log keeps between compactions.
const ORDER_LOG_ENTRIES: u64 = 16;

/// Append messages a Raft leader sends a follower before it waits for its answers (raft-rs's
/// `max_inflight_msgs`).
const UNANSWERED_APPENDS: u64 = 256;

/// Client threads calling at once, so that the order's entries hold several requests and the
/// worker threads contend for the mutexes.
const CLIENTS: u64 = 4;

/// `rounds` calls by each of the clients at once; every one must be decided.
fn load(cluster: &LocalCluster, rounds: u64, from: u64) {
    std::thread::scope(|scope| {
        for id in 1..=CLIENTS {
            let addrs = cluster.client_addrs();
            scope.spawn(move || {
                let mut client = Client::new(addrs, id);
                client.resume(survey::NAME, from + 1);
                for round in from..from + rounds {
                    let seed = survey::mix(id << 32 | round);
                    client
                        .call::<u64, u64>(survey::NAME, &seed)
                        .unwrap_or_else(|error| panic!("client {id}, round {round}: {error}"));
                }
            });
        }
    });
}

/// Every replica in `nodes` audits to the same state, remembering each client's `calls`
/// requests applied once each.
fn audit(cluster: &LocalCluster, nodes: &[usize], calls: u64) {
    // A majority decided the last calls; a replica may still be executing them.
    let ids: Vec<u64> = nodes.iter().map(|node| *node as u64).collect();
    let executed = cluster.wait_statuses(&ids, Duration::from_secs(10), |statuses| {
        statuses.iter().flat_map(|s| &s.replicas).all(|r| r.position == CLIENTS * calls)
    });
    assert!(executed.is_some(), "replicas {nodes:?} executed every call:\n{}", cluster.post_mortem(40));
    let clients: Vec<u64> = (1..=CLIENTS).collect();
    let query = postcard::to_allocvec(&()).unwrap();
    let audits: Vec<_> = nodes
        .iter()
        .map(|node| {
            let addr = cluster.client_addrs()[node - 1];
            let audit = Client::new(vec![addr], 99).audit(survey::NAME, clients.clone(), Some(query.clone())).unwrap();
            (audit.check, audit.clients, audit.answer)
        })
        .collect();
    assert!(audits.windows(2).all(|pair| pair[0] == pair[1]), "replicas differ: {audits:#?}");
    let (check, memory, _) = &audits[0];
    assert!(check.is_ok(), "{check:?}");
    for (client, memory) in memory {
        let memory = memory.as_ref().unwrap_or_else(|| panic!("client {client} remembered"));
        assert_eq!((memory.request, memory.applied), (calls, calls), "client {client}");
    }
}

fn replicated_under(scheduler: Scheduler, prefix: &str) {
    let table: toml::Table = toml::from_str("io_us = 100\ncompute_us = 2").unwrap();
    let spec = ClusterSpec {
        ip_prefix: prefix.into(),
        region_size_mib: 4,
        kind: survey::NAME.into(),
        settings: table,
        services: vec![(survey::NAME.into(), 1)],
        active: Some(ReplyMode::Majority),
        threads: Some((scheduler, 4)),
        order_log_entries: Some(ORDER_LOG_ENTRIES),
        ..ClusterSpec::default()
    };
    let mut cluster = LocalCluster::create(std::path::Path::new(env!("CARGO_BIN_EXE_nonstop")), &spec).unwrap();
    cluster.start_all().unwrap();
    load(&cluster, 10, 0);
    audit(&cluster, &[1, 2, 3], 10);
    let table = nonstop_testbed::status::render(&cluster.operator().statuses(Duration::from_secs(1)));
    let shown = format!("actively replicated, 4 worker threads under {}", scheduler.name());
    assert!(table.contains(&shown), "{table}");
    // Paused while far more entries are ordered than the leader sends a follower unanswered
    // (raft-rs's 256 messages: those wait in the paused node's socket, and it catches up from
    // them) and than the log keeps: node 3 must take a live replica's snapshot. Calls gather
    // into fewer entries the busier the replicas are, so the load goes on until enough were.
    cluster.signal(3, Signal::STOP).unwrap();
    let applied = |cluster: &LocalCluster| {
        let statuses = cluster.operator().statuses(Duration::from_secs(1));
        statuses.iter().flat_map(|(_, _, s)| s).flat_map(|s| &s.replicas).map(|r| r.applied_index).max().unwrap_or(0)
    };
    let paused_at = applied(&cluster);
    let mut rounds = 10;
    while rounds < 50 || applied(&cluster) < paused_at + UNANSWERED_APPENDS + 4 * ORDER_LOG_ENTRIES {
        assert!(rounds < 2_000, "the order did not move on without node 3:\n{}", cluster.post_mortem(40));
        load(&cluster, 10, rounds);
        rounds += 10;
    }
    cluster.signal(3, Signal::CONT).unwrap();
    let caught_up = cluster.wait_statuses(&[3], Duration::from_secs(20), |statuses| {
        statuses
            .iter()
            .flat_map(|s| &s.replicas)
            .any(|r| r.state_transfers >= 1 && r.standing == ReplicaStanding::Serving)
    });
    assert!(caught_up.is_some(), "node 3 took a snapshot and serves:\n{}", cluster.post_mortem(40));
    load(&cluster, 5, rounds);
    // Node 3 counts now: without node 1, nodes 2 and 3 are the majority.
    cluster.kill(1).unwrap();
    load(&cluster, 5, rounds + 5);
    audit(&cluster, &[2, 3], rounds + 10);
}

#[test]
fn npds_replicas_agree_and_a_paused_one_takes_a_snapshot() {
    replicated_under(Scheduler::Npds, "127.0.31");
}

#[test]
fn pds1_replicas_agree_and_a_paused_one_takes_a_snapshot() {
    replicated_under(Scheduler::Pds1, "127.0.32");
}

#[test]
fn pds2_replicas_agree_and_a_paused_one_takes_a_snapshot() {
    replicated_under(Scheduler::Pds2, "127.0.33");
}

/// Under LSA the node that leads the order group leads the acquisitions too; killing it
/// (node 1 founds the group and leads it first) hands the lead to the next order leader.
#[test]
fn lsa_replicas_follow_their_leaders_acquisitions_and_a_paused_one_takes_a_snapshot() {
    replicated_under(Scheduler::Lsa, "127.0.35");
}

/// A bit flipped in one replica's state (its threads' shared values, behind the scheduler) is
/// masked by the clients' votes and found by the replicas' digests; the replica takes a live
/// replica's snapshot, and nothing is lost or applied twice.
#[test]
fn chaos_flips_in_a_replicas_threaded_state_are_found_and_masked() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_nonstop"))
        .args(["chaos", "kill", "--replication", "active", "--kind", "survey", "--scheduler", "npds"])
        .args(["--fault", "flip-memory", "--trials", "2", "--seed", "5", "--clients", "4", "--json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    for field in ["acked_lost", "applied_twice", "replicas_disagree", "no_answer_after_kill", "not_back"] {
        assert_eq!(report[field], 0, "{field}: {report}");
    }
    let memory = &report["error_injection"]["replica-memory"];
    assert_eq!((memory["injected"].as_u64(), memory["detected"].as_u64()), (Some(2), Some(2)), "{report}");
    assert_eq!(memory["catastrophic"], 0, "{report}");
}
