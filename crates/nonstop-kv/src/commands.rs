//! The commands this service knows, as `COMMAND` describes them: name, arity, whether they
//! write, and where their keys are. Parsing checks arity from here, so the two cannot differ.

use crate::command::{Cost, Effect, Time};
use crate::resp::Reply;

/// Who answers a command, and at what cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The keyspace, as [`Command::cost`](crate::command::Command::cost) says for the parsed
    /// command (a test holds the two to the same answer).
    Data(Cost),
    /// Answered by the connection, never by the keyspace.
    Connection,
}

const QUICK_READ: Access = Access::Data(Cost { effect: Effect::Reads, time: Time::Quick });
const READ: Access = Access::Data(Cost { effect: Effect::Reads, time: Time::Slow });
const QUICK_WRITE: Access = Access::Data(Cost { effect: Effect::Writes, time: Time::Quick });
const WRITE: Access = Access::Data(Cost { effect: Effect::Writes, time: Time::Slow });

/// One command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    /// Lower-case name.
    pub name: &'static str,
    /// Redis's arity: the exact number of words with the name, or at least `-arity`.
    pub arity: i32,
    /// What it does to the keyspace.
    pub access: Access,
    /// First key's position, last key's (-1: the last word), and the step between keys.
    pub keys: (i32, i32, i32),
}

impl Spec {
    const fn new(name: &'static str, arity: i32, access: Access, keys: (i32, i32, i32)) -> Spec {
        Spec { name, arity, access, keys }
    }

    /// `COMMAND INFO`'s entry: name, arity, flags, first key, last key, step, ACL categories,
    /// tips, key specifications, subcommands.
    pub fn info(&self) -> Reply {
        let flags: &[&str] = match self.access {
            Access::Data(Cost { effect: Effect::Reads, time: Time::Quick }) => &["readonly", "fast"],
            Access::Data(Cost { effect: Effect::Reads, time: Time::Slow }) => &["readonly"],
            Access::Data(Cost { effect: Effect::Writes, time: Time::Quick }) => &["write", "denyoom", "fast"],
            Access::Data(Cost { effect: Effect::Writes, time: Time::Slow }) => &["write", "denyoom"],
            Access::Connection => &["fast", "loading", "stale"],
        };
        let status = |flag: &str| Reply::Simple(flag.to_string());
        let (first, last, step) = self.keys;
        Reply::Array(vec![
            Reply::bulk(self.name),
            Reply::Integer(self.arity.into()),
            Reply::Set(flags.iter().map(|flag| status(flag)).collect()),
            Reply::Integer(first.into()),
            Reply::Integer(last.into()),
            Reply::Integer(step.into()),
            Reply::Set(Vec::new()),
            Reply::Set(Vec::new()),
            Reply::Array(Vec::new()),
            Reply::Array(Vec::new()),
        ])
    }
}

use Access::Connection;

/// Every command the keyspace runs.
const DATA: &[Spec] = &[
    Spec::new("get", 2, QUICK_READ, (1, 1, 1)),
    Spec::new("set", -3, QUICK_WRITE, (1, 1, 1)),
    Spec::new("setnx", 3, QUICK_WRITE, (1, 1, 1)),
    Spec::new("setex", 4, QUICK_WRITE, (1, 1, 1)),
    Spec::new("psetex", 4, QUICK_WRITE, (1, 1, 1)),
    Spec::new("getset", 3, QUICK_WRITE, (1, 1, 1)),
    Spec::new("getdel", 2, QUICK_WRITE, (1, 1, 1)),
    Spec::new("getex", -2, QUICK_WRITE, (1, 1, 1)),
    Spec::new("mget", -2, QUICK_READ, (1, -1, 1)),
    Spec::new("mset", -3, QUICK_WRITE, (1, -1, 2)),
    Spec::new("msetnx", -3, QUICK_WRITE, (1, -1, 2)),
    Spec::new("incr", 2, QUICK_WRITE, (1, 1, 1)),
    Spec::new("decr", 2, QUICK_WRITE, (1, 1, 1)),
    Spec::new("incrby", 3, QUICK_WRITE, (1, 1, 1)),
    Spec::new("decrby", 3, QUICK_WRITE, (1, 1, 1)),
    Spec::new("incrbyfloat", 3, QUICK_WRITE, (1, 1, 1)),
    Spec::new("append", 3, QUICK_WRITE, (1, 1, 1)),
    Spec::new("strlen", 2, QUICK_READ, (1, 1, 1)),
    Spec::new("getrange", 4, READ, (1, 1, 1)),
    Spec::new("substr", 4, READ, (1, 1, 1)),
    Spec::new("setrange", 4, WRITE, (1, 1, 1)),
    Spec::new("del", -2, WRITE, (1, -1, 1)),
    Spec::new("unlink", -2, WRITE, (1, -1, 1)),
    Spec::new("exists", -2, QUICK_READ, (1, -1, 1)),
    Spec::new("expire", -3, QUICK_WRITE, (1, 1, 1)),
    Spec::new("pexpire", -3, QUICK_WRITE, (1, 1, 1)),
    Spec::new("expireat", -3, QUICK_WRITE, (1, 1, 1)),
    Spec::new("pexpireat", -3, QUICK_WRITE, (1, 1, 1)),
    Spec::new("ttl", 2, QUICK_READ, (1, 1, 1)),
    Spec::new("pttl", 2, QUICK_READ, (1, 1, 1)),
    Spec::new("persist", 2, QUICK_WRITE, (1, 1, 1)),
    Spec::new("type", 2, QUICK_READ, (1, 1, 1)),
    Spec::new("hset", -4, QUICK_WRITE, (1, 1, 1)),
    Spec::new("hmset", -4, QUICK_WRITE, (1, 1, 1)),
    Spec::new("hsetnx", 4, QUICK_WRITE, (1, 1, 1)),
    Spec::new("hget", 3, QUICK_READ, (1, 1, 1)),
    Spec::new("hmget", -3, QUICK_READ, (1, 1, 1)),
    Spec::new("hgetall", 2, READ, (1, 1, 1)),
    Spec::new("hkeys", 2, READ, (1, 1, 1)),
    Spec::new("hvals", 2, READ, (1, 1, 1)),
    Spec::new("hdel", -3, QUICK_WRITE, (1, 1, 1)),
    Spec::new("hexists", 3, QUICK_READ, (1, 1, 1)),
    Spec::new("hlen", 2, QUICK_READ, (1, 1, 1)),
    Spec::new("hstrlen", 3, QUICK_READ, (1, 1, 1)),
    Spec::new("hincrby", 4, QUICK_WRITE, (1, 1, 1)),
    Spec::new("hincrbyfloat", 4, QUICK_WRITE, (1, 1, 1)),
    Spec::new("dbsize", 1, QUICK_READ, (0, 0, 0)),
    Spec::new("keys", 2, READ, (0, 0, 0)),
    Spec::new("flushdb", -1, WRITE, (0, 0, 0)),
    Spec::new("flushall", -1, WRITE, (0, 0, 0)),
    Spec::new("rename", 3, WRITE, (1, 2, 1)),
    Spec::new("renamenx", 3, WRITE, (1, 2, 1)),
    Spec::new("sadd", -3, QUICK_WRITE, (1, 1, 1)),
    Spec::new("srem", -3, QUICK_WRITE, (1, 1, 1)),
    Spec::new("smembers", 2, READ, (1, 1, 1)),
    Spec::new("sismember", 3, QUICK_READ, (1, 1, 1)),
    Spec::new("smismember", -3, QUICK_READ, (1, 1, 1)),
    Spec::new("scard", 2, QUICK_READ, (1, 1, 1)),
    Spec::new("sinter", -2, READ, (1, -1, 1)),
    Spec::new("sunion", -2, READ, (1, -1, 1)),
    Spec::new("sdiff", -2, READ, (1, -1, 1)),
    Spec::new("sinterstore", -3, WRITE, (1, -1, 1)),
    Spec::new("sunionstore", -3, WRITE, (1, -1, 1)),
    Spec::new("sdiffstore", -3, WRITE, (1, -1, 1)),
    Spec::new("spop", -2, WRITE, (1, 1, 1)),
    Spec::new("srandmember", -2, READ, (1, 1, 1)),
    Spec::new("lpush", -3, QUICK_WRITE, (1, 1, 1)),
    Spec::new("rpush", -3, QUICK_WRITE, (1, 1, 1)),
    Spec::new("lpushx", -3, QUICK_WRITE, (1, 1, 1)),
    Spec::new("rpushx", -3, QUICK_WRITE, (1, 1, 1)),
    Spec::new("lpop", -2, QUICK_WRITE, (1, 1, 1)),
    Spec::new("rpop", -2, QUICK_WRITE, (1, 1, 1)),
    Spec::new("lrange", 4, READ, (1, 1, 1)),
    Spec::new("llen", 2, QUICK_READ, (1, 1, 1)),
    Spec::new("lindex", 3, READ, (1, 1, 1)),
    Spec::new("lset", 4, QUICK_WRITE, (1, 1, 1)),
    Spec::new("lrem", 4, WRITE, (1, 1, 1)),
    Spec::new("ltrim", 4, WRITE, (1, 1, 1)),
    Spec::new("linsert", 5, WRITE, (1, 1, 1)),
    Spec::new("lpos", -3, READ, (1, 1, 1)),
    Spec::new("zadd", -4, QUICK_WRITE, (1, 1, 1)),
    Spec::new("zrem", -3, QUICK_WRITE, (1, 1, 1)),
    Spec::new("zscore", 3, QUICK_READ, (1, 1, 1)),
    Spec::new("zmscore", -3, QUICK_READ, (1, 1, 1)),
    Spec::new("zincrby", 4, QUICK_WRITE, (1, 1, 1)),
    Spec::new("zcard", 2, QUICK_READ, (1, 1, 1)),
    Spec::new("zcount", 4, READ, (1, 1, 1)),
    Spec::new("zrank", -3, READ, (1, 1, 1)),
    Spec::new("zrevrank", -3, READ, (1, 1, 1)),
    Spec::new("zrange", -4, READ, (1, 1, 1)),
    Spec::new("zrangebyscore", -4, READ, (1, 1, 1)),
    Spec::new("zrevrangebyscore", -4, READ, (1, 1, 1)),
    Spec::new("zrevrange", -4, READ, (1, 1, 1)),
    Spec::new("zrangebylex", -4, READ, (1, 1, 1)),
    Spec::new("zrevrangebylex", -4, READ, (1, 1, 1)),
    Spec::new("zpopmin", -2, QUICK_WRITE, (1, 1, 1)),
    Spec::new("zpopmax", -2, QUICK_WRITE, (1, 1, 1)),
    Spec::new("scan", -2, READ, (0, 0, 0)),
    Spec::new("hscan", -3, READ, (1, 1, 1)),
    Spec::new("sscan", -3, READ, (1, 1, 1)),
    Spec::new("zscan", -3, READ, (1, 1, 1)),
    Spec::new("randomkey", 1, READ, (0, 0, 0)),
];

/// The commands a connection answers itself.
const CONNECTION: &[Spec] = &[
    Spec::new("ping", -1, Connection, (0, 0, 0)),
    Spec::new("echo", 2, Connection, (0, 0, 0)),
    Spec::new("select", 2, Connection, (0, 0, 0)),
    Spec::new("hello", -1, Connection, (0, 0, 0)),
    Spec::new("client", -2, Connection, (0, 0, 0)),
    Spec::new("quit", -1, Connection, (0, 0, 0)),
    Spec::new("multi", 1, Connection, (0, 0, 0)),
    Spec::new("exec", 1, Connection, (0, 0, 0)),
    Spec::new("discard", 1, Connection, (0, 0, 0)),
    Spec::new("info", -1, Connection, (0, 0, 0)),
    Spec::new("role", 1, Connection, (0, 0, 0)),
    Spec::new("time", 1, Connection, (0, 0, 0)),
    Spec::new("wait", 3, Connection, (0, 0, 0)),
    Spec::new("config", -2, Connection, (0, 0, 0)),
    Spec::new("command", -1, Connection, (0, 0, 0)),
];

/// The keyspace's command `name` (lower-case).
pub fn data(name: &[u8]) -> Option<&'static Spec> {
    DATA.iter().find(|spec| spec.name.as_bytes() == name)
}

/// Every command, the connection's and the keyspace's.
pub fn all() -> impl Iterator<Item = &'static Spec> {
    CONNECTION.iter().chain(DATA)
}

/// Command `name`, in any case.
pub fn find(name: &[u8]) -> Option<&'static Spec> {
    let lower = name.to_ascii_lowercase();
    all().find(|spec| spec.name.as_bytes() == lower.as_slice())
}

/// `COMMAND [COUNT | LIST | INFO name... | DOCS name...]`.
pub fn command(args: &[Vec<u8>]) -> Reply {
    let Some((sub, names)) = args.split_first() else {
        return Reply::Array(all().map(Spec::info).collect());
    };
    match (sub.to_ascii_uppercase().as_slice(), names) {
        (b"COUNT", []) => Reply::Integer(all().count() as i64),
        (b"LIST", []) => Reply::Array(all().map(|spec| Reply::bulk(spec.name)).collect()),
        (b"INFO", []) => Reply::Array(all().map(Spec::info).collect()),
        (b"INFO", names) => {
            Reply::Array(names.iter().map(|name| find(name).map_or(Reply::NullArray, Spec::info)).collect())
        }
        // No documentation: clients (redis-cli's hints) go without.
        (b"DOCS", _) => Reply::Map(Vec::new()),
        (sub, _) => Reply::error(format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. Try COMMAND HELP.",
            String::from_utf8_lossy(sub)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::parse;

    /// The table says whether a command writes, and so does the parsed command: they agree.
    #[test]
    fn the_table_and_the_commands_agree_on_writing() {
        for spec in DATA {
            let mut request = vec![spec.name.as_bytes().to_vec()];
            // Arguments of a shape the command takes, as many as it needs at least.
            let words: &[&[u8]] = match spec.name {
                "set" | "getset" | "setnx" | "append" | "mset" | "msetnx" | "hsetnx" | "rename" | "renamenx" => {
                    &[b"k", b"1", b"2", b"3"]
                }
                "setex" | "psetex" => &[b"k", b"10", b"v"],
                "hset" | "hmset" => &[b"k", b"f", b"v"],
                "getrange" | "substr" | "setrange" | "lrange" | "ltrim" => &[b"k", b"0", b"1"],
                "lindex" => &[b"k", b"0"],
                "lset" | "lrem" => &[b"k", b"0", b"v"],
                "linsert" => &[b"k", b"BEFORE", b"p", b"v"],
                "zadd" | "zincrby" => &[b"k", b"1", b"m"],
                "zrem" | "zscore" | "zmscore" | "zrank" | "zrevrank" => &[b"k", b"m"],
                "zcount" | "zrange" | "zrevrange" | "zrangebyscore" | "zrevrangebyscore" => &[b"k", b"0", b"1"],
                "zrangebylex" | "zrevrangebylex" => &[b"k", b"-", b"+"],
                "scan" => &[b"0"],
                "hscan" | "sscan" | "zscan" => &[b"k", b"0"],
                "lpush" | "rpush" | "lpushx" | "rpushx" | "lpos" => &[b"k", b"v"],
                "expire" | "pexpire" | "expireat" | "pexpireat" | "incrby" | "decrby" | "incrbyfloat" => &[b"k", b"10"],
                "hincrby" | "hincrbyfloat" => &[b"k", b"f", b"1"],
                "hget" | "hexists" | "hstrlen" | "hdel" | "hmget" => &[b"k", b"f"],
                "sadd" | "srem" | "sismember" | "smismember" | "sinterstore" | "sunionstore" | "sdiffstore" => {
                    &[b"k", b"m"]
                }
                "dbsize" | "flushdb" | "flushall" | "randomkey" => &[],
                _ => &[b"k"],
            };
            // The fewest words the command takes.
            let wanted = spec.arity.unsigned_abs() as usize - 1;
            request.extend(words.iter().cycle().take(wanted).map(|w| w.to_vec()));
            let command = parse(&request, 0).unwrap_or_else(|error| panic!("{}: {error:?}", spec.name));
            assert_eq!(Access::Data(command.cost()), spec.access, "{}", spec.name);
        }
    }

    #[test]
    fn command_answers_clients() {
        let words = |text: &str| text.split(' ').map(|w| w.as_bytes().to_vec()).collect::<Vec<_>>();
        assert_eq!(command(&words("COUNT")), Reply::Integer(all().count() as i64));
        let Reply::Array(infos) = command(&words("INFO get mset nope")) else { panic!() };
        let Reply::Array(get) = &infos[0] else { panic!() };
        assert_eq!(get[..2], [Reply::bulk("get"), Reply::Integer(2)]);
        let Reply::Array(mset) = &infos[1] else { panic!() };
        assert_eq!(mset[3..6], [Reply::Integer(1), Reply::Integer(-1), Reply::Integer(2)]);
        assert_eq!(infos[2], Reply::NullArray);
        assert_eq!(command(&words("DOCS get")), Reply::Map(Vec::new()));
    }
}
