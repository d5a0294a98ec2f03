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
//! use nonstop_kv::resp::Reply;
//! use nonstop_kv::session::{Action, Session};
//!
//! let mut session = Session::new(1);
//! let words = |text: &str| text.split(' ').map(|w| w.as_bytes().to_vec()).collect::<Vec<_>>();
//! assert_eq!(session.handle(&words("PING"), 0), Action::Reply(Reply::Simple("PONG".into())));
//! let Action::Run { writes: true, .. } = session.handle(&words("SET k v"), 0) else { panic!() };
//! ```

use crate::command::{Command, parse};
use crate::resp::{Protocol, Reply, Request};
use crate::service::KvRequest;

/// The Redis version whose commands and replies this service follows; clients decide which
/// features to use from it (`HELLO`, `INFO`).
pub const REDIS_VERSION: &str = "7.2.0";

/// What the driver does next for a connection.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Send this reply.
    Reply(Reply),
    /// Send this reply, then close the connection (`QUIT`, a protocol error).
    Close(Reply),
    /// Run `request` on the service (a call if `writes`, else a query) and hand its replies to
    /// [`Session::replied`], which says what to send.
    Run {
        /// The commands, stamped with the time they were received.
        request: KvRequest,
        /// Whether any of them may write.
        writes: bool,
    },
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
}

/// What the service's replies answer when they come back.
#[derive(Debug, Default)]
enum Awaiting {
    /// Nothing is running.
    #[default]
    Nothing,
    /// One command: its one reply.
    Single,
    /// An `EXEC`: the transaction's replies as one array.
    Exec(Vec<Slot>),
}

/// One connection.
#[derive(Debug)]
pub struct Session {
    id: u64,
    protocol: Protocol,
    name: Option<Vec<u8>>,
    transaction: Option<Transaction>,
    awaiting: Awaiting,
}

impl Session {
    /// A new connection with id `id` (`CLIENT ID`), speaking RESP2 until `HELLO 3`.
    pub fn new(id: u64) -> Session {
        Session { id, protocol: Protocol::Resp2, name: None, transaction: None, awaiting: Awaiting::Nothing }
    }

    /// The protocol replies are encoded in.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// What to do with `request`, received at `now_ms`. While a [`Action::Run`] is out, the
    /// driver waits for its replies before handing in the next request (replies leave in order).
    pub fn handle(&mut self, request: &Request, now_ms: u64) -> Action {
        let name = request.first().map(|name| name.to_ascii_uppercase()).unwrap_or_default();
        let args = request.get(1..).unwrap_or_default();
        let control = matches!(name.as_slice(), b"EXEC" | b"DISCARD" | b"MULTI" | b"QUIT" | b"RESET" | b"WATCH");
        if self.transaction.is_some() && !control {
            return Action::Reply(self.queue(request, &name, args, now_ms));
        }
        match name.as_slice() {
            b"MULTI" if self.transaction.is_some() => Action::Reply(Reply::error("ERR MULTI calls can not be nested")),
            b"MULTI" => {
                self.transaction = Some(Transaction::default());
                Action::Reply(Reply::ok())
            }
            b"EXEC" => match self.transaction.take() {
                None => Action::Reply(Reply::error("ERR EXEC without MULTI")),
                Some(Transaction { refused: true, .. }) => {
                    Action::Reply(Reply::error("EXECABORT Transaction discarded because of previous errors."))
                }
                Some(Transaction { commands, slots, .. }) if commands.is_empty() => Action::Reply(Reply::Array(
                    slots
                        .into_iter()
                        .map(|slot| match slot {
                            Slot::Known(reply) => reply,
                            Slot::FromService => unreachable!("no command was queued"),
                        })
                        .collect(),
                )),
                Some(Transaction { commands, slots, .. }) => {
                    self.awaiting = Awaiting::Exec(slots);
                    let writes = commands.iter().any(Command::writes);
                    Action::Run { request: KvRequest { now_ms, commands }, writes }
                }
            },
            b"DISCARD" => match self.transaction.take() {
                None => Action::Reply(Reply::error("ERR DISCARD without MULTI")),
                Some(_) => Action::Reply(Reply::ok()),
            },
            b"QUIT" => Action::Close(Reply::ok()),
            _ => match self.connection_command(&name, args) {
                Some(action) => action,
                None => match parse(request, now_ms) {
                    Ok(command) => {
                        self.awaiting = Awaiting::Single;
                        let writes = command.writes();
                        Action::Run { request: KvRequest { now_ms, commands: vec![command] }, writes }
                    }
                    Err(error) => Action::Reply(error),
                },
            },
        }
    }

    /// Queues a command of an open transaction: `+QUEUED`, or the error that will discard the
    /// transaction at `EXEC`.
    fn queue(&mut self, request: &Request, name: &[u8], args: &[Vec<u8>], now_ms: u64) -> Reply {
        let (slot, command) = match self.connection_command(name, args) {
            Some(Action::Reply(reply)) if !is_error(&reply) => (Slot::Known(reply), None),
            Some(Action::Reply(error)) => return self.refuse_transaction(error),
            Some(_) | None => match parse(request, now_ms) {
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
            Awaiting::Single => replies.into_iter().next().unwrap_or_else(|| Reply::error("ERR no reply")),
            Awaiting::Exec(slots) => {
                let mut replies = replies.into_iter();
                Reply::Array(
                    slots
                        .into_iter()
                        .map(|slot| match slot {
                            Slot::Known(reply) => reply,
                            Slot::FromService => replies.next().unwrap_or_else(|| Reply::error("ERR no reply")),
                        })
                        .collect(),
                )
            }
        }
    }

    /// Answers a connection command, or `None` if `name` is not one.
    fn connection_command(&mut self, name: &[u8], args: &[Vec<u8>]) -> Option<Action> {
        let arity = |name: &str| Reply::error(format!("ERR wrong number of arguments for '{name}' command"));
        Some(Action::Reply(match name {
            b"PING" => match args {
                [] => Reply::Simple("PONG".into()),
                [message] => Reply::bulk(message.clone()),
                _ => arity("ping"),
            },
            b"ECHO" => match args {
                [message] => Reply::bulk(message.clone()),
                _ => arity("echo"),
            },
            b"SELECT" => match args {
                [index] if index.as_slice() == b"0" => Reply::ok(),
                [index] if crate::command::integer(index).is_err() => {
                    Reply::error("ERR value is not an integer or out of range")
                }
                [_] => Reply::error("ERR DB index is out of range"),
                _ => arity("select"),
            },
            b"HELLO" => return Some(self.hello(args)),
            b"CLIENT" => self.client(args),
            _ => return None,
        }))
    }

    /// `HELLO [protover [SETNAME name]]`: switches the protocol and answers who we are.
    fn hello(&mut self, args: &[Vec<u8>]) -> Action {
        let mut protocol = self.protocol;
        let mut name = None;
        if let Some((version, options)) = args.split_first() {
            protocol = match crate::command::integer(version) {
                Ok(2) => Protocol::Resp2,
                Ok(3) => Protocol::Resp3,
                Ok(_) => return Action::Reply(Reply::error("NOPROTO unsupported protocol version")),
                Err(_) => return Action::Reply(Reply::error("ERR Protocol version is not an integer or out of range")),
            };
            let mut at = 0;
            while at < options.len() {
                match (options[at].to_ascii_uppercase().as_slice(), options.get(at + 1)) {
                    (b"SETNAME", Some(value)) => name = Some(value.clone()),
                    (b"AUTH", Some(_)) => {
                        return Action::Reply(Reply::error(
                            "WRONGPASS invalid username-password pair or user is disabled.",
                        ));
                    }
                    (option, _) => {
                        return Action::Reply(Reply::error(format!(
                            "ERR Syntax error in HELLO option '{}'",
                            String::from_utf8_lossy(option)
                        )));
                    }
                }
                at += 2;
            }
        }
        self.protocol = protocol;
        if name.is_some() {
            self.name = name;
        }
        let text = |value: &str| Reply::bulk(value.as_bytes().to_vec());
        Action::Reply(Reply::Map(vec![
            (text("server"), text("redis")),
            (text("version"), text(REDIS_VERSION)),
            (text("proto"), Reply::Integer(if protocol == Protocol::Resp3 { 3 } else { 2 })),
            (text("id"), Reply::Integer(self.id as i64)),
            (text("mode"), text("standalone")),
            (text("role"), text("master")),
            (text("modules"), Reply::Array(Vec::new())),
        ]))
    }

    /// `CLIENT ID | GETNAME | SETNAME name`.
    fn client(&mut self, args: &[Vec<u8>]) -> Reply {
        let Some((sub, rest)) = args.split_first() else {
            return Reply::error("ERR wrong number of arguments for 'client' command");
        };
        match (sub.to_ascii_uppercase().as_slice(), rest) {
            (b"ID", []) => Reply::Integer(self.id as i64),
            (b"GETNAME", []) => self.name.clone().map_or(Reply::Null, Reply::bulk),
            (b"SETNAME", [name]) if name.iter().any(|&b| !(b'!'..=b'~').contains(&b)) => {
                Reply::error("ERR Client names cannot contain spaces, newlines or special characters.")
            }
            (b"SETNAME", [name]) => {
                self.name = (!name.is_empty()).then(|| name.clone());
                Reply::ok()
            }
            (sub, _) => Reply::error(format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(sub)
            )),
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

    fn words(text: &str) -> Request {
        text.split(' ').map(|w| w.as_bytes().to_vec()).collect()
    }

    fn reply(session: &mut Session, text: &str) -> Reply {
        match session.handle(&words(text), 0) {
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
        assert_eq!(session.handle(&words("QUIT"), 0), Action::Close(Reply::ok()));
        assert_eq!(reply(&mut session, "GET"), Reply::error("ERR wrong number of arguments for 'get' command"));
    }

    #[test]
    fn hello_switches_the_protocol() {
        let mut session = Session::new(1);
        let Reply::Map(fields) = reply(&mut session, "HELLO 3 SETNAME me") else { panic!("a map") };
        assert!(fields.contains(&(Reply::bulk("proto"), Reply::Integer(3))));
        assert!(fields.contains(&(Reply::bulk("version"), Reply::bulk(REDIS_VERSION))));
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
        let Action::Run { request, writes } = session.handle(&words("SET k v"), 7) else { panic!() };
        assert!(writes);
        assert_eq!(request.now_ms, 7);
        assert_eq!(session.replied(Ok(vec![Reply::ok()])), Reply::ok());
        let Action::Run { writes, .. } = session.handle(&words("GET k"), 7) else { panic!() };
        assert!(!writes);
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
        let Action::Run { request, writes } = session.handle(&words("EXEC"), 9) else { panic!() };
        assert!(writes);
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
        assert!(matches!(session.handle(&words("GET n"), 0), Action::Run { writes: false, .. }));
    }
}
