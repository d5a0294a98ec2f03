//! Fault tests of the `kv` service through unchanged Redis clients: every client thread finds
//! the primary with the `redis` crate's Sentinel client, as an application configured for Redis
//! Sentinel would, and writes keys of its own with values it can recognise, so that the end
//! state tells every acknowledged write lost, every stale read and every increment applied
//! twice.
//!
//! Client `c` owns keys `c<c>:<k>` for `k` in `0..KEYS_PER_CLIENT`, each written only by it with
//! the client's sequence number of the write (1, 2, 3, ... over all its keys), and a counter
//! `c<c>:n` it increments. So, for each key:
//! * the final value is at least the last acknowledged write (else an acknowledged write was
//!   lost) and at most the last one attempted;
//! * a read returns at least the last write acknowledged before the read began (else it is
//!   stale), and no more than the final value (else it saw a write that was later lost);
//!
//! and the counter ends between the increments acknowledged and those attempted (above them:
//! one was applied twice). A call that got no answer (the connection broke in a failover) may
//! or may not have been applied: it counts as attempted, never as acknowledged, and the client
//! does not send it again.

use crate::history::{CheckReport, Counts, Violations};
use crate::load::{Ack, AckLog};
use anyhow::Context;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use redis::sentinel::{SentinelClient, SentinelServerType};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Keys each client owns (besides its counter).
pub const KEYS_PER_CLIENT: u64 = 8;

/// How long a client waits for a reply before it takes the call as unanswered.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// One client's history.
#[derive(Clone, Debug, Default)]
pub struct ClientHistory {
    /// Per key: the last write acknowledged and the last attempted (sequence numbers).
    pub keys: BTreeMap<u64, KeyHistory>,
    /// Increments acknowledged.
    pub increments_acked: u64,
    /// Increments sent (acknowledged or not).
    pub increments_sent: u64,
    /// Operations by outcome.
    pub counts: Counts,
    /// Reads that returned less than a write acknowledged before they began.
    pub stale_reads: u64,
    /// Reads that returned a value this client never wrote.
    pub wrong_answers: u64,
}

/// One key's writes and reads.
#[derive(Clone, Debug, Default)]
pub struct KeyHistory {
    /// The last write acknowledged (0: none).
    pub acked: u64,
    /// The last write sent.
    pub sent: u64,
    /// The highest value a read returned.
    pub read: u64,
}

/// Redis clients running against a cluster's sentinels.
pub struct RedisLoad {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<ClientHistory>>,
    acks: Arc<AckLog>,
    sentinels: Vec<SocketAddr>,
    service: String,
}

/// A connection to the primary, and the term it is primary in.
struct Primary {
    connection: redis::Connection,
    term: u64,
}

/// Finds the primary through the sentinels, connects, and learns its term from `INFO
/// replication` (its `master_replid` is the term). `None` while no primary answers.
fn connect(sentinel: &mut SentinelClient) -> Option<Primary> {
    let client = sentinel.get_client().ok()?;
    let mut connection = client.get_connection_with_timeout(CALL_TIMEOUT).ok()?;
    connection.set_read_timeout(Some(CALL_TIMEOUT)).ok()?;
    connection.set_write_timeout(Some(CALL_TIMEOUT)).ok()?;
    let info: String = redis::cmd("INFO").arg("replication").query(&mut connection).ok()?;
    let field = |name: &str| info.lines().find_map(|line| line.strip_prefix(name)).map(str::trim);
    if field("role:") != Some("master") {
        return None;
    }
    let term = u64::from_str_radix(field("master_replid:")?, 16).ok()?;
    Some(Primary { connection, term })
}

fn sentinel_client(sentinels: &[SocketAddr], service: &str) -> anyhow::Result<SentinelClient> {
    let urls: Vec<String> = sentinels.iter().map(|addr| format!("redis://{addr}")).collect();
    SentinelClient::build(urls, service.to_string(), None, SentinelServerType::Master)
        .context("building the redis crate's Sentinel client")
}

impl RedisLoad {
    /// Starts `clients` clients of service `service` through `sentinels`.
    pub fn start(sentinels: Vec<SocketAddr>, service: &str, clients: u64, seed: u64) -> anyhow::Result<RedisLoad> {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(AckLog::default());
        let mut threads = Vec::new();
        for client in 1..=clients {
            let mut sentinel = sentinel_client(&sentinels, service)?;
            let (stop, acks) = (stop.clone(), acks.clone());
            let mut rng = SmallRng::seed_from_u64(seed ^ client.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            threads.push(std::thread::spawn(move || run_client(client, &mut sentinel, &mut rng, &stop, &acks)));
        }
        Ok(RedisLoad { stop, threads, acks, sentinels, service: service.to_string() })
    }

    /// Every answer so far, with when it arrived and the term of the primary that sent it.
    pub fn acks(&self) -> &AckLog {
        &self.acks
    }

    /// Stops the clients (each finishes its call in flight), reads the final state through
    /// the sentinels, and judges the histories.
    pub fn stop(self) -> anyhow::Result<CheckReport> {
        self.stop.store(true, Ordering::SeqCst);
        let histories: Vec<(u64, ClientHistory)> = self
            .threads
            .into_iter()
            .enumerate()
            .map(|(i, thread)| (i as u64 + 1, thread.join().unwrap_or_default()))
            .collect();
        let mut sentinel = sentinel_client(&self.sentinels, &self.service)?;
        let due = Instant::now() + Duration::from_secs(10);
        let mut primary = loop {
            match connect(&mut sentinel) {
                Some(primary) => break primary,
                None if Instant::now() < due => std::thread::sleep(Duration::from_millis(20)),
                None => anyhow::bail!("no primary answered through the sentinels within 10 s"),
            }
        };
        let mut finals = BTreeMap::new();
        for (client, _) in &histories {
            let keys: Vec<String> = (0..KEYS_PER_CLIENT).map(|k| key(*client, k)).chain([counter(*client)]).collect();
            let values: Vec<Option<u64>> =
                redis::cmd("MGET").arg(&keys).query(&mut primary.connection).context("reading the final state")?;
            finals.insert(*client, values);
        }
        Ok(judge(&histories, &finals))
    }
}

fn key(client: u64, k: u64) -> String {
    format!("c{client}:{k}")
}

fn counter(client: u64) -> String {
    format!("c{client}:n")
}

fn run_client(
    client: u64,
    sentinel: &mut SentinelClient,
    rng: &mut SmallRng,
    stop: &AtomicBool,
    acks: &AckLog,
) -> ClientHistory {
    let mut history = ClientHistory::default();
    let mut primary: Option<Primary> = None;
    let mut sequence = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Some(Primary { connection, term }) = primary.as_mut() else {
            primary = connect(sentinel);
            if primary.is_none() {
                std::thread::sleep(Duration::from_millis(5));
            }
            continue;
        };
        let k = rng.random_range(0..KEYS_PER_CLIENT);
        let entry = history.keys.entry(k).or_default();
        let before = entry.acked;
        let outcome: redis::RedisResult<()> = match rng.random_range(0..10) {
            0..7 => {
                sequence += 1;
                entry.sent = sequence;
                redis::cmd("SET").arg(key(client, k)).arg(sequence).query::<()>(connection).map(|()| {
                    entry.acked = sequence;
                    history.counts.transfers_ok += 1;
                })
            }
            7 => {
                history.increments_sent += 1;
                redis::cmd("INCR").arg(counter(client)).query::<u64>(connection).map(|_| {
                    history.increments_acked += 1;
                    history.counts.transfers_ok += 1;
                })
            }
            _ => redis::cmd("GET").arg(key(client, k)).query::<Option<u64>>(connection).map(|value| {
                let value = value.unwrap_or(0);
                history.stale_reads += u64::from(value < before);
                history.wrong_answers += u64::from(value > entry.sent);
                entry.read = entry.read.max(value);
                history.counts.reads_ok += 1;
            }),
        };
        match outcome {
            Ok(()) => acks.push(Ack { at: Instant::now(), term: *term }),
            Err(_) => {
                // No answer, `-READONLY` (this node is not the primary, or was deposed after it
                // ran the call) or `-TRYAGAIN`: applied or not, unknown. Ask the sentinels again.
                history.counts.unknown += 1;
                primary = None;
            }
        }
    }
    history
}

/// The verdict on every client's history against the final values (`[key 0, ..., counter]`).
fn judge(histories: &[(u64, ClientHistory)], finals: &BTreeMap<u64, Vec<Option<u64>>>) -> CheckReport {
    let mut violations = Violations::default();
    let mut counts = Counts::default();
    for (client, history) in histories {
        let values = &finals[client];
        for (k, key) in &history.keys {
            let value = values.get(*k as usize).copied().flatten().unwrap_or(0);
            violations.acked_lost += u64::from(value < key.acked);
            violations.wrong_answers += u64::from(value > key.sent);
            violations.reads_taken_back += u64::from(key.read > value);
        }
        let increments = values.get(KEYS_PER_CLIENT as usize).copied().flatten().unwrap_or(0);
        violations.acked_lost += history.increments_acked.saturating_sub(increments);
        violations.applied_twice += increments.saturating_sub(history.increments_sent);
        violations.stale_reads += history.stale_reads;
        violations.wrong_answers += history.wrong_answers;
        counts.transfers_ok += history.counts.transfers_ok;
        counts.reads_ok += history.counts.reads_ok;
        counts.failed += history.counts.failed;
        counts.unknown += history.counts.unknown;
    }
    CheckReport { operations: counts, violations, examples: Vec::new() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_stale_and_doubled_are_told_apart() {
        let key = |acked, sent, read| KeyHistory { acked, sent, read };
        let history = ClientHistory {
            keys: BTreeMap::from([(0, key(5, 6, 5)), (1, key(9, 9, 9)), (2, key(3, 3, 4))]),
            increments_acked: 4,
            increments_sent: 5,
            stale_reads: 1,
            ..ClientHistory::default()
        };
        // Key 0 ends at 6 (an unanswered write applied: fine); key 1 lost its acknowledged 9;
        // key 2 was read at 4 (more than ever sent) and ends at 3; the counter ends at 6,
        // above the 5 increments sent.
        let mut finals = vec![Some(6), Some(8), Some(3)];
        finals.resize(KEYS_PER_CLIENT as usize, None);
        finals.push(Some(6));
        let report = judge(&[(1, history)], &BTreeMap::from([(1, finals)]));
        let v = report.violations;
        assert_eq!((v.acked_lost, v.applied_twice, v.stale_reads, v.reads_taken_back), (1, 1, 1, 2));
    }
}
