//! One Redis connection's state, as a pure state machine: requests in, actions out.
//!
//! The connection commands (`PING`, `ECHO`, `HELLO`, `SELECT`, `CLIENT`, `QUIT`, `MULTI`,
//! `EXEC`, `DISCARD`) are answered here; every data command becomes a [`KvRequest`] for the
//! service, as a call when it may write and as a query when it only reads. A transaction's
//! commands are queued and sent as one request at `EXEC`, so they run together with nothing
//! between them, as Redis runs them. The driver that owns the socket only carries out the
//! actions.
//!
//! ```
//! use nonstop_kv::command::{Cost, Effect};
//! use nonstop_kv::resp::Reply;
//! use nonstop_kv::session::{Action, Context, NodeFacts, Session};
//! use nonstop_kv::topology::{Serves, Topology};
//!
//! let topology = Topology { name: "kv".into(), epoch: 1, primary: None, replicas: vec![], sentinels: vec![] };
//! let node = NodeFacts::default();
//! let context = Context { now_ms: 0, serves: Serves::Primary, topology: &topology, node: &node, draw: 0 };
//! let mut session = Session::new(1);
//! let words = |text: &str| text.split(' ').map(|w| w.as_bytes().to_vec()).collect::<Vec<_>>();
//! assert_eq!(session.handle(&words("PING"), &context), Action::Reply(Reply::Simple("PONG".into())));
//! let Action::Run { cost: Cost { effect: Effect::Writes, .. }, .. } = session.handle(&words("SET k v"), &context) else {
//!     panic!()
//! };
//! ```

use crate::command::{Command, Cost, parse};
use crate::connection::{Connection, Mode};
use crate::resp::{Protocol, Reply, Request};
use crate::service::KvRequest;
use crate::topology::{Serves, Topology};

/// What a request arrives into.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    /// The receiving node's clock, in milliseconds since the Unix epoch: relative expiries
    /// are made absolute from it.
    pub now_ms: u64,
    /// What the node is for the service now.
    pub serves: Serves,
    /// Where the service runs (`ROLE`, `INFO replication`).
    pub topology: &'a Topology,
    /// What `INFO` reports of the node.
    pub node: &'a NodeFacts,
    /// A random number for the commands that choose at random (`SPOP`, `SRANDMEMBER`): the
    /// service draws nothing by itself.
    pub draw: u64,
}

/// What `INFO` reports of the node that holds the connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// The node's number.
    pub node: u64,
    /// The Redis port's TCP port.
    pub port: u16,
    /// When the node started, in milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// Client connections open on the node.
    pub connected_clients: u64,
    /// Client connections the node takes at once.
    pub max_clients: u64,
}

/// What the driver does next for a connection.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Send this reply.
    Reply(Reply),
    /// Send this reply, then close the connection (`QUIT`, a protocol error).
    Close(Reply),
    /// Run `request` on the service (a call if it may write, else a query) and hand its
    /// replies to [`Session::replied`], which says what to send.
    Run {
        /// The commands, stamped with the time they were received.
        request: KvRequest,
        /// The costliest command's cost.
        cost: Cost,
    },
}

impl Action {
    /// Run `request`, at the cost of its costliest commands.
    fn run(request: KvRequest) -> Action {
        let cost = request.commands.iter().map(Command::cost).fold(Cost::QUICK_READ, Cost::and);
        Action::Run { request, cost }
    }
}

/// A queued `MULTI` transaction.
#[derive(Debug, Default)]
struct Transaction {
    /// What `EXEC` answers, command by command: a reply known at queueing (a connection
    /// command), or the next of the service's replies.
    slots: Vec<Slot>,
    commands: Vec<Command>,
    /// A queued command was refused: `EXEC` discards the transaction.
    refused: bool,
}

#[derive(Debug)]
enum Slot {
    Known(Reply),
    FromService,
    /// An `INFO` whose text the keyspace's figures complete.
    Info(Info),
}

/// What the service's replies answer when they come back.
#[derive(Debug, Default)]
enum Awaiting {
    /// Nothing is running.
    #[default]
    Nothing,
    /// One command: its one reply.
    Single,
    /// An `EXEC`: the transaction's replies as one array; `guarded`: the first reply is the
    /// `WATCH` guard's, and `:0` means the transaction did not run.
    Exec { slots: Vec<Slot>, guarded: bool },
    /// A `WATCH`: the keys whose digests come back.
    Watch(Vec<Vec<u8>>),
    /// An `INFO`: the keyspace's figures complete the text.
    Info(Info),
}

/// One connection.
#[derive(Debug)]
pub struct Session {
    connection: Connection,
    transaction: Option<Transaction>,
    awaiting: Awaiting,
    /// Keys under `WATCH`, with their digests when watched.
    watched: Vec<(Vec<u8>, u64)>,
}

impl Session {
    /// A new connection with id `id` (`CLIENT ID`), speaking RESP2 until `HELLO 3`.
    pub fn new(id: u64) -> Session {
        Session {
            connection: Connection::new(id, Mode::Standalone),
            transaction: None,
            awaiting: Awaiting::Nothing,
            watched: Vec::new(),
        }
    }

    /// The same session, asked for `password` before any command (Redis's `requirepass`).
    pub fn requiring(mut self, password: Option<std::sync::Arc<[u8]>>) -> Session {
        self.connection = self.connection.requiring(password);
        self
    }

    /// The protocol replies are encoded in.
    pub fn protocol(&self) -> Protocol {
        self.connection.protocol()
    }

    /// What to do with `request`, received in `context`. While a [`Action::Run`] is out, the
    /// driver waits for its replies before handing in the next request (replies leave in order).
    pub fn handle(&mut self, request: &Request, context: &Context<'_>) -> Action {
        let now_ms = context.now_ms;
        let name = request.first().map(|name| name.to_ascii_uppercase()).unwrap_or_default();
        let args = request.get(1..).unwrap_or_default();
        if let Some(reply) = self.connection.gate(&name, args) {
            return Action::Reply(reply);
        }
        let control = matches!(name.as_slice(), b"EXEC" | b"DISCARD" | b"MULTI" | b"QUIT" | b"RESET" | b"WATCH");
        if self.transaction.is_some() && !control {
            return Action::Reply(self.queue(request, &name, args, context));
        }
        match name.as_slice() {
            b"MULTI" if self.transaction.is_some() => Action::Reply(Reply::error("ERR MULTI calls can not be nested")),
            b"MULTI" => {
                self.transaction = Some(Transaction::default());
                Action::Reply(Reply::ok())
            }
            b"EXEC" => {
                let watched = std::mem::take(&mut self.watched);
                match self.transaction.take() {
                    None => Action::Reply(Reply::error("ERR EXEC without MULTI")),
                    Some(Transaction { refused: true, .. }) => {
                        Action::Reply(Reply::error("EXECABORT Transaction discarded because of previous errors."))
                    }
                    Some(Transaction { commands, slots, .. }) if commands.is_empty() && watched.is_empty() => {
                        Action::Reply(exec_reply(slots, std::iter::empty()))
                    }
                    Some(Transaction { mut commands, slots, .. }) => {
                        let guarded = !watched.is_empty();
                        if guarded {
                            let (keys, digests) = watched.into_iter().unzip();
                            commands.insert(0, Command::Unchanged { keys, digests });
                        }
                        self.awaiting = Awaiting::Exec { slots, guarded };
                        Action::run(KvRequest { now_ms, commands })
                    }
                }
            }
            b"DISCARD" => {
                self.watched.clear();
                match self.transaction.take() {
                    None => Action::Reply(Reply::error("ERR DISCARD without MULTI")),
                    Some(_) => Action::Reply(Reply::ok()),
                }
            }
            b"WATCH" if self.transaction.is_some() => {
                Action::Reply(Reply::error("ERR WATCH inside MULTI is not allowed"))
            }
            b"WATCH" if args.is_empty() => Action::Reply(crate::connection::arity("watch")),
            b"WATCH" => {
                self.awaiting = Awaiting::Watch(args.to_vec());
                Action::run(KvRequest { now_ms, commands: vec![Command::Digest { keys: args.to_vec() }] })
            }
            b"QUIT" => Action::Close(Reply::ok()),
            // Back to a fresh connection: no transaction, nothing watched, RESP2, no name, and
            // the password asked again if the port has one.
            b"RESET" => {
                self.transaction = None;
                self.watched.clear();
                self.connection.reset();
                Action::Reply(Reply::Simple("RESET".into()))
            }
            b"INFO" => {
                let info = Info::new(args, context);
                match info.needs_keyspace() {
                    true => {
                        self.awaiting = Awaiting::Info(info);
                        Action::run(KvRequest { now_ms, commands: vec![Command::Stats] })
                    }
                    false => Action::Reply(info.reply(None)),
                }
            }
            _ => match self.connection_command(&name, args, context) {
                Some(reply) => Action::Reply(reply),
                None => match parse(request, now_ms).map(|command| command.seeded(context.draw)) {
                    Ok(command) => {
                        self.awaiting = Awaiting::Single;
                        Action::run(KvRequest { now_ms, commands: vec![command] })
                    }
                    Err(error) => Action::Reply(error),
                },
            },
        }
    }

    /// Queues a command of an open transaction: `+QUEUED`, or the error that will discard the
    /// transaction at `EXEC`.
    fn queue(&mut self, request: &Request, name: &[u8], args: &[Vec<u8>], context: &Context<'_>) -> Reply {
        let info = (name == b"INFO").then(|| Info::new(args, context));
        let (slot, command) = match (info, self.connection_command(name, args, context)) {
            (Some(info), _) if info.needs_keyspace() => (Slot::Info(info), Some(Command::Stats)),
            (Some(info), _) => (Slot::Known(info.reply(None)), None),
            (None, Some(reply)) if !is_error(&reply) => (Slot::Known(reply), None),
            (None, Some(error)) => return self.refuse_transaction(error),
            (None, None) => match parse(request, context.now_ms).map(|command| command.seeded(context.draw)) {
                Ok(command) => (Slot::FromService, Some(command)),
                Err(error) => return self.refuse_transaction(error),
            },
        };
        let transaction = self.transaction.as_mut().expect("a transaction is open");
        transaction.slots.push(slot);
        transaction.commands.extend(command);
        queued()
    }

    fn refuse_transaction(&mut self, error: Reply) -> Reply {
        self.transaction.as_mut().expect("a transaction is open").refused = true;
        error
    }

    /// The reply to send for the service's `replies` to the last [`Action::Run`]; `Err` is the
    /// error the driver answers instead when the service could not run it (this node is not
    /// the primary, a timeout).
    pub fn replied(&mut self, replies: Result<Vec<Reply>, Reply>) -> Reply {
        let awaiting = std::mem::take(&mut self.awaiting);
        let replies = match replies {
            Ok(replies) => replies,
            Err(failed) => return failed,
        };
        match awaiting {
            Awaiting::Nothing => Reply::error("ERR no command was running"),
            Awaiting::Info(info) => info.reply(replies.into_iter().next()),
            Awaiting::Single => replies.into_iter().next().unwrap_or_else(|| Reply::error("ERR no reply")),
            Awaiting::Watch(keys) => match replies.into_iter().next() {
                Some(Reply::Array(digests)) if digests.len() == keys.len() => {
                    for (key, digest) in keys.into_iter().zip(digests) {
                        let Reply::Integer(digest) = digest else { return Reply::error("ERR no digest") };
                        self.watched.push((key, digest as u64));
                    }
                    Reply::ok()
                }
                _ => Reply::error("ERR no digest"),
            },
            Awaiting::Exec { slots, guarded } => {
                let mut replies = replies.into_iter();
                // A watched key changed: the transaction did not run, as Redis answers.
                if guarded && replies.next() != Some(Reply::Integer(1)) {
                    return Reply::NullArray;
                }
                exec_reply(slots, replies)
            }
        }
    }

    /// Answers a connection command, or `None` if `name` is not one.
    fn connection_command(&mut self, name: &[u8], args: &[Vec<u8>], context: &Context<'_>) -> Option<Reply> {
        match (name, args) {
            (b"ROLE", []) => return Some(role(context)),
            (b"TIME", []) => {
                let (seconds, micros) = (context.now_ms / 1000, context.now_ms % 1000 * 1000);
                return Some(Reply::Array(vec![
                    Reply::bulk(seconds.to_string().into_bytes()),
                    Reply::bulk(micros.to_string().into_bytes()),
                ]));
            }
            (b"WAIT", [replicas, timeout]) => return Some(wait(replicas, timeout, context)),
            (b"CONFIG", _) => return Some(config(args, context.node)),
            (b"COMMAND", _) => return Some(crate::commands::command(args)),
            (b"UNWATCH", []) => {
                // Inside MULTI it is queued, and so runs after EXEC's check: it changes nothing.
                if self.transaction.is_none() {
                    self.watched.clear();
                }
                return Some(Reply::ok());
            }
            (b"ROLE" | b"TIME" | b"WAIT", _) => {
                return Some(crate::connection::arity(&String::from_utf8_lossy(name).to_lowercase()));
            }
            _ => {}
        }
        let hello_role = match context.serves {
            Serves::Primary => "master",
            Serves::Replica => "replica",
        };
        self.connection.command(name, args, hello_role)
    }
}

/// What `EXEC` answers: each queued command's reply, known at queueing or the next of the
/// service's `replies`.
fn exec_reply(slots: Vec<Slot>, mut replies: impl Iterator<Item = Reply>) -> Reply {
    let mut next = || replies.next();
    Reply::Array(
        slots
            .into_iter()
            .map(|slot| match slot {
                Slot::Known(reply) => reply,
                Slot::FromService => next().unwrap_or_else(|| Reply::error("ERR no reply")),
                Slot::Info(info) => info.reply(next()),
            })
            .collect(),
    )
}

/// An `INFO` request: the sections asked, and what the connection knew of the node when it
/// was asked.
#[derive(Debug)]
struct Info {
    sections: Vec<&'static str>,
    serves: Serves,
    topology: Topology,
    node: NodeFacts,
    now_ms: u64,
}

/// Redis's sections in Redis's order; those this service has.
const SECTIONS: [&str; 5] = ["server", "clients", "memory", "replication", "keyspace"];

impl Info {
    fn new(args: &[Vec<u8>], context: &Context<'_>) -> Info {
        let asked: Vec<String> = args.iter().map(|arg| String::from_utf8_lossy(arg).to_lowercase()).collect();
        let all = asked.is_empty() || asked.iter().any(|a| matches!(a.as_str(), "all" | "default" | "everything"));
        let sections = SECTIONS.into_iter().filter(|section| all || asked.iter().any(|a| a == section)).collect();
        Info {
            sections,
            serves: context.serves,
            topology: context.topology.clone(),
            node: *context.node,
            now_ms: context.now_ms,
        }
    }

    fn needs_keyspace(&self) -> bool {
        self.sections.iter().any(|section| matches!(*section, "memory" | "keyspace"))
    }

    /// The text, given the keyspace's figures (`[keys, expires, allocated, arena]`) if asked.
    fn reply(&self, figures: Option<Reply>) -> Reply {
        let figure = |at: usize| match &figures {
            Some(Reply::Array(values)) => match values.get(at) {
                Some(Reply::Integer(n)) => *n,
                _ => 0,
            },
            _ => 0,
        };
        let mut text = String::new();
        for section in &self.sections {
            if !text.is_empty() {
                text.push_str("\r\n");
            }
            let lines: Vec<String> = match *section {
                "server" => vec![
                    format!("redis_version:{}", crate::connection::REDIS_VERSION),
                    "redis_mode:standalone".into(),
                    format!("run_id:{}", crate::topology::run_id(self.node.node)),
                    format!("tcp_port:{}", self.node.port),
                    format!("uptime_in_seconds:{}", self.now_ms.saturating_sub(self.node.started_ms) / 1000),
                    "nonstop:1".into(),
                ],
                "clients" => {
                    vec![
                        format!("connected_clients:{}", self.node.connected_clients),
                        format!("maxclients:{}", self.node.max_clients),
                    ]
                }
                "memory" => vec![
                    format!("used_memory:{}", figure(2)),
                    format!("maxmemory:{}", figure(3)),
                    "maxmemory_policy:noeviction".into(),
                ],
                "replication" => self.replication(),
                "keyspace" if figure(0) > 0 => vec![format!("db0:keys={},expires={},avg_ttl=0", figure(0), figure(1))],
                _ => Vec::new(),
            };
            let title = format!("{}{}", section[..1].to_uppercase(), &section[1..]);
            text.push_str(&format!("# {title}\r\n"));
            for line in lines {
                text.push_str(&line);
                text.push_str("\r\n");
            }
        }
        Reply::Verbatim { format: *b"txt", text: text.into_bytes() }
    }

    /// Redis's replication section. The replication id is the control plane's term, which
    /// changes with every promotion as Redis's does; offsets are Redis's and read 0.
    fn replication(&self) -> Vec<String> {
        let topology = &self.topology;
        let mut lines = vec![format!("role:{}", self.serves.role_name())];
        match self.serves {
            Serves::Primary => {
                lines.push(format!("connected_slaves:{}", topology.replicas.len()));
                for (i, replica) in topology.replicas.iter().enumerate() {
                    let state = if replica.down { "wait_bgsave" } else { "online" };
                    lines.push(format!(
                        "slave{i}:ip={},port={},state={state},offset=0,lag=0",
                        replica.addr.ip(),
                        replica.addr.port()
                    ));
                }
            }
            Serves::Replica => {
                let (host, port, up) = topology
                    .primary
                    .as_ref()
                    .map_or(("?".to_string(), 0, false), |p| (p.addr.ip().to_string(), p.addr.port(), !p.down));
                lines.push(format!("master_host:{host}"));
                lines.push(format!("master_port:{port}"));
                lines.push(format!("master_link_status:{}", if up { "up" } else { "down" }));
            }
        }
        lines.push(format!("master_replid:{}", crate::topology::run_id(topology.epoch)));
        lines.push("master_repl_offset:0".into());
        lines
    }
}

/// `WAIT numreplicas timeout`: how many replicas hold the connection's writes. Every write a
/// nonstop primary answered is held by every backup in the record already (output commit), so
/// the answer is the number of backups, at once.
fn wait(replicas: &[u8], timeout: &[u8], context: &Context<'_>) -> Reply {
    let (Ok(_), Ok(timeout)) = (crate::command::integer(replicas), crate::command::integer(timeout)) else {
        return Reply::error("ERR value is not an integer or out of range");
    };
    if timeout < 0 {
        return Reply::error("ERR timeout is negative");
    }
    match context.serves {
        Serves::Primary => Reply::Integer(context.topology.replicas.len() as i64),
        Serves::Replica => Reply::error(
            "ERR WAIT cannot be used with replica instances. Please also note that since Redis 4.0 if a replica is configured to be writable (which is not the default) writes to replicas are just local and are not propagated.",
        ),
    }
}

/// `CONFIG GET pattern...` for what clients probe; nothing is set at run time (the cluster's
/// config file decides).
fn config(args: &[Vec<u8>], node: &NodeFacts) -> Reply {
    let Some((sub, patterns)) = args.split_first() else { return crate::connection::arity("config") };
    match sub.to_ascii_uppercase().as_slice() {
        b"GET" if patterns.is_empty() => crate::connection::arity("config|get"),
        b"GET" => {
            let parameters = [
                ("appendonly", "no".to_string()),
                ("cluster-enabled", "no".into()),
                ("databases", "1".into()),
                ("maxclients", node.max_clients.to_string()),
                ("maxmemory-policy", "noeviction".into()),
                ("port", node.port.to_string()),
                ("proto-max-bulk-len", crate::command::MAX_STRING.to_string()),
                ("replica-read-only", "yes".into()),
                ("save", String::new()),
                ("slave-read-only", "yes".into()),
            ];
            Reply::Map(
                parameters
                    .into_iter()
                    .filter(|(name, _)| {
                        patterns.iter().any(|p| crate::glob::glob_matches(&p.to_ascii_lowercase(), name.as_bytes()))
                    })
                    .map(|(name, value)| (Reply::bulk(name), Reply::bulk(value.into_bytes())))
                    .collect(),
            )
        }
        b"RESETSTAT" => Reply::ok(),
        b"SET" | b"REWRITE" => Reply::error(
            "ERR CONFIG SET and CONFIG REWRITE are not supported: a nonstop node's config file decides, the same on every node",
        ),
        other => Reply::error(format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. Try CONFIG HELP.",
            String::from_utf8_lossy(other)
        )),
    }
}

/// `ROLE`, as a Redis primary or replica answers it. Replication offsets are Redis's; nonstop
/// has checkpoints instead, and a backup holds every write a client was answered, so both
/// report 0.
fn role(context: &Context<'_>) -> Reply {
    let text = |value: &str| Reply::bulk(value.as_bytes().to_vec());
    let topology = context.topology;
    match context.serves {
        Serves::Primary => Reply::Array(vec![
            text("master"),
            Reply::Integer(0),
            Reply::Array(
                topology
                    .replicas
                    .iter()
                    .map(|replica| {
                        Reply::Array(vec![
                            text(&replica.addr.ip().to_string()),
                            text(&replica.addr.port().to_string()),
                            text("0"),
                        ])
                    })
                    .collect(),
            ),
        ]),
        Serves::Replica => {
            let (host, port, state) = match &topology.primary {
                Some(primary) if !primary.down => (primary.addr.ip().to_string(), primary.addr.port(), "connected"),
                Some(primary) => (primary.addr.ip().to_string(), primary.addr.port(), "connect"),
                None => ("?".into(), 0, "connect"),
            };
            Reply::Array(vec![text("slave"), text(&host), Reply::Integer(port.into()), text(state), Reply::Integer(0)])
        }
    }
}

fn queued() -> Reply {
    Reply::Simple("QUEUED".into())
}

fn is_error(reply: &Reply) -> bool {
    matches!(reply, Reply::Error(_))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Effect, Time};

    static NOWHERE: Topology =
        Topology { name: String::new(), epoch: 0, primary: None, replicas: Vec::new(), sentinels: Vec::new() };

    static NODE: NodeFacts = NodeFacts { node: 1, port: 6379, started_ms: 0, connected_clients: 1, max_clients: 10 };

    fn at(now_ms: u64) -> Context<'static> {
        Context { now_ms, serves: Serves::Primary, topology: &NOWHERE, node: &NODE, draw: now_ms }
    }

    fn words(text: &str) -> Request {
        text.split(' ').map(|w| w.as_bytes().to_vec()).collect()
    }

    fn reply(session: &mut Session, text: &str) -> Reply {
        match session.handle(&words(text), &at(0)) {
            Action::Reply(reply) => reply,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn connection_commands_are_answered_here() {
        let mut session = Session::new(42);
        assert_eq!(reply(&mut session, "ping"), Reply::Simple("PONG".into()));
        assert_eq!(reply(&mut session, "PING hi"), Reply::bulk("hi"));
        assert_eq!(reply(&mut session, "ECHO x"), Reply::bulk("x"));
        assert_eq!(reply(&mut session, "SELECT 0"), Reply::ok());
        assert_eq!(reply(&mut session, "SELECT 1"), Reply::error("ERR DB index is out of range"));
        assert_eq!(reply(&mut session, "CLIENT ID"), Reply::Integer(42));
        assert_eq!(reply(&mut session, "CLIENT GETNAME"), Reply::Null);
        assert_eq!(reply(&mut session, "CLIENT SETNAME app"), Reply::ok());
        assert_eq!(reply(&mut session, "CLIENT GETNAME"), Reply::bulk("app"));
        assert_eq!(session.handle(&words("QUIT"), &at(0)), Action::Close(Reply::ok()));
        assert_eq!(reply(&mut session, "GET"), Reply::error("ERR wrong number of arguments for 'get' command"));
    }

    #[test]
    fn hello_switches_the_protocol() {
        let mut session = Session::new(1);
        let Reply::Map(fields) = reply(&mut session, "HELLO 3 SETNAME me") else { panic!("a map") };
        assert!(fields.contains(&(Reply::bulk("proto"), Reply::Integer(3))));
        assert!(fields.contains(&(Reply::bulk("version"), Reply::bulk(crate::connection::REDIS_VERSION))));
        assert_eq!(session.protocol(), Protocol::Resp3);
        assert_eq!(reply(&mut session, "CLIENT GETNAME"), Reply::bulk("me"));
        assert_eq!(reply(&mut session, "HELLO 4"), Reply::error("NOPROTO unsupported protocol version"));
        assert_eq!(session.protocol(), Protocol::Resp3, "a refused HELLO changes nothing");
        let Reply::Map(_) = reply(&mut session, "HELLO") else { panic!("a map") };
        assert_eq!(session.protocol(), Protocol::Resp3);
    }

    #[test]
    fn data_commands_run_as_calls_or_queries() {
        let mut session = Session::new(1);
        let Action::Run { request, cost } = session.handle(&words("SET k v"), &at(7)) else { panic!() };
        assert_eq!(cost, Cost { effect: Effect::Writes, time: Time::Quick });
        assert_eq!(request.now_ms, 7);
        assert_eq!(session.replied(Ok(vec![Reply::ok()])), Reply::ok());
        let Action::Run { cost, .. } = session.handle(&words("GET k"), &at(7)) else { panic!() };
        assert_eq!(cost, Cost::QUICK_READ);
        let unavailable = Reply::error("READONLY You can't write against a read only replica.");
        assert_eq!(session.replied(Err(unavailable.clone())), unavailable);
    }

    #[test]
    fn transactions_queue_and_run_together() {
        let mut session = Session::new(1);
        assert_eq!(reply(&mut session, "EXEC"), Reply::error("ERR EXEC without MULTI"));
        assert_eq!(reply(&mut session, "DISCARD"), Reply::error("ERR DISCARD without MULTI"));
        assert_eq!(reply(&mut session, "MULTI"), Reply::ok());
        assert_eq!(reply(&mut session, "MULTI"), Reply::error("ERR MULTI calls can not be nested"));
        assert_eq!(reply(&mut session, "INCR n"), queued());
        assert_eq!(reply(&mut session, "PING"), queued());
        assert_eq!(reply(&mut session, "GET n"), queued());
        let Action::Run { request, cost } = session.handle(&words("EXEC"), &at(9)) else { panic!() };
        assert_eq!(cost, Cost { effect: Effect::Writes, time: Time::Quick });
        assert_eq!(request.commands.len(), 2);
        let exec = session.replied(Ok(vec![Reply::Integer(1), Reply::bulk("1")]));
        assert_eq!(exec, Reply::Array(vec![Reply::Integer(1), Reply::Simple("PONG".into()), Reply::bulk("1")]));
        // A refused command discards the whole transaction at EXEC.
        assert_eq!(reply(&mut session, "MULTI"), Reply::ok());
        assert_eq!(reply(&mut session, "SET k"), Reply::error("ERR wrong number of arguments for 'set' command"));
        assert_eq!(reply(&mut session, "INCR n"), queued());
        assert_eq!(
            reply(&mut session, "EXEC"),
            Reply::error("EXECABORT Transaction discarded because of previous errors.")
        );
        // DISCARD drops what was queued.
        assert_eq!(reply(&mut session, "MULTI"), Reply::ok());
        assert_eq!(reply(&mut session, "INCR n"), queued());
        assert_eq!(reply(&mut session, "DISCARD"), Reply::ok());
        assert!(matches!(session.handle(&words("GET n"), &at(0)), Action::Run { cost: Cost::QUICK_READ, .. }));
    }

    #[test]
    fn role_reports_the_topology() {
        let addr = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let topology = Topology {
            name: "kv".into(),
            epoch: 3,
            primary: Some(crate::topology::Instance { node: 1, addr: addr(6379), down: false }),
            replicas: vec![crate::topology::Instance { node: 2, addr: addr(6380), down: false }],
            sentinels: Vec::new(),
        };
        let mut session = Session::new(1);
        let mut role = |serves| match session
            .handle(&words("ROLE"), &Context { now_ms: 0, serves, topology: &topology, node: &NODE, draw: 0 })
        {
            Action::Reply(reply) => reply,
            other => panic!("{other:?}"),
        };
        let text = |value: &str| Reply::bulk(value);
        assert_eq!(
            role(Serves::Primary),
            Reply::Array(vec![
                text("master"),
                Reply::Integer(0),
                Reply::Array(vec![Reply::Array(vec![text("127.0.0.1"), text("6380"), text("0")])]),
            ])
        );
        assert_eq!(
            role(Serves::Replica),
            Reply::Array(vec![
                text("slave"),
                text("127.0.0.1"),
                Reply::Integer(6379),
                text("connected"),
                Reply::Integer(0)
            ])
        );
    }

    #[test]
    fn info_asks_the_keyspace_only_for_its_sections() {
        let mut session = Session::new(1);
        let Reply::Verbatim { text, .. } = reply(&mut session, "INFO server") else { panic!() };
        let text = String::from_utf8(text).unwrap();
        assert!(text.starts_with("# Server\r\nredis_version:") && text.contains("tcp_port:6379"), "{text}");
        let Reply::Verbatim { text, .. } = reply(&mut session, "INFO replication") else { panic!() };
        assert!(String::from_utf8(text).unwrap().contains("role:master\r\nconnected_slaves:0"));
        let Action::Run { request, cost: Cost { effect: Effect::Reads, time: Time::Slow } } =
            session.handle(&words("INFO"), &at(0))
        else {
            panic!()
        };
        assert_eq!(request.commands, vec![Command::Stats]);
        let figures = Reply::Array([3, 1, 4096, 1 << 20].map(Reply::Integer).to_vec());
        let Reply::Verbatim { text, .. } = session.replied(Ok(vec![figures])) else { panic!() };
        let text = String::from_utf8(text).unwrap();
        for line in ["used_memory:4096", "maxmemory:1048576", "db0:keys=3,expires=1,avg_ttl=0", "# Clients"] {
            assert!(text.contains(line), "{line} in {text}");
        }
        let order: Vec<usize> = ["# Server", "# Clients", "# Memory", "# Replication", "# Keyspace"]
            .map(|t| text.find(t).unwrap())
            .to_vec();
        assert!(order.is_sorted(), "Redis's order: {text}");
    }

    #[test]
    fn info_inside_a_transaction_answers_from_the_transaction_s_own_state() {
        let mut session = Session::new(1);
        for queued in ["MULTI", "SET k v", "INFO keyspace", "INFO server"] {
            assert!(!is_error(&reply(&mut session, queued)), "{queued}");
        }
        let Action::Run { request, cost: Cost { effect: Effect::Writes, .. } } = session.handle(&words("EXEC"), &at(0))
        else {
            panic!()
        };
        assert!(matches!(request.commands.as_slice(), [Command::Set { .. }, Command::Stats]), "{request:?}");
        let figures = Reply::Array([1, 0, 64, 1 << 20].map(Reply::Integer).to_vec());
        let Reply::Array(replies) = session.replied(Ok(vec![Reply::ok(), figures])) else { panic!() };
        let texts: Vec<String> = replies[1..]
            .iter()
            .map(|reply| match reply {
                Reply::Verbatim { text, .. } => String::from_utf8(text.clone()).unwrap(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(replies[0], Reply::ok());
        assert!(texts[0].contains("db0:keys=1,expires=0"), "{}", texts[0]);
        assert!(texts[1].starts_with("# Server"), "{}", texts[1]);
    }

    #[test]
    fn time_wait_config_and_command_are_answered_here() {
        let mut session = Session::new(1);
        let Action::Reply(time) = session.handle(&words("TIME"), &at(1_700_000_123_456)) else { panic!() };
        assert_eq!(time, Reply::Array(vec![Reply::bulk("1700000123"), Reply::bulk("456000")]));
        assert_eq!(reply(&mut session, "WAIT 1 0"), Reply::Integer(0), "no backups in this topology");
        assert_eq!(reply(&mut session, "WAIT 1 -1"), Reply::error("ERR timeout is negative"));
        let Reply::Map(found) = reply(&mut session, "CONFIG GET maxmemory* save") else { panic!() };
        let names: Vec<Reply> = found.into_iter().map(|(name, _)| name).collect();
        assert_eq!(names, [Reply::bulk("maxmemory-policy"), Reply::bulk("save")]);
        let Reply::Error(refused) = reply(&mut session, "CONFIG SET save 1") else { panic!() };
        assert!(refused.contains("config file"), "{refused}");
        assert!(matches!(reply(&mut session, "COMMAND COUNT"), Reply::Integer(n) if n > 50));
    }

    #[test]
    fn watch_guards_exec_with_the_keys_digests() {
        let mut session = Session::new(1);
        assert_eq!(reply(&mut session, "WATCH"), Reply::error("ERR wrong number of arguments for 'watch' command"));
        let Action::Run { request, cost: Cost { effect: Effect::Reads, time: Time::Slow } } =
            session.handle(&words("WATCH a b"), &at(0))
        else {
            panic!()
        };
        assert_eq!(request.commands, vec![Command::Digest { keys: vec![b"a".to_vec(), b"b".to_vec()] }]);
        assert_eq!(session.replied(Ok(vec![Reply::Array(vec![Reply::Integer(0), Reply::Integer(7)])])), Reply::ok());
        assert_eq!(reply(&mut session, "MULTI"), Reply::ok());
        assert_eq!(reply(&mut session, "WATCH c"), Reply::error("ERR WATCH inside MULTI is not allowed"));
        assert_eq!(reply(&mut session, "INCR n"), queued());
        let Action::Run { request, cost: Cost { effect: Effect::Writes, .. } } = session.handle(&words("EXEC"), &at(0))
        else {
            panic!()
        };
        let guard = Command::Unchanged { keys: vec![b"a".to_vec(), b"b".to_vec()], digests: vec![0, 7] };
        assert_eq!(request.commands[0], guard);
        // A watched key changed: the guard answers 0, the service runs nothing more.
        assert_eq!(session.replied(Ok(vec![Reply::Integer(0)])), Reply::NullArray);
        // EXEC unwatches: the next transaction runs unguarded.
        assert_eq!(reply(&mut session, "MULTI"), Reply::ok());
        assert_eq!(reply(&mut session, "INCR n"), queued());
        let Action::Run { request, .. } = session.handle(&words("EXEC"), &at(0)) else { panic!() };
        assert_eq!(request.commands.len(), 1);
        assert_eq!(session.replied(Ok(vec![Reply::Integer(1)])), Reply::Array(vec![Reply::Integer(1)]));
        // UNWATCH forgets; a guard that holds lets the replies through.
        let Action::Run { .. } = session.handle(&words("WATCH a"), &at(0)) else { panic!() };
        assert_eq!(session.replied(Ok(vec![Reply::Array(vec![Reply::Integer(3)])])), Reply::ok());
        assert_eq!(reply(&mut session, "UNWATCH"), Reply::ok());
        let Action::Run { .. } = session.handle(&words("WATCH a"), &at(0)) else { panic!() };
        assert_eq!(session.replied(Ok(vec![Reply::Array(vec![Reply::Integer(3)])])), Reply::ok());
        assert_eq!(reply(&mut session, "MULTI"), Reply::ok());
        let Action::Run { request, cost: Cost { effect: Effect::Reads, time: Time::Slow } } =
            session.handle(&words("EXEC"), &at(0))
        else {
            panic!()
        };
        assert_eq!(request.commands.len(), 1, "only the guard");
        assert_eq!(session.replied(Ok(vec![Reply::Integer(1)])), Reply::Array(vec![]));
    }

    #[test]
    fn reset_forgets_the_connections_state() {
        let mut session = Session::new(1);
        let Reply::Map(_) = reply(&mut session, "HELLO 3 SETNAME app") else { panic!() };
        assert_eq!(reply(&mut session, "MULTI"), Reply::ok());
        assert_eq!(reply(&mut session, "RESET"), Reply::Simple("RESET".into()));
        assert_eq!(session.protocol(), Protocol::Resp2);
        assert_eq!(reply(&mut session, "CLIENT GETNAME"), Reply::Null);
        assert_eq!(reply(&mut session, "EXEC"), Reply::error("ERR EXEC without MULTI"));
    }
}
