//! The sentinel port: the subset of Redis Sentinel that clients use to find the primary, as a
//! pure state machine over the node's [`Topology`].
//!
//! Client libraries (redis-py's `Sentinel`, the `redis` crate's `SentinelClient`, Jedis,
//! go-redis) ask a sentinel `SENTINEL get-master-addr-by-name` or `SENTINEL masters`, connect
//! to the address, check it with `ROLE`, and ask again when the primary answers `-READONLY` or
//! stops answering. Every nonstop node answers them from the control plane's record, so the
//! answer changes the moment the record names a new primary: there is no Sentinel quorum to
//! wait for, because the control plane already is one. `SUBSCRIBE +switch-master` delivers
//! Sentinel's failover message when the primary changes.
//!
//! Sentinel's own configuration commands (`MONITOR`, `SET`, `FAILOVER`, ...) are refused: the
//! cluster's config decides what runs where.

use crate::command::unknown_command;
use crate::connection::{Connection, Mode, arity};
use crate::glob::glob_matches;
use crate::resp::{Protocol, Reply, Request};
use crate::topology::{Instance, Topology, run_id};
use std::collections::BTreeSet;

/// The one channel a sentinel port publishes on.
pub const SWITCH_MASTER: &str = "+switch-master";

/// What to send for one request.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    /// The replies, in order (`SUBSCRIBE a b` answers once per channel).
    pub replies: Vec<Reply>,
    /// Close the connection after them (`QUIT`).
    pub close: bool,
}

impl Answer {
    fn one(reply: Reply) -> Answer {
        Answer { replies: vec![reply], close: false }
    }
}

/// One connection to the sentinel port.
#[derive(Debug)]
pub struct Sentinel {
    connection: Connection,
    node: u64,
    channels: BTreeSet<Vec<u8>>,
    patterns: BTreeSet<Vec<u8>>,
}

fn text(value: &str) -> Reply {
    Reply::bulk(value.as_bytes().to_vec())
}

impl Sentinel {
    /// Connection `id` to the sentinel port of node `node`.
    pub fn new(id: u64, node: u64) -> Sentinel {
        Sentinel {
            connection: Connection::new(id, Mode::Sentinel),
            node,
            channels: BTreeSet::new(),
            patterns: BTreeSet::new(),
        }
    }

    /// The same connection, asked for `password` before any command.
    pub fn requiring(mut self, password: Option<std::sync::Arc<[u8]>>) -> Sentinel {
        self.connection = self.connection.requiring(password);
        self
    }

    /// The protocol replies are encoded in.
    pub fn protocol(&self) -> Protocol {
        self.connection.protocol()
    }

    /// Whether the connection listens for [`Sentinel::switched`] messages.
    pub fn subscribed(&self) -> bool {
        !self.channels.is_empty() || !self.patterns.is_empty()
    }

    /// What to answer `request`, with the service placed as `topology` says.
    pub fn handle(&mut self, request: &Request, topology: &Topology) -> Answer {
        let name = request.first().map(|name| name.to_ascii_uppercase()).unwrap_or_default();
        let args = request.get(1..).unwrap_or_default();
        if let Some(reply) = self.connection.gate(&name, args) {
            return Answer::one(reply);
        }
        let pubsub = matches!(
            name.as_slice(),
            b"SUBSCRIBE" | b"PSUBSCRIBE" | b"UNSUBSCRIBE" | b"PUNSUBSCRIBE" | b"PING" | b"QUIT" | b"RESET"
        );
        if self.subscribed() && self.protocol() == Protocol::Resp2 && !pubsub {
            return Answer::one(Reply::error(format!(
                "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
                String::from_utf8_lossy(&name).to_lowercase()
            )));
        }
        match name.as_slice() {
            b"QUIT" => Answer { replies: vec![Reply::ok()], close: true },
            b"PING" if self.subscribed() && self.protocol() == Protocol::Resp2 => {
                let message = args.first().cloned().unwrap_or_default();
                Answer::one(Reply::Array(vec![text("pong"), Reply::bulk(message)]))
            }
            b"SUBSCRIBE" | b"PSUBSCRIBE" if args.is_empty() => {
                Answer::one(arity(&String::from_utf8_lossy(&name).to_lowercase()))
            }
            b"SUBSCRIBE" => Answer { replies: self.subscribe(args, false), close: false },
            b"PSUBSCRIBE" => Answer { replies: self.subscribe(args, true), close: false },
            b"UNSUBSCRIBE" => Answer { replies: self.unsubscribe(args, false), close: false },
            b"PUNSUBSCRIBE" => Answer { replies: self.unsubscribe(args, true), close: false },
            b"RESET" => {
                self.channels.clear();
                self.patterns.clear();
                self.connection.reset();
                Answer::one(Reply::Simple("RESET".into()))
            }
            b"ROLE" => Answer::one(match args {
                [] => Reply::Array(vec![text("sentinel"), Reply::Array(vec![text(&topology.name)])]),
                _ => arity("role"),
            }),
            b"SENTINEL" => Answer::one(self.sentinel(args, topology)),
            b"INFO" => Answer::one(Reply::Verbatim { format: *b"txt", text: info(self.node, topology).into_bytes() }),
            _ => Answer::one(
                self.connection.command(&name, args, "sentinel").unwrap_or_else(|| unknown_command(request)),
            ),
        }
    }

    /// Whether `request` asks where the primary is while this node believes the primary down.
    /// A failover is then under way, and the answer worth giving is the primary it makes: the
    /// old address sends the client to a dead port, and it asks again only after its own retry
    /// delay. The port may hold such a request a short while for the record to change
    /// (promotions after a crash take milliseconds), then answer from the record as it stands.
    pub fn asks_for_a_down_primary(request: &Request, topology: &Topology) -> bool {
        let asks = match request.as_slice() {
            [command, sub, ..] if command.eq_ignore_ascii_case(b"SENTINEL") => {
                let sub = sub.to_ascii_uppercase();
                matches!(sub.as_slice(), b"GET-MASTER-ADDR-BY-NAME" | b"MASTERS" | b"MASTER")
            }
            _ => false,
        };
        asks && topology.primary.as_ref().is_some_and(|primary| primary.down)
    }

    /// The messages for this connection when the primary moved from `old` to `new`: Sentinel's
    /// `+switch-master <name> <old-ip> <old-port> <new-ip> <new-port>` on its channel.
    pub fn switched(&self, old: &Topology, new: &Topology) -> Vec<Reply> {
        let (Some(from), Some(to)) = (&old.primary, &new.primary) else { return Vec::new() };
        if from.addr == to.addr || old.name != new.name {
            return Vec::new();
        }
        let payload =
            format!("{} {} {} {} {}", new.name, from.addr.ip(), from.addr.port(), to.addr.ip(), to.addr.port());
        let channel = SWITCH_MASTER.as_bytes();
        let mut messages = Vec::new();
        if self.channels.contains(channel) {
            messages.push(Reply::Push(vec![text("message"), text(SWITCH_MASTER), text(&payload)]));
        }
        for pattern in self.patterns.iter().filter(|pattern| glob_matches(pattern, channel)) {
            messages.push(Reply::Push(vec![
                text("pmessage"),
                Reply::bulk(pattern.clone()),
                text(SWITCH_MASTER),
                text(&payload),
            ]));
        }
        messages
    }

    fn subscriptions(&self) -> i64 {
        (self.channels.len() + self.patterns.len()) as i64
    }

    fn subscribe(&mut self, names: &[Vec<u8>], pattern: bool) -> Vec<Reply> {
        let kind = if pattern { "psubscribe" } else { "subscribe" };
        names
            .iter()
            .map(|name| {
                let set = if pattern { &mut self.patterns } else { &mut self.channels };
                set.insert(name.clone());
                Reply::Push(vec![text(kind), Reply::bulk(name.clone()), Reply::Integer(self.subscriptions())])
            })
            .collect()
    }

    fn unsubscribe(&mut self, names: &[Vec<u8>], pattern: bool) -> Vec<Reply> {
        let kind = if pattern { "punsubscribe" } else { "unsubscribe" };
        let set = if pattern { &self.patterns } else { &self.channels };
        let names: Vec<Vec<u8>> = if names.is_empty() { set.iter().cloned().collect() } else { names.to_vec() };
        if names.is_empty() {
            return vec![Reply::Push(vec![text(kind), Reply::Null, Reply::Integer(self.subscriptions())])];
        }
        names
            .into_iter()
            .map(|name| {
                let set = if pattern { &mut self.patterns } else { &mut self.channels };
                set.remove(&name);
                Reply::Push(vec![text(kind), Reply::bulk(name), Reply::Integer(self.subscriptions())])
            })
            .collect()
    }

    /// `SENTINEL <subcommand> ...`.
    fn sentinel(&self, args: &[Vec<u8>], topology: &Topology) -> Reply {
        let Some((sub, rest)) = args.split_first() else { return arity("sentinel") };
        let sub = sub.to_ascii_uppercase();
        let named = |name: &[u8]| name == topology.name.as_bytes();
        let no_such = || Reply::error("ERR No such master with that name");
        match (sub.as_slice(), rest) {
            (b"MYID", []) => text(&run_id(self.node)),
            (b"GET-MASTER-ADDR-BY-NAME", [name]) => match (&topology.primary, named(name)) {
                (Some(primary), true) => {
                    Reply::Array(vec![text(&primary.addr.ip().to_string()), text(&primary.addr.port().to_string())])
                }
                _ => Reply::NullArray,
            },
            (b"MASTERS", []) => Reply::Array(master(topology).into_iter().collect()),
            (b"MASTER", [name]) if named(name) => master(topology).unwrap_or_else(no_such),
            (b"REPLICAS" | b"SLAVES", [name]) if named(name) => {
                Reply::Array(topology.replicas.iter().map(|replica| replica_fields(replica, topology)).collect())
            }
            (b"SENTINELS", [name]) if named(name) => Reply::Array(
                topology
                    .sentinels
                    .iter()
                    .filter(|sentinel| sentinel.node != self.node)
                    .map(|sentinel| sentinel_fields(sentinel, topology.epoch))
                    .collect(),
            ),
            (b"CKQUORUM", [name]) if named(name) => Reply::Simple(format!(
                "OK {} usable Sentinels. Quorum and failover authorization can be reached",
                topology.sentinels.len()
            )),
            (b"MASTER" | b"REPLICAS" | b"SLAVES" | b"SENTINELS" | b"CKQUORUM", [_]) => no_such(),
            (b"IS-MASTER-DOWN-BY-ADDR", [ip, port, _epoch, _runid]) => {
                // Whether this node believes the primary at that address down. Nonstop's
                // sentinels never elect a failover leader: the control plane promotes.
                let down = topology.primary.as_ref().is_some_and(|primary| {
                    primary.down
                        && primary.addr.ip().to_string().as_bytes() == ip.as_slice()
                        && primary.addr.port().to_string().as_bytes() == port.as_slice()
                });
                Reply::Array(vec![Reply::Integer(down.into()), text("*"), Reply::Integer(0)])
            }
            (b"MONITOR" | b"REMOVE" | b"SET" | b"FAILOVER" | b"RESET" | b"FLUSHCONFIG" | b"CONFIG", _) => {
                Reply::error(format!(
                    "ERR SENTINEL {} is not supported: nonstop's cluster config decides what runs where (use `nonstop switchover` to move the primary)",
                    String::from_utf8_lossy(&sub).to_lowercase()
                ))
            }
            _ => Reply::error(format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Try SENTINEL HELP.",
                String::from_utf8_lossy(&sub)
            )),
        }
    }
}

fn fields(pairs: Vec<(&str, String)>) -> Reply {
    Reply::Map(pairs.into_iter().map(|(key, value)| (text(key), text(&value))).collect())
}

/// Sentinel's description of an instance: the fields every kind has.
fn common(instance: &Instance, flags: &str, role: &str) -> Vec<(&'static str, String)> {
    vec![
        ("name", instance.addr.to_string()),
        ("ip", instance.addr.ip().to_string()),
        ("port", instance.addr.port().to_string()),
        ("runid", instance.run_id()),
        ("flags", if instance.down { format!("{flags},s_down,disconnected") } else { flags.to_string() }),
        ("link-pending-commands", "0".into()),
        ("link-refcount", "1".into()),
        ("last-ping-sent", "0".into()),
        ("last-ok-ping-reply", "0".into()),
        ("last-ping-reply", "0".into()),
        ("down-after-milliseconds", "0".into()),
        ("info-refresh", "0".into()),
        ("role-reported", role.into()),
        ("role-reported-time", "0".into()),
    ]
}

/// `SENTINEL MASTERS`'s entry for the service; `None` while no primary has a Redis port.
fn master(topology: &Topology) -> Option<Reply> {
    let primary = topology.primary.as_ref()?;
    let mut pairs = common(primary, "master", "master");
    pairs[0].1 = topology.name.clone();
    pairs.extend([
        ("config-epoch", topology.epoch.to_string()),
        ("num-slaves", topology.replicas.len().to_string()),
        ("num-other-sentinels", topology.sentinels.len().saturating_sub(1).to_string()),
        ("quorum", (topology.sentinels.len() / 2 + 1).to_string()),
        ("failover-timeout", "0".into()),
        ("parallel-syncs", "1".into()),
    ]);
    Some(fields(pairs))
}

fn replica_fields(replica: &Instance, topology: &Topology) -> Reply {
    let mut pairs = common(replica, "slave", "slave");
    let (host, port) = topology
        .primary
        .as_ref()
        .map_or(("?".to_string(), "0".to_string()), |p| (p.addr.ip().to_string(), p.addr.port().to_string()));
    pairs.extend([
        ("master-link-down-time", "0".into()),
        ("master-link-status", if replica.down { "err" } else { "ok" }.into()),
        ("master-host", host),
        ("master-port", port),
        ("slave-priority", "100".into()),
        ("slave-repl-offset", "0".into()),
        ("replica-announced", "1".into()),
    ]);
    fields(pairs)
}

fn sentinel_fields(sentinel: &Instance, epoch: u64) -> Reply {
    let mut pairs = common(sentinel, "sentinel", "sentinel");
    pairs[0].1 = sentinel.run_id();
    pairs.extend([
        ("last-hello-message", "0".into()),
        ("voted-leader", "?".into()),
        ("voted-leader-epoch", epoch.to_string()),
    ]);
    fields(pairs)
}

/// `INFO` of a sentinel: its server and sentinel sections.
fn info(node: u64, topology: &Topology) -> String {
    let status = match &topology.primary {
        Some(primary) if !primary.down => "ok",
        _ => "sdown",
    };
    let address = topology.primary.as_ref().map_or("?:0".into(), |p| p.addr.to_string());
    format!(
        "# Server\r\nredis_version:{}\r\nredis_mode:sentinel\r\nrun_id:{}\r\n\r\n# Sentinel\r\nsentinel_masters:1\r\nsentinel_tilt:0\r\nsentinel_running_scripts:0\r\nsentinel_scripts_queue_length:0\r\nsentinel_simulate_failure_flags:0\r\nmaster0:name={},status={status},address={address},slaves={},sentinels={}\r\n",
        crate::connection::REDIS_VERSION,
        run_id(node),
        topology.name,
        topology.replicas.len(),
        topology.sentinels.len(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn words(text: &str) -> Request {
        text.split(' ').map(|w| w.as_bytes().to_vec()).collect()
    }

    fn at(port: u16, node: u64) -> Instance {
        Instance { node, addr: SocketAddr::from(([127, 0, 0, 1], port)), down: false }
    }

    fn topology(primary: u16) -> Topology {
        let nodes = [6379, 6380, 6381];
        Topology {
            name: "kv".into(),
            epoch: 2,
            primary: Some(at(primary, 1 + nodes.iter().position(|&p| p == primary).unwrap() as u64)),
            replicas: nodes
                .iter()
                .enumerate()
                .filter(|(_, p)| **p != primary)
                .map(|(i, p)| at(*p, i as u64 + 1))
                .collect(),
            sentinels: (1..=3).map(|node| at(26378 + node as u16, node)).collect(),
        }
    }

    #[test]
    fn discovery_is_held_only_while_the_primary_is_believed_down() {
        let mut down = topology(6380);
        down.primary.as_mut().unwrap().down = true;
        let up = topology(6380);
        for asking in ["SENTINEL get-master-addr-by-name kv", "sentinel MASTERS", "Sentinel master kv"] {
            assert!(Sentinel::asks_for_a_down_primary(&words(asking), &down), "{asking}");
            assert!(!Sentinel::asks_for_a_down_primary(&words(asking), &up), "{asking}");
        }
        for other in ["SENTINEL replicas kv", "SENTINEL sentinels kv", "PING", "SENTINEL", "GET-MASTER-ADDR-BY-NAME kv"]
        {
            assert!(!Sentinel::asks_for_a_down_primary(&words(other), &down), "{other}");
        }
        let mut none = topology(6380);
        none.primary = None;
        assert!(!Sentinel::asks_for_a_down_primary(&words("SENTINEL masters"), &none));
    }

    fn one(sentinel: &mut Sentinel, command: &str, topology: &Topology) -> Reply {
        let answer = sentinel.handle(&words(command), topology);
        assert_eq!(answer.replies.len(), 1, "{command}: {answer:?}");
        answer.replies.into_iter().next().unwrap()
    }

    fn field(reply: &Reply, name: &str) -> String {
        let Reply::Map(pairs) = reply else { panic!("{reply:?} is not a map") };
        match pairs.iter().find(|(key, _)| *key == text(name)) {
            Some((_, Reply::Bulk(value))) => String::from_utf8(value.clone()).unwrap(),
            other => panic!("{name}: {other:?}"),
        }
    }

    #[test]
    fn clients_find_the_primary() {
        let mut sentinel = Sentinel::new(1, 2);
        let placed = topology(6380);
        assert_eq!(
            one(&mut sentinel, "SENTINEL get-master-addr-by-name kv", &placed),
            Reply::Array(vec![text("127.0.0.1"), text("6380")])
        );
        assert_eq!(one(&mut sentinel, "SENTINEL get-master-addr-by-name other", &placed), Reply::NullArray);
        let Reply::Array(masters) = one(&mut sentinel, "sentinel masters", &placed) else { panic!() };
        assert_eq!(masters.len(), 1);
        assert_eq!(field(&masters[0], "name"), "kv");
        assert_eq!(field(&masters[0], "flags"), "master");
        assert_eq!(field(&masters[0], "port"), "6380");
        assert_eq!(field(&masters[0], "config-epoch"), "2");
        assert_eq!(one(&mut sentinel, "SENTINEL master kv", &placed), masters[0]);
        assert_eq!(
            one(&mut sentinel, "SENTINEL master nope", &placed),
            Reply::error("ERR No such master with that name")
        );
        let Reply::Array(replicas) = one(&mut sentinel, "SENTINEL replicas kv", &placed) else { panic!() };
        let ports: Vec<String> = replicas.iter().map(|r| field(r, "port")).collect();
        assert_eq!(ports, ["6379", "6381"]);
        assert_eq!(one(&mut sentinel, "SENTINEL slaves kv", &placed), Reply::Array(replicas));
        let Reply::Array(others) = one(&mut sentinel, "SENTINEL sentinels kv", &placed) else { panic!() };
        let ports: Vec<String> = others.iter().map(|s| field(s, "port")).collect();
        assert_eq!(ports, ["26379", "26381"], "every sentinel but this one");
        assert_eq!(one(&mut sentinel, "SENTINEL myid", &placed), text(&run_id(2)));
        assert_eq!(
            one(&mut sentinel, "ROLE", &placed),
            Reply::Array(vec![text("sentinel"), Reply::Array(vec![text("kv")])])
        );
        let Reply::Error(refused) = one(&mut sentinel, "SENTINEL failover kv", &placed) else { panic!() };
        assert!(refused.contains("switchover"), "{refused}");
        assert_eq!(
            one(&mut sentinel, "GET k", &placed),
            Reply::error("ERR unknown command 'GET', with args beginning with: 'k' ")
        );
    }

    #[test]
    fn a_primary_believed_down_is_flagged() {
        let mut sentinel = Sentinel::new(1, 2);
        let mut placed = topology(6379);
        placed.primary.as_mut().unwrap().down = true;
        let Reply::Array(masters) = one(&mut sentinel, "SENTINEL masters", &placed) else { panic!() };
        assert!(field(&masters[0], "flags").contains("s_down"));
        assert_eq!(
            one(&mut sentinel, "SENTINEL is-master-down-by-addr 127.0.0.1 6379 0 *", &placed),
            Reply::Array(vec![Reply::Integer(1), text("*"), Reply::Integer(0)])
        );
    }

    #[test]
    fn subscribers_hear_of_a_switch() {
        let mut sentinel = Sentinel::new(1, 1);
        let (old, new) = (topology(6379), topology(6380));
        let answer = sentinel.handle(&words("SUBSCRIBE +switch-master +sdown"), &old);
        assert_eq!(
            answer.replies,
            vec![
                Reply::Push(vec![text("subscribe"), text("+switch-master"), Reply::Integer(1)]),
                Reply::Push(vec![text("subscribe"), text("+sdown"), Reply::Integer(2)]),
            ]
        );
        assert_eq!(
            one(&mut sentinel, "PSUBSCRIBE +switch*", &old),
            Reply::Push(vec![text("psubscribe"), text("+switch*"), Reply::Integer(3)])
        );
        let payload = text("kv 127.0.0.1 6379 127.0.0.1 6380");
        assert_eq!(
            sentinel.switched(&old, &new),
            vec![
                Reply::Push(vec![text("message"), text(SWITCH_MASTER), payload.clone()]),
                Reply::Push(vec![text("pmessage"), text("+switch*"), text(SWITCH_MASTER), payload]),
            ]
        );
        assert!(sentinel.switched(&new, &new).is_empty(), "no switch, no message");
        // Subscribed in RESP2: only pub/sub commands, and PING answers in pub/sub form.
        let Reply::Error(refused) = one(&mut sentinel, "SENTINEL masters", &new) else { panic!() };
        assert!(refused.starts_with("ERR Can't execute 'sentinel'"), "{refused}");
        assert_eq!(one(&mut sentinel, "PING", &new), Reply::Array(vec![text("pong"), text("")]));
        let answer = sentinel.handle(&words("UNSUBSCRIBE"), &new);
        assert_eq!(answer.replies.len(), 2);
        assert_eq!(
            one(&mut sentinel, "PUNSUBSCRIBE", &new),
            Reply::Push(vec![text("punsubscribe"), text("+switch*"), Reply::Integer(0)])
        );
        assert!(!sentinel.subscribed());
        assert!(sentinel.switched(&old, &new).is_empty());
        assert_eq!(
            one(&mut sentinel, "UNSUBSCRIBE", &new),
            Reply::Push(vec![text("unsubscribe"), Reply::Null, Reply::Integer(0)])
        );
    }
}
