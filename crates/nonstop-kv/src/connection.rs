//! What every Redis connection answers by itself, on the data port and the sentinel port
//! alike: `PING`, `ECHO`, `HELLO`, `SELECT`, `CLIENT`, and the protocol and name they set.

use crate::resp::{Protocol, Reply};

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

/// One connection's own state.
#[derive(Debug)]
pub struct Connection {
    id: u64,
    mode: Mode,
    protocol: Protocol,
    name: Option<Vec<u8>>,
}

/// `ERR wrong number of arguments for 'name' command`.
pub(crate) fn arity(name: &str) -> Reply {
    Reply::error(format!("ERR wrong number of arguments for '{name}' command"))
}

impl Connection {
    /// Connection `id` (`CLIENT ID`) of a `mode` port, speaking RESP2 until `HELLO 3`.
    pub fn new(id: u64, mode: Mode) -> Connection {
        Connection { id, mode, protocol: Protocol::Resp2, name: None }
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
                    (b"AUTH", Some(_)) => {
                        return Reply::error("WRONGPASS invalid username-password pair or user is disabled.");
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
