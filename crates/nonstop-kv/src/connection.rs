//! What every Redis connection answers by itself, on the data port and the sentinel port
//! alike: `PING`, `ECHO`, `HELLO`, `SELECT`, `CLIENT`, and the protocol and name they set.

use crate::resp::{Protocol, Reply};
use std::sync::Arc;

/// The Redis version whose commands and replies this service follows; clients decide which
/// features to use from it (`HELLO`, `INFO`).
pub const REDIS_VERSION: &str = "7.2.0";

/// What a port is to its clients, as `HELLO` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A data port: `mode` standalone.
    Standalone,
    /// A sentinel port: `mode` sentinel.
    Sentinel,
}

/// Whether a connection may run commands, where the port asks for a password (Redis's
/// `requirepass`, for the `default` user).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Access {
    /// No password is asked.
    Open,
    /// A password is asked and not yet given: only `AUTH`, `HELLO ... AUTH`, `QUIT` run.
    Locked(Arc<[u8]>),
    /// The password was given.
    Unlocked(Arc<[u8]>),
}

/// One connection's own state.
#[derive(Debug)]
pub struct Connection {
    id: u64,
    mode: Mode,
    protocol: Protocol,
    name: Option<Vec<u8>>,
    access: Access,
}

/// What Redis answers a wrong password.
const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

/// Whether `given` is `password`, in time that depends on their lengths only.
fn same_secret(given: &[u8], password: &[u8]) -> bool {
    given.len() == password.len() && given.iter().zip(password).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0
}

/// `ERR wrong number of arguments for 'name' command`.
pub(crate) fn arity(name: &str) -> Reply {
    Reply::error(format!("ERR wrong number of arguments for '{name}' command"))
}

impl Connection {
    /// Connection `id` (`CLIENT ID`) of a `mode` port, speaking RESP2 until `HELLO 3`.
    pub fn new(id: u64, mode: Mode) -> Connection {
        Connection { id, mode, protocol: Protocol::Resp2, name: None, access: Access::Open }
    }

    /// The same connection, asked for `password` before any command (Redis's `requirepass`).
    pub fn requiring(mut self, password: Option<Arc<[u8]>>) -> Connection {
        self.access = password.map_or(Access::Open, Access::Locked);
        self
    }

    /// `RESET`: back to RESP2, no name, and (as Redis does) the password asked again.
    pub(crate) fn reset(&mut self) {
        self.protocol = Protocol::Resp2;
        self.name = None;
        if let Access::Unlocked(password) = &self.access {
            self.access = Access::Locked(password.clone());
        }
    }

    /// `AUTH`, and the gate before every other command: `Some(reply)` if the request was
    /// `AUTH` (answered here) or is refused because the password was not given yet; `None` if
    /// it may run.
    pub(crate) fn gate(&mut self, name: &[u8], args: &[Vec<u8>]) -> Option<Reply> {
        if name == b"AUTH" {
            let given = match args {
                [password] => password.as_slice(),
                [user, password] if user.as_slice() == b"default" => password.as_slice(),
                [_, _] => return Some(Reply::error(WRONGPASS)),
                _ => return Some(arity("auth")),
            };
            return Some(self.unlock(given).unwrap_or_else(Reply::ok));
        }
        let locked = matches!(self.access, Access::Locked(_));
        // HELLO may carry AUTH; it checks it itself.
        (locked && !matches!(name, b"HELLO" | b"QUIT")).then(|| Reply::error("NOAUTH Authentication required."))
    }

    /// Checks a password given by `AUTH` or `HELLO`: `Some(error)` if it is refused.
    fn unlock(&mut self, given: &[u8]) -> Option<Reply> {
        match &self.access {
            Access::Open => Some(Reply::error(
                "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
            )),
            Access::Locked(password) | Access::Unlocked(password) if same_secret(given, password) => {
                self.access = Access::Unlocked(password.clone());
                None
            }
            Access::Locked(_) | Access::Unlocked(_) => Some(Reply::error(WRONGPASS)),
        }
    }

    /// Its number (`CLIENT ID`).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The protocol replies are encoded in.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Answers a connection command (`name` upper-cased), or `None` if it is not one. `role` is
    /// what `HELLO` reports: `master`, `replica` or `sentinel`.
    pub(crate) fn command(&mut self, name: &[u8], args: &[Vec<u8>], role: &str) -> Option<Reply> {
        Some(match name {
            b"PING" => match args {
                [] => Reply::Simple("PONG".into()),
                [message] => Reply::bulk(message.clone()),
                _ => arity("ping"),
            },
            b"ECHO" => match args {
                [message] => Reply::bulk(message.clone()),
                _ => arity("echo"),
            },
            b"SELECT" if self.mode == Mode::Standalone => match args {
                [index] if index.as_slice() == b"0" => Reply::ok(),
                [index] if crate::command::integer(index).is_err() => {
                    Reply::error("ERR value is not an integer or out of range")
                }
                [_] => Reply::error("ERR DB index is out of range"),
                _ => arity("select"),
            },
            b"HELLO" => self.hello(args, role),
            b"CLIENT" => self.client(args),
            _ => return None,
        })
    }

    /// `HELLO [protover [SETNAME name]]`: switches the protocol and answers who we are.
    fn hello(&mut self, args: &[Vec<u8>], role: &str) -> Reply {
        let mut protocol = self.protocol;
        let mut name = None;
        if let Some((version, options)) = args.split_first() {
            protocol = match crate::command::integer(version) {
                Ok(2) => Protocol::Resp2,
                Ok(3) => Protocol::Resp3,
                Ok(_) => return Reply::error("NOPROTO unsupported protocol version"),
                Err(_) => return Reply::error("ERR Protocol version is not an integer or out of range"),
            };
            let mut at = 0;
            while at < options.len() {
                match (options[at].to_ascii_uppercase().as_slice(), options.get(at + 1)) {
                    (b"SETNAME", Some(value)) => name = Some(value.clone()),
                    (b"AUTH", Some(user)) => {
                        let Some(password) = options.get(at + 2) else {
                            return Reply::error("ERR Syntax error in HELLO option 'auth'");
                        };
                        if user.as_slice() != b"default" {
                            return Reply::error(WRONGPASS);
                        }
                        if let Some(refused) = self.unlock(password) {
                            return refused;
                        }
                        at += 1;
                    }
                    (option, _) => {
                        return Reply::error(format!(
                            "ERR Syntax error in HELLO option '{}'",
                            String::from_utf8_lossy(option)
                        ));
                    }
                }
                at += 2;
            }
        }
        if matches!(self.access, Access::Locked(_)) {
            return Reply::error(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
            );
        }
        self.protocol = protocol;
        if name.is_some() {
            self.name = name;
        }
        let text = |value: &str| Reply::bulk(value.as_bytes().to_vec());
        let mode = match self.mode {
            Mode::Standalone => "standalone",
            Mode::Sentinel => "sentinel",
        };
        Reply::Map(vec![
            (text("server"), text("redis")),
            (text("version"), text(REDIS_VERSION)),
            (text("proto"), Reply::Integer(if protocol == Protocol::Resp3 { 3 } else { 2 })),
            (text("id"), Reply::Integer(self.id as i64)),
            (text("mode"), text(mode)),
            (text("role"), text(role)),
            (text("modules"), Reply::Array(Vec::new())),
        ])
    }

    /// `CLIENT ID | GETNAME | SETNAME name`.
    fn client(&mut self, args: &[Vec<u8>]) -> Reply {
        let Some((sub, rest)) = args.split_first() else {
            return arity("client");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<Vec<u8>> {
        text.split(' ').map(|w| w.as_bytes().to_vec()).collect()
    }

    /// The gate, then the connection's own commands, as a session runs them.
    fn run(connection: &mut Connection, text: &str) -> Reply {
        let request = words(text);
        let name = request[0].to_ascii_uppercase();
        connection
            .gate(&name, &request[1..])
            .or_else(|| connection.command(&name, &request[1..], "master"))
            .unwrap_or(Reply::Simple("RAN".into()))
    }

    #[test]
    fn a_password_is_asked_before_anything_runs() {
        let mut connection = Connection::new(1, Mode::Standalone).requiring(Some(Arc::from(&b"s3cret"[..])));
        assert_eq!(run(&mut connection, "GET k"), Reply::error("NOAUTH Authentication required."));
        assert_eq!(run(&mut connection, "PING"), Reply::error("NOAUTH Authentication required."));
        assert!(matches!(run(&mut connection, "HELLO 3"), Reply::Error(e) if e.starts_with("NOAUTH HELLO")));
        assert_eq!(run(&mut connection, "AUTH wrong"), Reply::error(WRONGPASS));
        assert_eq!(run(&mut connection, "AUTH someone s3cret"), Reply::error(WRONGPASS));
        assert_eq!(run(&mut connection, "GET k"), Reply::error("NOAUTH Authentication required."));
        assert_eq!(run(&mut connection, "AUTH default s3cret"), Reply::ok());
        assert_eq!(run(&mut connection, "GET k"), Reply::Simple("RAN".into()));

        let mut hello = Connection::new(2, Mode::Standalone).requiring(Some(Arc::from(&b"s3cret"[..])));
        assert_eq!(run(&mut hello, "HELLO 3 AUTH default nope"), Reply::error(WRONGPASS));
        assert!(matches!(run(&mut hello, "HELLO 3 AUTH default s3cret SETNAME app"), Reply::Map(_)));
        assert_eq!(hello.protocol(), Protocol::Resp3);
        assert_eq!(run(&mut hello, "CLIENT GETNAME"), Reply::bulk("app"));

        let mut open = Connection::new(3, Mode::Standalone);
        assert!(
            matches!(run(&mut open, "AUTH x"), Reply::Error(e) if e.starts_with("ERR AUTH <password> called without"))
        );
        assert_eq!(run(&mut open, "GET k"), Reply::Simple("RAN".into()));
    }
}
