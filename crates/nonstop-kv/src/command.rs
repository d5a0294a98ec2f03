//! Requests read as commands: the name, the arity and every argument checked as Redis checks
//! them, with Redis's error replies, before anything is looked up or written.
//!
//! Times become absolute here. A client says `EX 10`; the command says "expires at
//! `now_ms + 10,000`", with `now_ms` the receiving node's clock. Only absolute times reach the
//! region, so a key's expiry means the same on a promoted backup as on the primary that set it,
//! and the service itself never reads a clock.
//!
//! ```
//! use nonstop_kv::command::{Command, Expiry, parse};
//!
//! let request = vec![b"set".to_vec(), b"k".to_vec(), b"v".to_vec(), b"EX".to_vec(), b"10".to_vec()];
//! let Command::Set { expiry, .. } = parse(&request, 1_000).unwrap() else { panic!() };
//! assert_eq!(expiry, Expiry::At(11_000));
//! ```

use crate::resp::{Reply, number};
use serde::{Deserialize, Serialize};

/// A key or a value, as bytes.
pub type Bytes = Vec<u8>;

/// What `SET` (and `GETEX`) do with the key's time to live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expiry {
    /// The key no longer expires (`SET` without an option, `GETEX PERSIST`).
    Clear,
    /// The key keeps the expiry it had (`SET ... KEEPTTL`, `GETEX` without an option).
    Keep,
    /// The key expires at this time, in milliseconds since the Unix epoch.
    At(u64),
}

/// `SET`'s condition on the key's existence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Existence {
    /// `NX`: only if the key does not exist.
    Absent,
    /// `XX`: only if it exists.
    Present,
}

/// `EXPIRE`'s condition on the key's current expiry (Redis 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpireCondition {
    /// `NX`: only if the key has no expiry.
    NoExpiry,
    /// `XX`: only if it has one.
    HasExpiry,
    /// `GT`: only if the new one is later (no expiry counts as infinitely late).
    Later,
    /// `LT`: only if the new one is earlier (a key without one is set).
    Earlier,
    /// `XX LT`: only if it has one and the new one is earlier. (`XX GT` is `GT`: a key without
    /// an expiry is never set by `GT`.)
    HasEarlier,
}

/// A string, key, hash or keyspace command, its arguments checked.
// Each field is the argument of that name in Redis's documentation of the command.
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// `GET key`.
    Get { key: Bytes },
    /// `SET`, `SETNX`, `SETEX`, `PSETEX`, `GETSET`: set the value, on a condition, and answer
    /// as `reply` says.
    Set { key: Bytes, value: Bytes, condition: Option<Existence>, expiry: Expiry, reply: SetReply },
    /// `GETDEL key`.
    GetDel { key: Bytes },
    /// `GETEX key [EX|PX|EXAT|PXAT|PERSIST]`.
    GetEx { key: Bytes, expiry: Expiry },
    /// `MGET key...`.
    MGet { keys: Vec<Bytes> },
    /// `MSET` (or `MSETNX`, only if none of the keys exists).
    MSet { pairs: Vec<(Bytes, Bytes)>, only_new: bool },
    /// `INCR`, `DECR`, `INCRBY`, `DECRBY`.
    IncrBy { key: Bytes, by: i64 },
    /// `INCRBYFLOAT key increment`.
    IncrByFloat { key: Bytes, by: f64 },
    /// `APPEND key value`.
    Append { key: Bytes, value: Bytes },
    /// `STRLEN key`.
    StrLen { key: Bytes },
    /// `GETRANGE key start end` (inclusive, negative from the end).
    GetRange { key: Bytes, start: i64, end: i64 },
    /// `SETRANGE key offset value`.
    SetRange { key: Bytes, offset: usize, value: Bytes },
    /// `DEL` and `UNLINK`.
    Del { keys: Vec<Bytes> },
    /// `EXISTS key...` (a key named twice counts twice).
    Exists { keys: Vec<Bytes> },
    /// `EXPIRE`, `PEXPIRE`, `EXPIREAT`, `PEXPIREAT`: an expiry at or before now deletes the key.
    Expire { key: Bytes, at: u64, condition: Option<ExpireCondition> },
    /// `TTL` (seconds) and `PTTL` (milliseconds): -2 without the key, -1 without an expiry.
    Ttl { key: Bytes, millis: bool },
    /// `PERSIST key`.
    Persist { key: Bytes },
    /// `TYPE key`.
    Type { key: Bytes },
    /// `HSET key field value...` (and the deprecated `HMSET`, which answers `+OK`).
    HSet { key: Bytes, pairs: Vec<(Bytes, Bytes)>, answer_ok: bool },
    /// `HSETNX key field value`.
    HSetNx { key: Bytes, field: Bytes, value: Bytes },
    /// `HGET key field`.
    HGet { key: Bytes, field: Bytes },
    /// `HMGET key field...`.
    HMGet { key: Bytes, fields: Vec<Bytes> },
    /// `HGETALL`, `HKEYS`, `HVALS`: the pairs, the fields or the values.
    HGetAll { key: Bytes, part: HashPart },
    /// `HDEL key field...`: the key goes with its last field.
    HDel { key: Bytes, fields: Vec<Bytes> },
    /// `HEXISTS key field`.
    HExists { key: Bytes, field: Bytes },
    /// `HLEN key`.
    HLen { key: Bytes },
    /// `HSTRLEN key field`.
    HStrLen { key: Bytes, field: Bytes },
    /// `HINCRBY key field increment`.
    HIncrBy { key: Bytes, field: Bytes, by: i64 },
    /// `HINCRBYFLOAT key field increment`.
    HIncrByFloat { key: Bytes, field: Bytes, by: f64 },
    /// `DBSIZE`.
    DbSize,
    /// What `INFO` needs of the keyspace: `[keys, keys with an expiry, bytes allocated, bytes
    /// of the arena]`. Made by the session for `INFO`, never read from a client's command.
    Stats,
    /// `KEYS pattern` (Redis's glob: `*`, `?`, `[...]`, `\`).
    Keys { pattern: Bytes },
    /// `FLUSHDB` and `FLUSHALL` (`ASYNC` and `SYNC` alike: at once).
    Flush,
    /// `RENAME key newkey` (or `RENAMENX`, only if `newkey` does not exist).
    Rename { key: Bytes, to: Bytes, only_new: bool },
    /// `SADD key member...`.
    SAdd { key: Bytes, members: Vec<Bytes> },
    /// `SREM key member...`: the key goes with its last member.
    SRem { key: Bytes, members: Vec<Bytes> },
    /// `SMEMBERS key`.
    SMembers { key: Bytes },
    /// `SISMEMBER key member` (one answer), `SMISMEMBER key member...` (an array).
    SIsMember { key: Bytes, members: Vec<Bytes>, many: bool },
    /// `SCARD key`.
    SCard { key: Bytes },
    /// `SINTER`, `SUNION`, `SDIFF` of `keys`, answered, or stored in `store` (`SINTERSTORE
    /// destination key...` and its kin).
    SCombine { op: SetOp, keys: Vec<Bytes>, store: Option<Bytes> },
    /// `SPOP key [count]`: members taken out at random, drawn from `seed`.
    SPop { key: Bytes, count: Option<u64>, seed: u64 },
    /// `SRANDMEMBER key [count]`: distinct members at random if `count` is positive, with
    /// repetition if negative, drawn from `seed`.
    SRandMember { key: Bytes, count: Option<i64>, seed: u64 },
    /// `LPUSH`, `RPUSH` (and `LPUSHX`, `RPUSHX`: only onto an existing list).
    Push { key: Bytes, elements: Vec<Bytes>, end: End, only_existing: bool },
    /// `LPOP`, `RPOP key [count]`.
    Pop { key: Bytes, end: End, count: Option<u64> },
    /// `LRANGE key start stop`.
    LRange { key: Bytes, start: i64, stop: i64 },
    /// `LLEN key`.
    LLen { key: Bytes },
    /// `LINDEX key index`.
    LIndex { key: Bytes, index: i64 },
    /// `LSET key index element`.
    LSet { key: Bytes, index: i64, element: Bytes },
    /// `LREM key count element`: from the head if `count` > 0, the tail if < 0, all if 0.
    LRem { key: Bytes, count: i64, element: Bytes },
    /// `LTRIM key start stop`.
    LTrim { key: Bytes, start: i64, stop: i64 },
    /// `LINSERT key BEFORE|AFTER pivot element`.
    LInsert { key: Bytes, after: bool, pivot: Bytes, element: Bytes },
    /// `LPOS key element [RANK rank] [COUNT count] [MAXLEN len]`.
    LPos { key: Bytes, element: Bytes, rank: i64, count: Option<u64>, maxlen: u64 },
    /// `ZADD key [NX|XX] [GT|LT] [CH] [INCR] score member...`.
    ZAdd { key: Bytes, options: ZAddOptions, pairs: Vec<(f64, Bytes)> },
    /// `ZREM key member...`: the key goes with its last member.
    ZRem { key: Bytes, members: Vec<Bytes> },
    /// `ZSCORE key member` (one answer), `ZMSCORE key member...` (an array).
    ZScore { key: Bytes, members: Vec<Bytes>, many: bool },
    /// `ZINCRBY key increment member`.
    ZIncrBy { key: Bytes, by: f64, member: Bytes },
    /// `ZCARD key`.
    ZCard { key: Bytes },
    /// `ZCOUNT key min max`.
    ZCount { key: Bytes, min: ScoreBound, max: ScoreBound },
    /// `ZRANK`, `ZREVRANK key member [WITHSCORE]`.
    ZRank { key: Bytes, member: Bytes, reverse: bool, with_score: bool },
    /// `ZRANGE` and its older forms (`ZRANGEBYSCORE`, `ZREVRANGE`, ...).
    ZRange { key: Bytes, by: ZRangeBy, reverse: bool, limit: Option<(i64, i64)>, with_scores: bool },
    /// `ZPOPMIN`, `ZPOPMAX key [count]`.
    ZPop { key: Bytes, max: bool, count: Option<u64> },
    /// `SCAN cursor [MATCH pattern] [COUNT n] [TYPE type]`, or with `key`, `HSCAN`, `SSCAN`,
    /// `ZSCAN key cursor [MATCH pattern] [COUNT n]` (`HSCAN ... NOVALUES`): one page, all of
    /// it (the next cursor is 0).
    Scan { over: ScanOver, cursor: u64, pattern: Option<Bytes>, kind: Option<Bytes>, novalues: bool },
    /// `RANDOMKEY`: a key drawn from `seed`.
    RandomKey { seed: u64 },
    /// What `WATCH` remembers of `keys`: a digest of each one's type, value and expiry (0 if
    /// absent). Made by the session, never read from a client's command.
    Digest { keys: Vec<Bytes> },
    /// `EXEC`'s guard for watched keys: `:1` if every key's digest is still `digests`, else
    /// `:0` and the transaction runs no further. Made by the session.
    Unchanged { keys: Vec<Bytes>, digests: Vec<u64> },
}

/// `ZADD`'s options.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZAddOptions {
    /// `NX` (only new members) or `XX` (only existing ones).
    pub existence: Option<Existence>,
    /// `GT` or `LT`: update an existing member only if its score rises (falls).
    pub compare: Option<Direction>,
    /// `CH`: answer how many members were added or changed, not only added.
    pub changed: bool,
    /// `INCR`: add to the one member's score and answer the new score.
    pub increment: bool,
}

/// Which way `ZADD GT`/`LT` lets a score move.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    /// `GT`: only up.
    Up,
    /// `LT`: only down.
    Down,
}

/// One end of a score range: `-inf`, `+inf`, `1.5`, or `(1.5` (exclusive).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreBound {
    /// The score.
    pub value: f64,
    /// Whether the score itself is left out.
    pub exclusive: bool,
}

/// One end of a member range for `BYLEX`: `-`, `+`, `[a` (inclusive) or `(a` (exclusive).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LexBound {
    /// Before every member.
    Least,
    /// After every member.
    Greatest,
    /// From or to this member, itself included.
    Inclusive(Bytes),
    /// From or to this member, itself left out.
    Exclusive(Bytes),
}

/// What `ZRANGE` ranges over.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ZRangeBy {
    /// Ranks, both ends included, negative from the end.
    Rank {
        /// The first rank.
        start: i64,
        /// The last rank.
        stop: i64,
    },
    /// Scores.
    Score {
        /// The low end.
        min: ScoreBound,
        /// The high end.
        max: ScoreBound,
    },
    /// Members, for a set whose scores are all equal.
    Lex {
        /// The low end.
        min: LexBound,
        /// The high end.
        max: LexBound,
    },
}

/// What a scan walks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScanOver {
    /// The keys (`SCAN`).
    Keys,
    /// A hash's fields and values (`HSCAN key`).
    Hash(Bytes),
    /// A set's members (`SSCAN key`).
    Set(Bytes),
    /// A sorted set's members and scores (`ZSCAN key`).
    SortedSet(Bytes),
}

/// Which end of a list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum End {
    /// The head (`LPUSH`, `LPOP`).
    Left,
    /// The tail (`RPUSH`, `RPOP`).
    Right,
}

/// How `SINTER`, `SUNION` and `SDIFF` combine sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetOp {
    /// Members of every set.
    Inter,
    /// Members of any set.
    Union,
    /// Members of the first set and of no other.
    Diff,
}

/// What `HGETALL` and its kin answer of each field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HashPart {
    /// `HGETALL`: field and value (a map in RESP3).
    Pairs,
    /// `HKEYS`.
    Fields,
    /// `HVALS`.
    Values,
}

/// Whether a command may change the keyspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Effect {
    /// Reads only: a query.
    Reads,
    /// May write: a call, whose reply waits until the backups hold what it did.
    Writes,
}

/// How long a command may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Time {
    /// In time bounded by the request's own size, whatever the keyspace's size or a stored
    /// value's (a table that grows copies itself now and then: that is amortized over the
    /// inserts that filled it). May run on the thread that read the request.
    Quick,
    /// In time that may grow with the keyspace or a stored value (`KEYS`, `SMEMBERS`, `DEL`
    /// of a big hash, ...): runs on an executor thread.
    Slow,
}

/// How a command, or a transaction of several, is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cost {
    /// Whether it may write.
    pub effect: Effect,
    /// Whether it is quick.
    pub time: Time,
}

impl Cost {
    /// A quick read: what an empty transaction costs.
    pub const QUICK_READ: Cost = Cost { effect: Effect::Reads, time: Time::Quick };

    /// The cost of running both: a write if either writes, slow if either is.
    pub fn and(self, other: Cost) -> Cost {
        Cost { effect: self.effect.max(other.effect), time: self.time.max(other.time) }
    }
}

impl Command {
    /// Whether it may change the keyspace: such a command runs as a call, whose reply waits
    /// until the backups hold what it did; the others run as queries.
    pub fn writes(&self) -> bool {
        self.cost().effect == Effect::Writes
    }

    /// How it is run: whether it may write, and whether it is quick.
    pub fn cost(&self) -> Cost {
        let (effect, time) = match self {
            // Per key or field asked for (MGET, HMGET), as Redis's `fast` flag says.
            Command::Get { .. }
            | Command::MGet { .. }
            | Command::StrLen { .. }
            | Command::Exists { .. }
            | Command::Ttl { .. }
            | Command::Type { .. }
            | Command::HGet { .. }
            | Command::HMGet { .. }
            | Command::HExists { .. }
            | Command::HLen { .. }
            | Command::HStrLen { .. }
            | Command::DbSize
            | Command::SIsMember { .. }
            | Command::SCard { .. }
            | Command::LLen { .. }
            | Command::ZScore { .. }
            | Command::ZCard { .. } => (Effect::Reads, Time::Quick),
            Command::GetRange { .. }
            | Command::HGetAll { .. }
            | Command::Stats
            | Command::Keys { .. }
            | Command::SMembers { .. }
            | Command::SCombine { store: None, .. }
            | Command::SRandMember { .. }
            | Command::LRange { .. }
            | Command::LIndex { .. }
            | Command::LPos { .. }
            | Command::ZCount { .. }
            | Command::ZRank { .. }
            | Command::ZRange { .. }
            | Command::Scan { .. }
            | Command::RandomKey { .. }
            | Command::Digest { .. }
            | Command::Unchanged { .. } => (Effect::Reads, Time::Slow),
            // Per element given or popped; a value replaced or removed is a string, whose
            // memory is freed in one step.
            Command::Set { .. }
            | Command::GetDel { .. }
            | Command::GetEx { .. }
            | Command::MSet { .. }
            | Command::IncrBy { .. }
            | Command::IncrByFloat { .. }
            | Command::Append { .. }
            | Command::Expire { .. }
            | Command::Persist { .. }
            | Command::HSet { .. }
            | Command::HSetNx { .. }
            | Command::HDel { .. }
            | Command::HIncrBy { .. }
            | Command::HIncrByFloat { .. }
            | Command::SAdd { .. }
            | Command::SRem { .. }
            | Command::Push { .. }
            | Command::Pop { .. }
            | Command::LSet { .. }
            | Command::ZAdd { .. }
            | Command::ZRem { .. }
            | Command::ZIncrBy { .. }
            | Command::ZPop { .. } => (Effect::Writes, Time::Quick),
            // A value of any size dropped (DEL, a RENAME's target, FLUSHDB) or walked.
            Command::SetRange { .. }
            | Command::Del { .. }
            | Command::Flush
            | Command::Rename { .. }
            | Command::SCombine { store: Some(_), .. }
            | Command::SPop { .. }
            | Command::LRem { .. }
            | Command::LTrim { .. }
            | Command::LInsert { .. } => (Effect::Writes, Time::Slow),
        };
        Cost { effect, time }
    }

    /// The command with its random draws taken from `seed` (`SPOP`, `SRANDMEMBER`): the
    /// service never draws by itself, so the request carries them.
    pub fn seeded(mut self, seed: u64) -> Command {
        if let Command::SPop { seed: drawn, .. }
        | Command::SRandMember { seed: drawn, .. }
        | Command::RandomKey { seed: drawn } = &mut self
        {
            *drawn = seed;
        }
        self
    }
}

/// What a `SET`-like command answers when it sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetReply {
    /// `+OK`, or the null bulk string if the condition failed (`SET`, `SETEX`, `PSETEX`).
    Ok,
    /// 1, or 0 if the condition failed (`SETNX`).
    Flag,
    /// The old value (`GETSET`, and `SET ... GET`).
    Old,
}

/// The longest string Redis stores (`proto-max-bulk-len`).
pub const MAX_STRING: usize = 512 << 20;

/// Reads `request` as a command at `now_ms` on the receiving node's clock, or answers the
/// error Redis answers.
pub fn parse(request: &[Bytes], now_ms: u64) -> Result<Command, Reply> {
    let Some((name, args)) = request.split_first() else { return Err(Reply::error("ERR empty command")) };
    let lower = name.to_ascii_lowercase();
    let name = String::from_utf8_lossy(&lower).into_owned();
    let Some(arity) = crate::commands::data(&lower).map(|spec| spec.arity) else {
        return Err(unknown_command(request));
    };
    let given = request.len() as i32;
    if (arity > 0 && given != arity) || (arity < 0 && given < -arity) {
        return Err(crate::connection::arity(&name));
    }
    let key = || args[0].clone();
    Ok(match name.as_str() {
        "get" => Command::Get { key: key() },
        "set" => set(&name, args, now_ms)?,
        "setnx" => Command::Set {
            key: key(),
            value: args[1].clone(),
            condition: Some(Existence::Absent),
            expiry: Expiry::Clear,
            reply: SetReply::Flag,
        },
        "setex" | "psetex" => {
            let unit = if name == "setex" { Unit::Seconds } else { Unit::Millis };
            let at = expire_at(&name, &args[1], unit, Some(now_ms))?;
            Command::Set {
                key: key(),
                value: args[2].clone(),
                condition: None,
                expiry: Expiry::At(at),
                reply: SetReply::Ok,
            }
        }
        "getset" => Command::Set {
            key: key(),
            value: args[1].clone(),
            condition: None,
            expiry: Expiry::Clear,
            reply: SetReply::Old,
        },
        "getdel" => Command::GetDel { key: key() },
        "getex" => getex(&name, args, now_ms)?,
        "mget" => Command::MGet { keys: args.to_vec() },
        "mset" | "msetnx" => {
            if args.len() % 2 != 0 {
                return Err(crate::connection::arity(&name));
            }
            let pairs = args.chunks_exact(2).map(|pair| (pair[0].clone(), pair[1].clone())).collect();
            Command::MSet { pairs, only_new: name == "msetnx" }
        }
        "incr" => Command::IncrBy { key: key(), by: 1 },
        "decr" => Command::IncrBy { key: key(), by: -1 },
        "incrby" => Command::IncrBy { key: key(), by: integer(&args[1])? },
        "decrby" => {
            let by = integer(&args[1])?;
            let by = by.checked_neg().ok_or_else(|| Reply::error("ERR decrement would overflow"))?;
            Command::IncrBy { key: key(), by }
        }
        "incrbyfloat" => Command::IncrByFloat { key: key(), by: float(&args[1])? },
        "append" => Command::Append { key: key(), value: args[1].clone() },
        "strlen" => Command::StrLen { key: key() },
        "getrange" | "substr" => Command::GetRange { key: key(), start: integer(&args[1])?, end: integer(&args[2])? },
        "setrange" => {
            let offset = integer(&args[1])?;
            let offset = usize::try_from(offset).map_err(|_| Reply::error("ERR offset is out of range"))?;
            // Setting nothing never grows the string, wherever the offset (Redis checks the same).
            if !args[2].is_empty() && offset.saturating_add(args[2].len()) > MAX_STRING {
                return Err(Reply::error("ERR string exceeds maximum allowed size (proto-max-bulk-len)"));
            }
            Command::SetRange { key: key(), offset, value: args[2].clone() }
        }
        "del" | "unlink" => Command::Del { keys: args.to_vec() },
        "exists" => Command::Exists { keys: args.to_vec() },
        "expire" | "pexpire" | "expireat" | "pexpireat" => {
            let unit = if name.starts_with('p') { Unit::Millis } else { Unit::Seconds };
            let relative = (!name.ends_with("at")).then_some(now_ms);
            let at = expire_at_any(&name, &args[1], unit, relative)?;
            Command::Expire { key: key(), at, condition: expire_condition(&args[2..])? }
        }
        "ttl" | "pttl" => Command::Ttl { key: key(), millis: name == "pttl" },
        "persist" => Command::Persist { key: key() },
        "type" => Command::Type { key: key() },
        "hset" | "hmset" => {
            if args.len() % 2 != 1 {
                return Err(crate::connection::arity(&name));
            }
            let pairs = args[1..].chunks_exact(2).map(|pair| (pair[0].clone(), pair[1].clone())).collect();
            Command::HSet { key: key(), pairs, answer_ok: name == "hmset" }
        }
        "hsetnx" => Command::HSetNx { key: key(), field: args[1].clone(), value: args[2].clone() },
        "hget" => Command::HGet { key: key(), field: args[1].clone() },
        "hmget" => Command::HMGet { key: key(), fields: args[1..].to_vec() },
        "hgetall" => Command::HGetAll { key: key(), part: HashPart::Pairs },
        "hkeys" => Command::HGetAll { key: key(), part: HashPart::Fields },
        "hvals" => Command::HGetAll { key: key(), part: HashPart::Values },
        "hdel" => Command::HDel { key: key(), fields: args[1..].to_vec() },
        "hexists" => Command::HExists { key: key(), field: args[1].clone() },
        "hlen" => Command::HLen { key: key() },
        "hstrlen" => Command::HStrLen { key: key(), field: args[1].clone() },
        "hincrby" => Command::HIncrBy { key: key(), field: args[1].clone(), by: integer(&args[2])? },
        "hincrbyfloat" => Command::HIncrByFloat { key: key(), field: args[1].clone(), by: float(&args[2])? },
        "dbsize" => Command::DbSize,
        "keys" => Command::Keys { pattern: key() },
        "flushdb" | "flushall" => match args {
            [] => Command::Flush,
            [mode] if mode.eq_ignore_ascii_case(b"ASYNC") || mode.eq_ignore_ascii_case(b"SYNC") => Command::Flush,
            _ => return Err(Reply::error("ERR syntax error")),
        },
        "rename" | "renamenx" => Command::Rename { key: key(), to: args[1].clone(), only_new: name == "renamenx" },
        "sadd" => Command::SAdd { key: key(), members: args[1..].to_vec() },
        "srem" => Command::SRem { key: key(), members: args[1..].to_vec() },
        "smembers" => Command::SMembers { key: key() },
        "sismember" => Command::SIsMember { key: key(), members: args[1..].to_vec(), many: false },
        "smismember" => Command::SIsMember { key: key(), members: args[1..].to_vec(), many: true },
        "scard" => Command::SCard { key: key() },
        "sinter" | "sunion" | "sdiff" | "sinterstore" | "sunionstore" | "sdiffstore" => {
            let op = match &name[..4] {
                "sint" => SetOp::Inter,
                "suni" => SetOp::Union,
                _ => SetOp::Diff,
            };
            match name.ends_with("store") {
                true => Command::SCombine { op, keys: args[1..].to_vec(), store: Some(key()) },
                false => Command::SCombine { op, keys: args.to_vec(), store: None },
            }
        }
        "spop" => match args {
            [_] => Command::SPop { key: key(), count: None, seed: 0 },
            [_, count] => match integer(count) {
                Ok(count) if count >= 0 => Command::SPop { key: key(), count: Some(count as u64), seed: 0 },
                _ => return Err(Reply::error("ERR value is out of range, must be positive")),
            },
            _ => return Err(Reply::error("ERR syntax error")),
        },
        "lpush" | "rpush" | "lpushx" | "rpushx" => Command::Push {
            key: key(),
            elements: args[1..].to_vec(),
            end: if name.starts_with('l') { End::Left } else { End::Right },
            only_existing: name.ends_with('x'),
        },
        "lpop" | "rpop" => {
            let end = if name.starts_with('l') { End::Left } else { End::Right };
            match args {
                [_] => Command::Pop { key: key(), end, count: None },
                [_, count] => match integer(count) {
                    Ok(count) if count >= 0 => Command::Pop { key: key(), end, count: Some(count as u64) },
                    _ => return Err(Reply::error("ERR value is out of range, must be positive")),
                },
                _ => return Err(crate::connection::arity(&name)),
            }
        }
        "lrange" => Command::LRange { key: key(), start: integer(&args[1])?, stop: integer(&args[2])? },
        "llen" => Command::LLen { key: key() },
        "lindex" => Command::LIndex { key: key(), index: integer(&args[1])? },
        "lset" => Command::LSet { key: key(), index: integer(&args[1])?, element: args[2].clone() },
        "lrem" => Command::LRem { key: key(), count: integer(&args[1])?, element: args[2].clone() },
        "ltrim" => Command::LTrim { key: key(), start: integer(&args[1])?, stop: integer(&args[2])? },
        "linsert" => {
            let after = match args[1].to_ascii_uppercase().as_slice() {
                b"BEFORE" => false,
                b"AFTER" => true,
                _ => return Err(Reply::error("ERR syntax error")),
            };
            Command::LInsert { key: key(), after, pivot: args[2].clone(), element: args[3].clone() }
        }
        "lpos" => lpos(args)?,
        "scan" => scan(None, args)?,
        "hscan" | "sscan" | "zscan" => scan(Some(&name), args)?,
        "randomkey" => Command::RandomKey { seed: 0 },
        "zadd" => zadd(args)?,
        "zrem" => Command::ZRem { key: key(), members: args[1..].to_vec() },
        "zscore" => Command::ZScore { key: key(), members: args[1..].to_vec(), many: false },
        "zmscore" => Command::ZScore { key: key(), members: args[1..].to_vec(), many: true },
        "zincrby" => Command::ZIncrBy { key: key(), by: float(&args[1])?, member: args[2].clone() },
        "zcard" => Command::ZCard { key: key() },
        "zcount" => Command::ZCount { key: key(), min: score_bound(&args[1])?, max: score_bound(&args[2])? },
        "zrank" | "zrevrank" => {
            let with_score = match &args[2..] {
                [] => false,
                [option] if option.eq_ignore_ascii_case(b"WITHSCORE") => true,
                _ => return Err(Reply::error("ERR syntax error")),
            };
            Command::ZRank { key: key(), member: args[1].clone(), reverse: name == "zrevrank", with_score }
        }
        "zrange" | "zrangebyscore" | "zrevrangebyscore" | "zrevrange" | "zrangebylex" | "zrevrangebylex" => {
            zrange(&name, args)?
        }
        "zpopmin" | "zpopmax" => match args {
            [_] => Command::ZPop { key: key(), max: name == "zpopmax", count: None },
            [_, count] => match integer(count) {
                Ok(count) if count >= 0 => {
                    Command::ZPop { key: key(), max: name == "zpopmax", count: Some(count as u64) }
                }
                _ => return Err(Reply::error("ERR value is out of range, must be positive")),
            },
            _ => return Err(Reply::error("ERR syntax error")),
        },
        "srandmember" => match args {
            [_] => Command::SRandMember { key: key(), count: None, seed: 0 },
            [_, count] => Command::SRandMember { key: key(), count: Some(integer(count)?), seed: 0 },
            _ => return Err(Reply::error("ERR syntax error")),
        },
        other => unreachable!("{other} is in the command table but not parsed"),
    })
}

/// A score as `ZADD` and `ZINCRBY` read it: any float but NaN, `inf` included.
fn score(text: &[u8]) -> Result<f64, Reply> {
    float(text).map(|value| if value == 0.0 { 0.0 } else { value })
}

/// `-inf`, `+inf`, `1.5` or `(1.5`.
fn score_bound(text: &[u8]) -> Result<ScoreBound, Reply> {
    let invalid = || Reply::error("ERR min or max is not a float");
    let (text, exclusive) = match text.strip_prefix(b"(") {
        Some(rest) => (rest, true),
        None => (text, false),
    };
    let value = float(text).map_err(|_| invalid())?;
    Ok(ScoreBound { value, exclusive })
}

/// `-`, `+`, `[member` or `(member`.
fn lex_bound(text: &[u8]) -> Result<LexBound, Reply> {
    match text.split_first() {
        Some((b'-', [])) => Ok(LexBound::Least),
        Some((b'+', [])) => Ok(LexBound::Greatest),
        Some((b'[', member)) => Ok(LexBound::Inclusive(member.to_vec())),
        Some((b'(', member)) => Ok(LexBound::Exclusive(member.to_vec())),
        _ => Err(Reply::error("ERR min or max not valid string range item")),
    }
}

/// `ZADD key [NX|XX] [GT|LT] [CH] [INCR] score member...`, checked as Redis checks it.
fn zadd(args: &[Bytes]) -> Result<Command, Reply> {
    let mut options = ZAddOptions::default();
    let mut at = 1;
    while let Some(word) = args.get(at) {
        match word.to_ascii_uppercase().as_slice() {
            b"NX" => options.existence = Some(Existence::Absent),
            b"XX" => options.existence = Some(Existence::Present),
            b"GT" => options.compare = Some(Direction::Up),
            b"LT" => options.compare = Some(Direction::Down),
            b"CH" => options.changed = true,
            b"INCR" => options.increment = true,
            _ => break,
        }
        at += 1;
    }
    let rest = &args[at..];
    if rest.is_empty() || !rest.len().is_multiple_of(2) {
        return Err(Reply::error("ERR syntax error"));
    }
    // Two words of "GT LT" both set `compare`: Redis refuses them together too.
    let both = |a: &[u8], b: &[u8]| {
        args[1..at].iter().any(|w| w.eq_ignore_ascii_case(a)) && args[1..at].iter().any(|w| w.eq_ignore_ascii_case(b))
    };
    if both(b"NX", b"XX") {
        return Err(Reply::error("ERR XX and NX options at the same time are not compatible"));
    }
    if both(b"GT", b"LT") || (options.existence == Some(Existence::Absent) && options.compare.is_some()) {
        return Err(Reply::error("ERR GT, LT, and/or NX options at the same time are not compatible"));
    }
    if options.increment && rest.len() != 2 {
        return Err(Reply::error("ERR INCR option supports a single increment-element pair"));
    }
    let pairs =
        rest.chunks_exact(2).map(|pair| Ok((score(&pair[0])?, pair[1].clone()))).collect::<Result<_, Reply>>()?;
    Ok(Command::ZAdd { key: args[0].clone(), options, pairs })
}

/// `ZRANGE` and its older forms, read into one command.
fn zrange(name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    let syntax = || Reply::error("ERR syntax error");
    let (mut by_score, mut by_lex, mut reverse) =
        (name.contains("byscore"), name.contains("bylex"), name.starts_with("zrev"));
    let (mut limit, mut with_scores) = (None, false);
    let mut at = 3;
    while let Some(word) = args.get(at) {
        match word.to_ascii_uppercase().as_slice() {
            b"WITHSCORES" if !by_lex || name == "zrange" => with_scores = true,
            b"BYSCORE" if name == "zrange" => by_score = true,
            b"BYLEX" if name == "zrange" => by_lex = true,
            b"REV" if name == "zrange" => reverse = true,
            b"LIMIT" if name != "zrevrange" => {
                let (Some(offset), Some(count)) = (args.get(at + 1), args.get(at + 2)) else { return Err(syntax()) };
                limit = Some((integer(offset)?, integer(count)?));
                at += 2;
            }
            _ => return Err(syntax()),
        }
        at += 1;
    }
    if by_score && by_lex {
        return Err(syntax());
    }
    if limit.is_some() && !by_score && !by_lex {
        return Err(Reply::error(
            "ERR syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX",
        ));
    }
    if with_scores && by_lex {
        return Err(Reply::error("ERR syntax error, WITHSCORES not supported in combination with BYLEX"));
    }
    // Reversed score and member ranges are given from the high end.
    let (low, high) = if reverse && (by_score || by_lex) { (&args[2], &args[1]) } else { (&args[1], &args[2]) };
    let by = match (by_score, by_lex) {
        (true, _) => ZRangeBy::Score { min: score_bound(low)?, max: score_bound(high)? },
        (_, true) => ZRangeBy::Lex { min: lex_bound(low)?, max: lex_bound(high)? },
        _ => ZRangeBy::Rank { start: integer(&args[1])?, stop: integer(&args[2])? },
    };
    Ok(Command::ZRange { key: args[0].clone(), by, reverse, limit, with_scores })
}

/// `SCAN cursor ...`, or `HSCAN`, `SSCAN`, `ZSCAN key cursor ...` (`collection` names which).
fn scan(collection: Option<&str>, args: &[Bytes]) -> Result<Command, Reply> {
    let (over, rest) = match collection {
        Some("hscan") => (ScanOver::Hash(args[0].clone()), &args[1..]),
        Some("sscan") => (ScanOver::Set(args[0].clone()), &args[1..]),
        Some(_) => (ScanOver::SortedSet(args[0].clone()), &args[1..]),
        None => (ScanOver::Keys, args),
    };
    let cursor = std::str::from_utf8(&rest[0])
        .ok()
        .and_then(|text| text.parse::<u64>().ok())
        .ok_or_else(|| Reply::error("ERR invalid cursor"))?;
    let (mut pattern, mut kind, mut novalues) = (None, None, false);
    let mut at = 1;
    while let Some(option) = rest.get(at) {
        let value = rest.get(at + 1);
        match (option.to_ascii_uppercase().as_slice(), value) {
            (b"MATCH", Some(value)) => pattern = Some(value.clone()),
            (b"COUNT", Some(value)) => {
                if integer(value)? < 1 {
                    return Err(Reply::error("ERR syntax error"));
                }
            }
            (b"TYPE", Some(value)) if collection.is_none() => kind = Some(value.to_ascii_lowercase()),
            (b"NOVALUES", _) if collection == Some("hscan") => {
                novalues = true;
                at += 1;
                continue;
            }
            _ => return Err(Reply::error("ERR syntax error")),
        }
        at += 2;
    }
    Ok(Command::Scan { over, cursor, pattern, kind, novalues })
}

/// `LPOS key element [RANK rank] [COUNT count] [MAXLEN len]`, checked as Redis checks it.
fn lpos(args: &[Bytes]) -> Result<Command, Reply> {
    let (mut rank, mut count, mut maxlen) = (1, None, 0);
    let mut options = args[2..].chunks(2);
    for option in options.by_ref() {
        let [name, value] = option else { return Err(Reply::error("ERR syntax error")) };
        let value = integer(value)?;
        match name.to_ascii_uppercase().as_slice() {
            b"RANK" if value == 0 => {
                return Err(Reply::error(
                    "ERR RANK can't be zero: use 1 to start from the first match, 2 from the second ... or use negative to start from the end of the list",
                ));
            }
            // Redis refuses the one rank whose magnitude does not fit.
            b"RANK" if value == i64::MIN => {
                return Err(Reply::error("ERR value is out of range, must be positive"));
            }
            b"RANK" => rank = value,
            b"COUNT" if value < 0 => return Err(Reply::error("ERR COUNT can't be negative")),
            b"COUNT" => count = Some(value as u64),
            b"MAXLEN" if value < 0 => return Err(Reply::error("ERR MAXLEN can't be negative")),
            b"MAXLEN" => maxlen = value as u64,
            _ => return Err(Reply::error("ERR syntax error")),
        }
    }
    Ok(Command::LPos { key: args[0].clone(), element: args[1].clone(), rank, count, maxlen })
}

/// Redis's reply to a command it does not know: the name and the first arguments, quoted.
pub(crate) fn unknown_command(request: &[Bytes]) -> Reply {
    let shown = |bytes: &[u8]| String::from_utf8_lossy(&bytes[..bytes.len().min(128)]).into_owned();
    let mut args = String::new();
    for arg in &request[1..] {
        if args.len() >= 128 {
            break;
        }
        args.push_str(&format!("'{}' ", shown(arg)));
    }
    Reply::error(format!("ERR unknown command '{}', with args beginning with: {args}", shown(&request[0])))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Unit {
    Seconds,
    Millis,
}

/// `SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]`, options in any order; an
/// option may be given again (the last value counts), two different expiry options may not.
fn set(name: &str, args: &[Bytes], now_ms: u64) -> Result<Command, Reply> {
    let (mut condition, mut get, mut expiry) = (None, false, Expiry::Clear);
    let mut expiry_option: Option<Bytes> = None;
    let mut at = 2;
    while at < args.len() {
        let option = args[at].to_ascii_uppercase();
        let has_next = at + 1 < args.len();
        let other_expiry = expiry_option.as_ref().is_some_and(|given| *given != option);
        match option.as_slice() {
            b"NX" if condition != Some(Existence::Present) => condition = Some(Existence::Absent),
            b"XX" if condition != Some(Existence::Absent) => condition = Some(Existence::Present),
            b"GET" => get = true,
            b"KEEPTTL" if !other_expiry => expiry = Expiry::Keep,
            b"EX" | b"PX" | b"EXAT" | b"PXAT" if !other_expiry && has_next => {
                let unit = if option.starts_with(b"P") { Unit::Millis } else { Unit::Seconds };
                let relative = (!option.ends_with(b"AT")).then_some(now_ms);
                at += 1;
                expiry = Expiry::At(expire_at(name, &args[at], unit, relative)?);
            }
            _ => return Err(Reply::error("ERR syntax error")),
        }
        if matches!(option.as_slice(), b"KEEPTTL" | b"EX" | b"PX" | b"EXAT" | b"PXAT") {
            expiry_option = Some(option);
        }
        at += 1;
    }
    let reply = if get { SetReply::Old } else { SetReply::Ok };
    Ok(Command::Set { key: args[0].clone(), value: args[1].clone(), condition, expiry, reply })
}

/// `GETEX key [EX s|PX ms|EXAT s|PXAT ms|PERSIST]`.
fn getex(name: &str, args: &[Bytes], now_ms: u64) -> Result<Command, Reply> {
    let expiry = match &args[1..] {
        [] => Expiry::Keep,
        [option] if option.eq_ignore_ascii_case(b"PERSIST") => Expiry::Clear,
        [option, value] => {
            let option = option.to_ascii_uppercase();
            let unit = match option.as_slice() {
                b"EX" | b"EXAT" => Unit::Seconds,
                b"PX" | b"PXAT" => Unit::Millis,
                _ => return Err(Reply::error("ERR syntax error")),
            };
            let relative = (!option.ends_with(b"AT")).then_some(now_ms);
            Expiry::At(expire_at(name, value, unit, relative)?)
        }
        _ => return Err(Reply::error("ERR syntax error")),
    };
    Ok(Command::GetEx { key: args[0].clone(), expiry })
}

/// An expiry of `SET`, `SETEX` or `GETEX` as an absolute time: it must be a positive integer,
/// and fit in milliseconds once made absolute (`relative` to now, or not).
fn expire_at(name: &str, text: &[u8], unit: Unit, relative: Option<u64>) -> Result<u64, Reply> {
    let value = integer(text)?;
    let invalid = || Reply::error(format!("ERR invalid expire time in '{name}' command"));
    if value <= 0 {
        return Err(invalid());
    }
    let millis = if unit == Unit::Seconds { value.checked_mul(1000) } else { Some(value) };
    let at = millis.and_then(|ms| ms.checked_add(relative.unwrap_or(0) as i64)).ok_or_else(invalid)?;
    Ok(at as u64)
}

/// An expiry of the `EXPIRE` family: any integer (one at or before now deletes the key), made
/// absolute; Redis refuses only what overflows.
fn expire_at_any(name: &str, text: &[u8], unit: Unit, relative: Option<u64>) -> Result<u64, Reply> {
    let value = integer(text)?;
    let invalid = || Reply::error(format!("ERR invalid expire time in '{name}' command"));
    let millis = if unit == Unit::Seconds { value.checked_mul(1000) } else { Some(value) }.ok_or_else(invalid)?;
    let at = millis.checked_add(relative.unwrap_or(0) as i64).ok_or_else(invalid)?;
    Ok(at.max(0) as u64)
}

/// `EXPIRE`'s `NX`, `XX`, `GT`, `LT`: `NX` alone, or `XX` with `GT` or `LT`, never `GT` with
/// `LT`; an option given twice counts once.
fn expire_condition(options: &[Bytes]) -> Result<Option<ExpireCondition>, Reply> {
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for option in options {
        match option.to_ascii_uppercase().as_slice() {
            b"NX" => nx = true,
            b"XX" => xx = true,
            b"GT" => gt = true,
            b"LT" => lt = true,
            _ => return Err(Reply::error(format!("ERR Unsupported option {}", String::from_utf8_lossy(option)))),
        }
    }
    if nx && (xx || gt || lt) {
        return Err(Reply::error("ERR NX and XX, GT or LT options at the same time are not compatible"));
    }
    if gt && lt {
        return Err(Reply::error("ERR GT and LT options at the same time are not compatible"));
    }
    Ok(match (nx, xx, gt, lt) {
        (true, ..) => Some(ExpireCondition::NoExpiry),
        (_, _, true, _) => Some(ExpireCondition::Later),
        (_, true, _, true) => Some(ExpireCondition::HasEarlier),
        (_, false, _, true) => Some(ExpireCondition::Earlier),
        (_, true, ..) => Some(ExpireCondition::HasExpiry),
        _ => None,
    })
}

/// An integer argument, as Redis reads one.
pub fn integer(text: &[u8]) -> Result<i64, Reply> {
    number(text).ok_or_else(|| Reply::error("ERR value is not an integer or out of range"))
}

/// A float argument, as Redis reads one: no spaces, no NaN; `inf` and `-inf` are read.
pub fn float(text: &[u8]) -> Result<f64, Reply> {
    let invalid = || Reply::error("ERR value is not a valid float");
    let text = std::str::from_utf8(text).map_err(|_| invalid())?;
    if text.is_empty() || text.starts_with(char::is_whitespace) || text.ends_with(char::is_whitespace) {
        return Err(invalid());
    }
    let value: f64 = text.parse().map_err(|_| invalid())?;
    if value.is_nan() {
        return Err(invalid());
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> Vec<Bytes> {
        text.split(' ').map(|word| word.as_bytes().to_vec()).collect()
    }

    fn parsed(text: &str) -> Result<Command, Reply> {
        parse(&request(text), 1_000_000)
    }

    fn error(text: &str) -> String {
        match parsed(text) {
            Err(Reply::Error(message)) => message,
            other => panic!("{text}: {other:?}"),
        }
    }

    fn set_of(text: &str) -> (Option<Existence>, Expiry, SetReply) {
        match parsed(text).unwrap() {
            Command::Set { condition, expiry, reply, .. } => (condition, expiry, reply),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn set_options_combine_as_redis_allows() {
        assert_eq!(set_of("SET k v"), (None, Expiry::Clear, SetReply::Ok));
        assert_eq!(set_of("set k v nx get ex 10"), (Some(Existence::Absent), Expiry::At(1_010_000), SetReply::Old));
        assert_eq!(set_of("SET k v XX PX 5"), (Some(Existence::Present), Expiry::At(1_000_005), SetReply::Ok));
        assert_eq!(set_of("SET k v EXAT 2000"), (None, Expiry::At(2_000_000), SetReply::Ok));
        assert_eq!(set_of("SET k v PXAT 7"), (None, Expiry::At(7), SetReply::Ok));
        assert_eq!(set_of("SET k v KEEPTTL"), (None, Expiry::Keep, SetReply::Ok));
        assert_eq!(set_of("SET k v EX 1 nx EX 2 NX"), (Some(Existence::Absent), Expiry::At(1_002_000), SetReply::Ok));
        assert_eq!(set_of("SETNX k v"), (Some(Existence::Absent), Expiry::Clear, SetReply::Flag));
        assert_eq!(set_of("SETEX k 3 v"), (None, Expiry::At(1_003_000), SetReply::Ok));
        assert_eq!(set_of("PSETEX k 3 v"), (None, Expiry::At(1_000_003), SetReply::Ok));
        assert_eq!(set_of("GETSET k v"), (None, Expiry::Clear, SetReply::Old));
        for bad in ["SET k v NX XX", "SET k v EX 1 PX 1", "SET k v KEEPTTL EX 1", "SET k v EX", "SET k v FOO"] {
            assert_eq!(error(bad), "ERR syntax error", "{bad}");
        }
        assert_eq!(error("SET k v EX 0"), "ERR invalid expire time in 'set' command");
        assert_eq!(error("SET k v PX -1"), "ERR invalid expire time in 'set' command");
        assert_eq!(error("SET k v EX 9223372036854775"), "ERR invalid expire time in 'set' command");
        assert_eq!(error("SETEX k 0 v"), "ERR invalid expire time in 'setex' command");
        assert_eq!(error("SET k v EX ten"), "ERR value is not an integer or out of range");
    }

    #[test]
    fn arity_and_unknown_commands_answer_as_redis_does() {
        assert_eq!(error("GET"), "ERR wrong number of arguments for 'get' command");
        assert_eq!(error("get a b"), "ERR wrong number of arguments for 'get' command");
        assert_eq!(error("MSET a b c"), "ERR wrong number of arguments for 'mset' command");
        assert_eq!(error("FOO a b"), "ERR unknown command 'FOO', with args beginning with: 'a' 'b' ");
        assert_eq!(parse(&[], 0), Err(Reply::error("ERR empty command")));
    }

    #[test]
    fn numbers_and_ranges_are_checked() {
        assert_eq!(parsed("INCRBY k -5"), Ok(Command::IncrBy { key: b"k".to_vec(), by: -5 }));
        assert_eq!(parsed("DECRBY k 5"), Ok(Command::IncrBy { key: b"k".to_vec(), by: -5 }));
        assert_eq!(error("DECRBY k -9223372036854775808"), "ERR decrement would overflow");
        assert_eq!(error("INCRBY k 1.5"), "ERR value is not an integer or out of range");
        assert_eq!(parsed("INCRBYFLOAT k -1.5e2"), Ok(Command::IncrByFloat { key: b"k".to_vec(), by: -150.0 }));
        for bad in ["nan", "abc", " 1", "1 ", ""] {
            let request = vec![b"INCRBYFLOAT".to_vec(), b"k".to_vec(), bad.as_bytes().to_vec()];
            let refused = parse(&request, 0);
            assert!(
                matches!(&refused, Err(Reply::Error(e)) if e == "ERR value is not a valid float"),
                "{bad:?}: {refused:?}"
            );
        }
        assert_eq!(error("SETRANGE k -1 v"), "ERR offset is out of range");
        assert_eq!(error("SETRANGE k 536870912 v"), "ERR string exceeds maximum allowed size (proto-max-bulk-len)");
        let nothing = vec![b"SETRANGE".to_vec(), b"k".to_vec(), b"99999999999".to_vec(), Vec::new()];
        assert_eq!(
            parse(&nothing, 0),
            Ok(Command::SetRange { key: b"k".to_vec(), offset: 99_999_999_999, value: vec![] })
        );
        assert_eq!(parsed("GETRANGE k 0 -1"), Ok(Command::GetRange { key: b"k".to_vec(), start: 0, end: -1 }));
    }

    #[test]
    fn expire_times_become_absolute_and_conditions_are_checked() {
        let expire = |text: &str| match parsed(text).unwrap() {
            Command::Expire { at, condition, .. } => (at, condition),
            other => panic!("{other:?}"),
        };
        assert_eq!(expire("EXPIRE k 10"), (1_010_000, None));
        assert_eq!(expire("PEXPIRE k 10 GT"), (1_000_010, Some(ExpireCondition::Later)));
        assert_eq!(expire("EXPIREAT k 5 NX"), (5_000, Some(ExpireCondition::NoExpiry)));
        assert_eq!(expire("PEXPIREAT k 5 xx lt"), (5, Some(ExpireCondition::HasEarlier)));
        assert_eq!(expire("EXPIRE k 5 XX GT XX"), (1_005_000, Some(ExpireCondition::Later)));
        assert_eq!(expire("EXPIRE k 5 LT"), (1_005_000, Some(ExpireCondition::Earlier)));
        assert_eq!(expire("EXPIRE k 5 xx"), (1_005_000, Some(ExpireCondition::HasExpiry)));
        assert_eq!(expire("EXPIRE k -10"), (990_000, None), "in the past: the key is deleted");
        assert_eq!(error("EXPIRE k 10 NX XX"), "ERR NX and XX, GT or LT options at the same time are not compatible");
        assert_eq!(error("EXPIRE k 10 GT LT"), "ERR GT and LT options at the same time are not compatible");
        assert_eq!(error("EXPIRE k 10 FOO"), "ERR Unsupported option FOO");
        assert_eq!(error("EXPIRE k 9223372036854775807"), "ERR invalid expire time in 'expire' command");
        assert_eq!(error("PEXPIRE k 9223372036854775807"), "ERR invalid expire time in 'pexpire' command");
        let getex = |text: &str| match parsed(text).unwrap() {
            Command::GetEx { expiry, .. } => expiry,
            other => panic!("{other:?}"),
        };
        assert_eq!(getex("GETEX k"), Expiry::Keep);
        assert_eq!(getex("GETEX k PERSIST"), Expiry::Clear);
        assert_eq!(getex("GETEX k EX 2"), Expiry::At(1_002_000));
        assert_eq!(error("GETEX k EX"), "ERR syntax error");
        assert_eq!(error("GETEX k EX 0"), "ERR invalid expire time in 'getex' command");
    }
}
