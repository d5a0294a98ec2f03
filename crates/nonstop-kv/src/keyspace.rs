//! The keys and their values, and the string and key commands on them, as Redis runs them.
//!
//! A [`Keyspace`] is ordinary Rust collections over an allocator of the caller's choice: the
//! region's heap allocator when the `kv` service keeps it in a mirrored region (so a backup
//! holds the same keyspace at the same address), the global one in tests. Every command is
//! given the time it was received; a key whose expiry is at or before that time is gone for
//! it, whether or not its memory has been reclaimed yet.
//!
//! Nothing here can be undone, since transparent mode keeps no undo: a command decides every
//! refusal (a wrong type, an overflow, a full region) before its first change. Memory is
//! reserved with `try_reserve` first, so a full region answers Redis's `-OOM` and changes
//! nothing, as Redis does with `maxmemory-policy noeviction`.
//!
//! ```
//! use allocator_api2::alloc::Global;
//! use nonstop_kv::command::parse;
//! use nonstop_kv::keyspace::Keyspace;
//! use nonstop_kv::resp::Reply;
//!
//! let mut keys = Keyspace::new_in(Global);
//! let run = |keys: &mut Keyspace<Global>, words: &[&str], now_ms| {
//!     let request: Vec<Vec<u8>> = words.iter().map(|w| w.as_bytes().to_vec()).collect();
//!     keys.execute(&parse(&request, now_ms).unwrap(), now_ms)
//! };
//! assert_eq!(run(&mut keys, &["SET", "k", "1", "PX", "100"], 0), Reply::ok());
//! assert_eq!(run(&mut keys, &["INCR", "k"], 50), Reply::Integer(2));
//! assert_eq!(run(&mut keys, &["GET", "k"], 100), Reply::Null); // expired
//! ```

use crate::command::{Command, Existence, ExpireCondition, Expiry, HashPart, MAX_STRING, SetReply};
use crate::glob::glob_matches;
use crate::resp::{Reply, format_double, number};
use allocator_api2::alloc::Allocator;
use allocator_api2::vec::Vec as AllocVec;
use foldhash::fast::FixedState;
use std::hash::{Hash, Hasher};

mod lists;
mod scan;
mod sets;
mod watch;
mod zsets;

/// A key or a string value, in the keyspace's allocator.
pub type Bytes<A> = AllocVec<u8, A>;

/// What Redis answers a command on a key of another type.
pub const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
/// What Redis answers a write when memory is full (`maxmemory-policy noeviction`).
pub const OOM: &str = "OOM command not allowed when used memory > 'maxmemory'.";

/// A hash's fields and their values.
pub type Fields<A> = hashbrown::HashMap<Bytes<A>, Bytes<A>, FixedState, A>;

/// A set's members.
pub type Members<A> = hashbrown::HashSet<Bytes<A>, FixedState, A>;

/// A collection of a key, boxed in the keyspace's allocator: every entry of the table is as
/// large as its largest value, so collections (40 to 80 bytes each) live behind a pointer and
/// an entry stays the size of a string.
pub type Boxed<T, A> = allocator_api2::boxed::Box<T, A>;

/// A value of a key.
#[derive(Debug)]
pub enum Value<A: Allocator> {
    /// A string (integers and floats are strings that read as numbers).
    String(Bytes<A>),
    /// A hash: fields and their string values; never empty (the key goes with its last field).
    Hash(Boxed<Fields<A>, A>),
    /// A set of strings; never empty (the key goes with its last member).
    Set(Boxed<Members<A>, A>),
    /// A list of strings; never empty (the key goes with its last element).
    List(Boxed<lists::List<A>, A>),
    /// Members ordered by score; never empty (the key goes with its last member).
    SortedSet(Boxed<zsets::SortedSet<A>, A>),
}

/// A collection a key may hold, found in its value.
trait Collection<A: Allocator>: Sized {
    fn of(value: &Value<A>) -> Option<&Self>;
    fn of_mut(value: &mut Value<A>) -> Option<&mut Self>;
}

macro_rules! collection {
    ($type:ty, $variant:ident) => {
        impl<A: Allocator> Collection<A> for $type {
            fn of(value: &Value<A>) -> Option<&Self> {
                if let Value::$variant(collection) = value { Some(collection) } else { None }
            }
            fn of_mut(value: &mut Value<A>) -> Option<&mut Self> {
                if let Value::$variant(collection) = value { Some(collection) } else { None }
            }
        }
    };
}

collection!(Fields<A>, Hash);
collection!(Members<A>, Set);
collection!(lists::List<A>, List);
collection!(zsets::SortedSet<A>, SortedSet);

impl<A: Allocator> Value<A> {
    /// Its type as `TYPE` names it.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::String(_) => "string",
            Value::Hash(_) => "hash",
            Value::Set(_) => "set",
            Value::List(_) => "list",
            Value::SortedSet(_) => "zset",
        }
    }
}

/// A key's value and when it expires.
#[derive(Debug)]
pub struct Entry<A: Allocator> {
    value: Value<A>,
    expires_at_ms: Deadline,
}

impl<A: Allocator> Entry<A> {
    fn new(value: Value<A>, expires_at_ms: Option<u64>) -> Entry<A> {
        Entry { value, expires_at_ms: Deadline::new(expires_at_ms) }
    }

    /// Overwrites a string of `value`'s length where it lies, and the deadline only if it
    /// changes; `false` (nothing changed) if the entry holds anything else. No allocation is
    /// made or freed, so the write dirties the value's page alone, not the entry's or the
    /// allocator's: a transparent-mode checkpoint diffs every page written since the last, and
    /// the first write to each page after a cut faults.
    fn overwrite(&mut self, value: &[u8], expires_at_ms: Option<u64>) -> bool {
        let Value::String(bytes) = &mut self.value else { return false };
        if bytes.len() != value.len() {
            return false;
        }
        bytes.copy_from_slice(value);
        let expires = Deadline::new(expires_at_ms);
        if self.expires_at_ms != expires {
            self.expires_at_ms = expires;
        }
        true
    }

    /// Whether the key exists at `now_ms`: a key expires at its deadline, not after it.
    fn is_live(&self, now_ms: u64) -> bool {
        self.expires_at_ms.get().is_none_or(|at| at > now_ms)
    }
}

/// When a key expires, in milliseconds since the Unix epoch, in 8 bytes where an `Option<u64>`
/// takes 16 in every slot of the table: 0 is never. A deadline at the epoch itself is kept as
/// 1 ms after it, which is as far in the past for every request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Deadline(u64);

impl Deadline {
    fn new(at: Option<u64>) -> Deadline {
        Deadline(at.map_or(0, |at| at.max(1)))
    }

    fn get(self) -> Option<u64> {
        (self.0 != 0).then_some(self.0)
    }
}

/// A key looked up by bytes, without building a key in the allocator.
struct KeyRef<'a>(&'a [u8]);

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As a key hashes: the slice it derefs to.
        self.0.hash(state)
    }
}

impl<A: Allocator> hashbrown::Equivalent<Bytes<A>> for KeyRef<'_> {
    fn equivalent(&self, key: &Bytes<A>) -> bool {
        self.0 == key.as_slice()
    }
}

impl<A: Allocator> hashbrown::Equivalent<Key<A>> for KeyRef<'_> {
    fn equivalent(&self, key: &Key<A>) -> bool {
        self.0 == &key[..]
    }
}

/// A key as the keyspace's table holds it: its bytes, boxed (a pointer and a length, 8 bytes
/// less than a vector in every slot of the table).
pub type Key<A> = Boxed<[u8], A>;

/// The keyspace of one database.
#[derive(Debug)]
pub struct Keyspace<A: Allocator + Clone> {
    keys: hashbrown::HashMap<Key<A>, Entry<A>, FixedState, A>,
    alloc: A,
}

/// Why a command changed nothing: the error it answers.
type Refused = Reply;

impl<A: Allocator + Clone> Keyspace<A> {
    /// An empty keyspace whose memory comes from `alloc`.
    pub fn new_in(alloc: A) -> Keyspace<A> {
        Keyspace { keys: hashbrown::HashMap::with_hasher_in(FixedState::default(), alloc.clone()), alloc }
    }

    /// Keys held, expired ones not yet reclaimed included (as Redis's `DBSIZE` counts).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The allocator its memory comes from.
    pub fn allocator(&self) -> &A {
        &self.alloc
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key's entry, if it exists at `now_ms`.
    fn live(&self, key: &[u8], now_ms: u64) -> Option<&Entry<A>> {
        self.keys.get(&KeyRef(key)).filter(|entry| entry.is_live(now_ms))
    }

    /// The key's string at `now_ms`: `Ok(None)` if it does not exist, WRONGTYPE if it is not a
    /// string.
    fn string(&self, key: &[u8], now_ms: u64) -> Result<Option<&[u8]>, Refused> {
        match self.live(key, now_ms) {
            None => Ok(None),
            Some(Entry { value: Value::String(bytes), .. }) => Ok(Some(bytes.as_slice())),
            Some(_) => Err(Reply::error(WRONGTYPE)),
        }
    }

    /// The key's hash at `now_ms`: `Ok(None)` if it does not exist, WRONGTYPE if it is not a
    /// hash.
    fn hash(&self, key: &[u8], now_ms: u64) -> Result<Option<&Fields<A>>, Refused> {
        self.typed(key, now_ms)
    }

    /// The key's collection of type `T` at `now_ms`: `Ok(None)` if the key does not exist,
    /// WRONGTYPE if it holds another type.
    fn typed<T: Collection<A>>(&self, key: &[u8], now_ms: u64) -> Result<Option<&T>, Refused> {
        match self.live(key, now_ms) {
            None => Ok(None),
            Some(entry) => T::of(&entry.value).map(Some).ok_or_else(|| Reply::error(WRONGTYPE)),
        }
    }

    /// The key's collection of type `T`, which the caller found live.
    fn typed_mut<T: Collection<A>>(&mut self, key: &[u8]) -> &mut T {
        let entry = self.keys.get_mut(&KeyRef(key)).expect("a live key, found by the caller");
        T::of_mut(&mut entry.value).expect("a collection of this type, checked by the caller")
    }

    /// Sets `pairs` of the key's hash (made if absent) and answers how many fields are new.
    /// Every allocation comes before the first change, so a full allocator changes nothing.
    fn set_fields(&mut self, key: &[u8], pairs: &[(&[u8], &[u8])], now_ms: u64) -> Result<usize, Refused> {
        self.reclaim(key, now_ms);
        let existing = self.hash(key, now_ms)?;
        let mut new_fields = std::collections::HashSet::new();
        let mut staged = Vec::with_capacity(pairs.len());
        for &(field, value) in pairs {
            let is_new = existing.is_none_or(|fields| !fields.contains_key(&KeyRef(field))) && new_fields.insert(field);
            let field_bytes = if is_new { Some(self.bytes(field)?) } else { None };
            staged.push((field, field_bytes, self.bytes(value)?));
        }
        let made = match existing {
            Some(_) => None,
            None => {
                let fields = Fields::with_hasher_in(FixedState::default(), self.alloc.clone());
                Some((self.key(key)?, self.boxed(fields)?))
            }
        };
        if made.is_some() {
            self.keys.try_reserve(1).map_err(|_| Reply::error(OOM))?;
        }
        let (stored, mut fresh) = made.map_or((None, None), |(stored, fields)| (Some(stored), Some(fields)));
        let fields = match fresh.as_mut() {
            Some(fields) => fields,
            None => match &mut self.keys.get_mut(&KeyRef(key)).expect("a hash, checked above").value {
                Value::Hash(fields) => fields,
                _ => unreachable!("checked a hash above"),
            },
        };
        fields.try_reserve(new_fields.len()).map_err(|_| Reply::error(OOM))?;
        // From here on nothing allocates, and nothing is refused.
        for (field, field_bytes, value) in staged {
            match field_bytes {
                Some(field_bytes) => {
                    fields.insert(field_bytes, value);
                }
                None => *fields.get_mut(&KeyRef(field)).expect("present or staged before") = value,
            }
        }
        if let (Some(stored), Some(fields)) = (stored, fresh) {
            self.keys.insert(stored, Entry::new(Value::Hash(fields), None));
        }
        Ok(new_fields.len())
    }

    /// Reclaims the key if it expired at or before `now_ms`, so a write finds it absent.
    fn reclaim(&mut self, key: &[u8], now_ms: u64) {
        if self.keys.get(&KeyRef(key)).is_some_and(|entry| !entry.is_live(now_ms)) {
            self.keys.remove(&KeyRef(key));
        }
    }

    /// `key` as the table holds it, in the keyspace's allocator, or `-OOM`.
    fn key(&self, key: &[u8]) -> Result<Key<A>, Refused> {
        // Exactly as long as the key, so boxing it moves nothing.
        Ok(self.bytes(key)?.into_boxed_slice())
    }

    /// `value` in a box of the keyspace's allocator, or `-OOM`.
    fn boxed<T>(&self, value: T) -> Result<Boxed<T, A>, Refused> {
        Boxed::try_new_in(value, self.alloc.clone()).map_err(|_| Reply::error(OOM))
    }

    /// A copy of `bytes` in the keyspace's allocator, or `-OOM`.
    fn bytes(&self, bytes: &[u8]) -> Result<Bytes<A>, Refused> {
        let mut copy = AllocVec::new_in(self.alloc.clone());
        copy.try_reserve_exact(bytes.len()).map_err(|_| Reply::error(OOM))?;
        copy.extend_from_slice(bytes);
        Ok(copy)
    }

    fn put(&mut self, key: &[u8], value: Value<A>, expires_at_ms: Option<u64>) -> Result<(), Refused> {
        if let Some(entry) = self.keys.get_mut(&KeyRef(key)) {
            *entry = Entry::new(value, expires_at_ms);
            return Ok(());
        }
        let key = self.key(key)?;
        self.keys.try_reserve(1).map_err(|_| Reply::error(OOM))?;
        self.keys.insert(key, Entry::new(value, expires_at_ms));
        Ok(())
    }

    /// Answers a command that only reads, or `None` if `command` writes
    /// ([`Command::writes`]). Queries use this: it needs only `&self`, and an expired key is
    /// absent without being reclaimed.
    pub fn read(&self, command: &Command, now_ms: u64) -> Option<Reply> {
        if command.writes() {
            return None;
        }
        Some(match command {
            Command::Get { key } => answer(self.string(key, now_ms).map(bulk_or_null)),
            Command::MGet { keys } => Reply::Array(
                keys.iter()
                    .map(|key| self.string(key, now_ms).ok().flatten().map_or(Reply::Null, Reply::bulk))
                    .collect(),
            ),
            Command::StrLen { key } => {
                answer(self.string(key, now_ms).map(|s| Reply::Integer(s.map_or(0, |s| s.len() as i64))))
            }
            Command::GetRange { key, start, end } => answer(
                self.string(key, now_ms).map(|s| Reply::bulk(range(s.unwrap_or_default(), *start, *end).to_vec())),
            ),
            Command::Exists { keys } => {
                Reply::Integer(keys.iter().filter(|key| self.live(key, now_ms).is_some()).count() as i64)
            }
            Command::Ttl { key, millis } => Reply::Integer(match self.live(key, now_ms) {
                None => -2,
                Some(entry) => match entry.expires_at_ms.get() {
                    None => -1,
                    Some(at) => {
                        let left = (at - now_ms) as i64;
                        if *millis { left } else { left.saturating_add(500) / 1000 }
                    }
                },
            }),
            Command::Type { key } => {
                Reply::Simple(self.live(key, now_ms).map_or("none", |entry| entry.value.type_name()).into())
            }
            Command::HGet { key, field } => answer(
                self.hash(key, now_ms).map(|h| bulk_or_null(h.and_then(|h| h.get(&KeyRef(field))).map(|v| &v[..]))),
            ),
            Command::HMGet { key, fields } => answer(self.hash(key, now_ms).map(|h| {
                Reply::Array(
                    fields
                        .iter()
                        .map(|field| bulk_or_null(h.and_then(|h| h.get(&KeyRef(field))).map(|v| &v[..])))
                        .collect(),
                )
            })),
            Command::HGetAll { key, part } => answer(self.hash(key, now_ms).map(|h| {
                let pairs = h.into_iter().flatten();
                match part {
                    HashPart::Pairs => {
                        Reply::Map(pairs.map(|(f, v)| (Reply::bulk(f.to_vec()), Reply::bulk(v.to_vec()))).collect())
                    }
                    HashPart::Fields => Reply::Array(pairs.map(|(f, _)| Reply::bulk(f.to_vec())).collect()),
                    HashPart::Values => Reply::Array(pairs.map(|(_, v)| Reply::bulk(v.to_vec())).collect()),
                }
            })),
            Command::HExists { key, field } => answer(
                self.hash(key, now_ms)
                    .map(|h| Reply::Integer(i64::from(h.is_some_and(|h| h.contains_key(&KeyRef(field)))))),
            ),
            Command::HLen { key } => {
                answer(self.hash(key, now_ms).map(|h| Reply::Integer(h.map_or(0, |h| h.len() as i64))))
            }
            Command::HStrLen { key, field } => answer(
                self.hash(key, now_ms)
                    .map(|h| Reply::Integer(h.and_then(|h| h.get(&KeyRef(field))).map_or(0, |v| v.len() as i64))),
            ),
            Command::DbSize => Reply::Integer(self.keys.len() as i64),
            // The memory figures are the allocator's, which the service adds.
            Command::Stats => Reply::Array(vec![
                Reply::Integer(self.keys.len() as i64),
                Reply::Integer(self.keys.values().filter(|entry| entry.expires_at_ms.get().is_some()).count() as i64),
            ]),
            Command::Keys { pattern } => Reply::Array(
                self.keys
                    .iter()
                    .filter(|(key, entry)| entry.is_live(now_ms) && glob_matches(pattern, key))
                    .map(|(key, _)| Reply::bulk(key.to_vec()))
                    .collect(),
            ),
            Command::SMembers { .. }
            | Command::SIsMember { .. }
            | Command::SCard { .. }
            | Command::SCombine { store: None, .. }
            | Command::SRandMember { .. } => answer(self.read_set(command, now_ms)),
            Command::LRange { .. } | Command::LLen { .. } | Command::LIndex { .. } | Command::LPos { .. } => {
                answer(self.read_list(command, now_ms))
            }
            Command::Scan { .. } | Command::RandomKey { .. } => answer(self.scan(command, now_ms)),
            Command::Digest { .. } | Command::Unchanged { .. } => self.watch(command, now_ms),
            Command::ZScore { .. }
            | Command::ZCard { .. }
            | Command::ZCount { .. }
            | Command::ZRank { .. }
            | Command::ZRange { .. } => answer(self.read_zset(command, now_ms)),
            writes => unreachable!("{writes:?} writes"),
        })
    }

    /// Runs `command`, received at `now_ms`, and answers it as Redis does.
    pub fn execute(&mut self, command: &Command, now_ms: u64) -> Reply {
        match command.writes() {
            false => self.read(command, now_ms).expect("a command that does not write is read"),
            true => answer(self.write(command, now_ms)),
        }
    }

    fn write(&mut self, command: &Command, now_ms: u64) -> Result<Reply, Refused> {
        match command {
            Command::Set { key, value, condition, expiry, reply } => {
                // One lookup serves the whole command when the key is live or absent: a
                // `SET` is most of a write load, and each lookup compares keys that lie on
                // other cache lines.
                let mut found = self.keys.get_mut(&KeyRef(key));
                if found.as_ref().is_some_and(|entry| !entry.is_live(now_ms)) {
                    // Expired: reclaimed, so the write finds it absent.
                    self.keys.remove(&KeyRef(key));
                    found = None;
                }
                let old_value = match (reply, found.as_deref()) {
                    (SetReply::Old, Some(Entry { value: Value::String(bytes), .. })) => Some(bytes.to_vec()),
                    (SetReply::Old, Some(_)) => return Err(Reply::error(WRONGTYPE)),
                    _ => None,
                };
                let allowed = match condition {
                    None => true,
                    Some(Existence::Absent) => found.is_none(),
                    Some(Existence::Present) => found.is_some(),
                };
                if allowed {
                    let expires = match expiry {
                        Expiry::Clear => None,
                        Expiry::Keep => found.as_ref().and_then(|entry| entry.expires_at_ms.get()),
                        Expiry::At(at) => Some(*at),
                    };
                    if expires.is_some_and(|at| at <= now_ms) {
                        // Set and expired at once: Redis deletes it.
                        self.keys.remove(&KeyRef(key));
                    } else if !found.is_some_and(|entry| entry.overwrite(value, expires)) {
                        let value = self.bytes(value)?;
                        self.put(key, Value::String(value), expires)?;
                    }
                }
                Ok(match (reply, allowed) {
                    (SetReply::Ok, true) => Reply::ok(),
                    (SetReply::Ok, false) => Reply::Null,
                    (SetReply::Flag, allowed) => Reply::Integer(i64::from(allowed)),
                    (SetReply::Old, _) => old_value.map_or(Reply::Null, Reply::bulk),
                })
            }
            Command::GetDel { key } => {
                let value = self.string(key, now_ms)?.map(<[u8]>::to_vec);
                self.keys.remove(&KeyRef(key));
                Ok(value.map_or(Reply::Null, Reply::bulk))
            }
            Command::GetEx { key, expiry } => {
                let Some(value) = self.string(key, now_ms)?.map(<[u8]>::to_vec) else { return Ok(Reply::Null) };
                match expiry {
                    Expiry::Keep => {}
                    Expiry::At(at) if *at <= now_ms => {
                        self.keys.remove(&KeyRef(key));
                    }
                    expiry => {
                        let entry = self.keys.get_mut(&KeyRef(key)).expect("live above");
                        entry.expires_at_ms = Deadline::new(if let Expiry::At(at) = expiry { Some(*at) } else { None });
                    }
                }
                Ok(Reply::bulk(value))
            }
            Command::MSet { pairs, only_new } => {
                if *only_new && pairs.iter().any(|(key, _)| self.live(key, now_ms).is_some()) {
                    return Ok(Reply::Integer(0));
                }
                // Every value and key allocated, and the map grown, before the first change.
                let mut staged = Vec::with_capacity(pairs.len());
                for (key, value) in pairs {
                    staged.push((key, self.bytes(value)?));
                }
                let new_keys = pairs.iter().filter(|(key, _)| !self.keys.contains_key(&KeyRef(key))).count();
                self.keys.try_reserve(new_keys).map_err(|_| Reply::error(OOM))?;
                let mut new_key_bytes = Vec::with_capacity(new_keys);
                for (key, _) in pairs.iter().filter(|(key, _)| !self.keys.contains_key(&KeyRef(key))) {
                    new_key_bytes.push(self.key(key)?);
                }
                let mut new_key_bytes = new_key_bytes.into_iter();
                for (key, value) in staged {
                    match self.keys.get_mut(&KeyRef(key)) {
                        Some(entry) => *entry = Entry::new(Value::String(value), None),
                        None => {
                            let key = new_key_bytes.next().expect("one staged per new key");
                            self.keys.insert(key, Entry::new(Value::String(value), None));
                        }
                    }
                }
                Ok(if *only_new { Reply::Integer(1) } else { Reply::ok() })
            }
            Command::IncrBy { key, by } => {
                let current = match self.string(key, now_ms)? {
                    None => 0,
                    Some(text) => {
                        number(text).ok_or_else(|| Reply::error("ERR value is not an integer or out of range"))?
                    }
                };
                let next = current
                    .checked_add(*by)
                    .ok_or_else(|| Reply::error("ERR increment or decrement would overflow"))?;
                self.overwrite_keeping_ttl(key, next.to_string().as_bytes(), now_ms)?;
                Ok(Reply::Integer(next))
            }
            Command::IncrByFloat { key, by } => {
                let current = match self.string(key, now_ms)? {
                    None => 0.0,
                    Some(text) => crate::command::float(text)?,
                };
                let next = current + by;
                if !next.is_finite() {
                    return Err(Reply::error("ERR increment would produce NaN or Infinity"));
                }
                let text = format_double(next);
                self.overwrite_keeping_ttl(key, text.as_bytes(), now_ms)?;
                Ok(Reply::bulk(text))
            }
            Command::Append { key, value } => {
                let old = self.string(key, now_ms)?.unwrap_or_default();
                if old.len() + value.len() > MAX_STRING {
                    return Err(Reply::error("ERR string exceeds maximum allowed size (proto-max-bulk-len)"));
                }
                let mut joined = AllocVec::new_in(self.alloc.clone());
                joined.try_reserve_exact(old.len() + value.len()).map_err(|_| Reply::error(OOM))?;
                joined.extend_from_slice(old);
                joined.extend_from_slice(value);
                let len = joined.len();
                self.replace_keeping_ttl(key, joined, now_ms)?;
                Ok(Reply::Integer(len as i64))
            }
            Command::SetRange { key, offset, value } => {
                let old = self.string(key, now_ms)?;
                if value.is_empty() {
                    return Ok(Reply::Integer(old.map_or(0, |s| s.len() as i64)));
                }
                let old = old.unwrap_or_default();
                let len = old.len().max(offset + value.len());
                let mut grown = AllocVec::new_in(self.alloc.clone());
                grown.try_reserve_exact(len).map_err(|_| Reply::error(OOM))?;
                grown.extend_from_slice(old);
                grown.resize(len, 0);
                grown[*offset..offset + value.len()].copy_from_slice(value);
                self.replace_keeping_ttl(key, grown, now_ms)?;
                Ok(Reply::Integer(len as i64))
            }
            Command::Del { keys } => {
                let mut removed = 0;
                for key in keys {
                    self.reclaim(key, now_ms);
                    removed += i64::from(self.keys.remove(&KeyRef(key)).is_some());
                }
                Ok(Reply::Integer(removed))
            }
            Command::Expire { key, at, condition } => {
                let Some(entry) = self.live(key, now_ms) else { return Ok(Reply::Integer(0)) };
                let current = entry.expires_at_ms.get();
                let allowed = match condition {
                    None => true,
                    Some(ExpireCondition::NoExpiry) => current.is_none(),
                    Some(ExpireCondition::HasExpiry) => current.is_some(),
                    Some(ExpireCondition::Later) => current.is_some_and(|current| *at > current),
                    Some(ExpireCondition::Earlier) => current.is_none_or(|current| *at < current),
                    Some(ExpireCondition::HasEarlier) => current.is_some_and(|current| *at < current),
                };
                if !allowed {
                    return Ok(Reply::Integer(0));
                }
                if *at <= now_ms {
                    self.keys.remove(&KeyRef(key));
                } else {
                    self.keys.get_mut(&KeyRef(key)).expect("live above").expires_at_ms = Deadline::new(Some(*at));
                }
                Ok(Reply::Integer(1))
            }
            Command::Persist { key } => {
                let Some(entry) = self.live(key, now_ms) else { return Ok(Reply::Integer(0)) };
                if entry.expires_at_ms.get().is_none() {
                    return Ok(Reply::Integer(0));
                }
                self.keys.get_mut(&KeyRef(key)).expect("live above").expires_at_ms = Deadline::new(None);
                Ok(Reply::Integer(1))
            }
            Command::HSet { key, pairs, answer_ok } => {
                let pairs: Vec<(&[u8], &[u8])> = pairs.iter().map(|(f, v)| (&f[..], &v[..])).collect();
                let new = self.set_fields(key, &pairs, now_ms)?;
                Ok(if *answer_ok { Reply::ok() } else { Reply::Integer(new as i64) })
            }
            Command::HSetNx { key, field, value } => {
                if self.hash(key, now_ms)?.is_some_and(|h| h.contains_key(&KeyRef(field))) {
                    return Ok(Reply::Integer(0));
                }
                self.set_fields(key, &[(field, value)], now_ms)?;
                Ok(Reply::Integer(1))
            }
            Command::HIncrBy { key, field, by } => {
                let current = match self.hash(key, now_ms)?.and_then(|h| h.get(&KeyRef(field))) {
                    None => 0,
                    Some(text) => number(text).ok_or_else(|| Reply::error("ERR hash value is not an integer"))?,
                };
                let next = current
                    .checked_add(*by)
                    .ok_or_else(|| Reply::error("ERR increment or decrement would overflow"))?;
                self.set_fields(key, &[(field, next.to_string().as_bytes())], now_ms)?;
                Ok(Reply::Integer(next))
            }
            Command::HIncrByFloat { key, field, by } => {
                let current = match self.hash(key, now_ms)?.and_then(|h| h.get(&KeyRef(field))) {
                    None => 0.0,
                    Some(text) => {
                        crate::command::float(text).map_err(|_| Reply::error("ERR hash value is not a float"))?
                    }
                };
                let next = current + by;
                if !next.is_finite() {
                    return Err(Reply::error("ERR increment would produce NaN or Infinity"));
                }
                let text = format_double(next);
                self.set_fields(key, &[(field, text.as_bytes())], now_ms)?;
                Ok(Reply::bulk(text))
            }
            Command::HDel { key, fields } => {
                if self.hash(key, now_ms)?.is_none() {
                    return Ok(Reply::Integer(0));
                }
                let Some(Entry { value: Value::Hash(hash), .. }) = self.keys.get_mut(&KeyRef(key)) else {
                    unreachable!("a live hash, checked above")
                };
                let removed = fields.iter().filter(|field| hash.remove(&KeyRef(field)).is_some()).count();
                if hash.is_empty() {
                    self.keys.remove(&KeyRef(key));
                }
                Ok(Reply::Integer(removed as i64))
            }
            Command::Flush => {
                self.keys.clear();
                Ok(Reply::ok())
            }
            Command::SAdd { .. } | Command::SRem { .. } | Command::SCombine { .. } | Command::SPop { .. } => {
                self.write_set(command, now_ms)
            }
            Command::Push { .. }
            | Command::Pop { .. }
            | Command::LSet { .. }
            | Command::LRem { .. }
            | Command::LTrim { .. }
            | Command::LInsert { .. } => self.write_list(command, now_ms),
            Command::ZAdd { .. } | Command::ZIncrBy { .. } | Command::ZRem { .. } | Command::ZPop { .. } => {
                self.write_zset(command, now_ms)
            }
            Command::Rename { key, to, only_new } => {
                if self.live(key, now_ms).is_none() {
                    return Err(Reply::error("ERR no such key"));
                }
                if *only_new && self.live(to, now_ms).is_some() {
                    return Ok(Reply::Integer(0));
                }
                if key != to {
                    self.reclaim(to, now_ms);
                    // The new name's bytes, and room for it, before anything moves.
                    let stored = match self.keys.contains_key(&KeyRef(to)) {
                        true => None,
                        false => {
                            let stored = self.key(to)?;
                            self.keys.try_reserve(1).map_err(|_| Reply::error(OOM))?;
                            Some(stored)
                        }
                    };
                    let (_, entry) = self.keys.remove_entry(&KeyRef(key)).expect("live above");
                    match stored {
                        Some(stored) => {
                            self.keys.insert(stored, entry);
                        }
                        None => *self.keys.get_mut(&KeyRef(to)).expect("present above") = entry,
                    }
                }
                Ok(if *only_new { Reply::Integer(1) } else { Reply::ok() })
            }
            read => unreachable!("{read:?} is answered by read()"),
        }
    }

    /// Sets `key`'s string to a copy of `value`, keeping its expiry (what INCR and friends do).
    fn overwrite_keeping_ttl(&mut self, key: &[u8], value: &[u8], now_ms: u64) -> Result<(), Refused> {
        let value = self.bytes(value)?;
        self.replace_keeping_ttl(key, value, now_ms)
    }

    fn replace_keeping_ttl(&mut self, key: &[u8], value: Bytes<A>, now_ms: u64) -> Result<(), Refused> {
        let expires = self.live(key, now_ms).and_then(|entry| entry.expires_at_ms.get());
        self.reclaim(key, now_ms);
        self.put(key, Value::String(value), expires)
    }
}

/// A command's outcome as its reply: the error it refused with, or what it answered.
fn answer(outcome: Result<Reply, Refused>) -> Reply {
    outcome.unwrap_or_else(|refused| refused)
}

fn bulk_or_null(value: Option<&[u8]>) -> Reply {
    value.map_or(Reply::Null, Reply::bulk)
}

/// `GETRANGE`'s bytes: `start` and `end` inclusive, negative counting from the end, clamped.
fn range(value: &[u8], start: i64, end: i64) -> &[u8] {
    let len = value.len() as i64;
    if len == 0 || (start < 0 && end < 0 && start > end) {
        return &[];
    }
    let start = if start < 0 { len.saturating_add(start).max(0) } else { start };
    let end = if end < 0 { len.saturating_add(end).max(0) } else { end.min(len - 1) };
    if start > end { &[] } else { &value[start as usize..=end as usize] }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::command::parse;
    use allocator_api2::alloc::{AllocError, Global, Layout};
    use std::cell::Cell;
    use std::ptr::NonNull;
    use std::rc::Rc;

    pub(super) fn run<A: Allocator + Clone>(keys: &mut Keyspace<A>, text: &str, now_ms: u64) -> Reply {
        let request: Vec<Vec<u8>> = text.split(' ').map(|w| w.as_bytes().to_vec()).collect();
        match parse(&request, now_ms) {
            Ok(command) => keys.execute(&command, now_ms),
            Err(refused) => refused,
        }
    }

    fn bulk(text: &str) -> Reply {
        Reply::bulk(text)
    }

    #[test]
    fn set_get_and_the_set_family_answer_as_redis() {
        let mut keys = Keyspace::new_in(Global);
        assert_eq!(run(&mut keys, "GET k", 0), Reply::Null);
        assert_eq!(run(&mut keys, "SET k v", 0), Reply::ok());
        assert_eq!(run(&mut keys, "SET k w NX", 0), Reply::Null);
        assert_eq!(run(&mut keys, "SET k w XX GET", 0), bulk("v"));
        assert_eq!(run(&mut keys, "SET other w XX", 0), Reply::Null);
        assert_eq!(run(&mut keys, "SETNX k x", 0), Reply::Integer(0));
        assert_eq!(run(&mut keys, "SETNX fresh x", 0), Reply::Integer(1));
        assert_eq!(run(&mut keys, "GETSET k z", 0), bulk("w"));
        assert_eq!(run(&mut keys, "GETDEL k", 0), bulk("z"));
        assert_eq!(run(&mut keys, "GETDEL k", 0), Reply::Null);
        assert_eq!(run(&mut keys, "MSET a 1 b 2", 0), Reply::ok());
        assert_eq!(run(&mut keys, "MSETNX b 3 c 4", 0), Reply::Integer(0));
        assert_eq!(run(&mut keys, "MGET a b c", 0), Reply::Array(vec![bulk("1"), bulk("2"), Reply::Null]));
        assert_eq!(run(&mut keys, "MSETNX c 3 d 4", 0), Reply::Integer(1));
        assert_eq!(run(&mut keys, "EXISTS a a nope c", 0), Reply::Integer(3));
        assert_eq!(run(&mut keys, "DEL a nope b", 0), Reply::Integer(2));
        assert_eq!(run(&mut keys, "TYPE c", 0), Reply::Simple("string".into()));
        assert_eq!(run(&mut keys, "TYPE a", 0), Reply::Simple("none".into()));
    }

    #[test]
    fn counters_and_string_edits_answer_as_redis() {
        let mut keys = Keyspace::new_in(Global);
        assert_eq!(run(&mut keys, "INCR n", 0), Reply::Integer(1));
        assert_eq!(run(&mut keys, "INCRBY n 41", 0), Reply::Integer(42));
        assert_eq!(run(&mut keys, "DECRBY n 50", 0), Reply::Integer(-8));
        assert_eq!(run(&mut keys, "SET n 9223372036854775807", 0), Reply::ok());
        assert_eq!(run(&mut keys, "INCR n", 0), Reply::error("ERR increment or decrement would overflow"));
        assert_eq!(run(&mut keys, "GET n", 0), bulk("9223372036854775807"), "an overflow changes nothing");
        assert_eq!(run(&mut keys, "SET s hello", 0), Reply::ok());
        assert_eq!(run(&mut keys, "INCR s", 0), Reply::error("ERR value is not an integer or out of range"));
        assert_eq!(run(&mut keys, "SET f 10.5", 0), Reply::ok());
        assert_eq!(run(&mut keys, "INCRBYFLOAT f 0.1", 0), bulk("10.6"));
        assert_eq!(run(&mut keys, "INCRBYFLOAT f -5e3", 0), bulk("-4989.4"));
        assert_eq!(run(&mut keys, "INCRBYFLOAT s 1", 0), Reply::error("ERR value is not a valid float"));
        assert_eq!(run(&mut keys, "SET f 1e308", 0), Reply::ok());
        assert_eq!(
            run(&mut keys, "INCRBYFLOAT f 1e308", 0),
            Reply::error("ERR increment would produce NaN or Infinity")
        );
        assert_eq!(run(&mut keys, "APPEND s _world", 0), Reply::Integer(11));
        assert_eq!(run(&mut keys, "STRLEN s", 0), Reply::Integer(11));
        assert_eq!(run(&mut keys, "GETRANGE s 0 4", 0), bulk("hello"));
        assert_eq!(run(&mut keys, "GETRANGE s -5 -1", 0), bulk("world"));
        assert_eq!(run(&mut keys, "GETRANGE s -1 -5", 0), bulk(""));
        assert_eq!(run(&mut keys, "GETRANGE s 5 100", 0), bulk("_world"));
        assert_eq!(run(&mut keys, "GETRANGE nope 0 -1", 0), bulk(""));
        assert_eq!(run(&mut keys, "GETRANGE s -9223372036854775808 9223372036854775807", 0), bulk("hello_world"));
        assert_eq!(run(&mut keys, "SETRANGE s 6 W", 0), Reply::Integer(11));
        assert_eq!(run(&mut keys, "GET s", 0), bulk("hello_World"));
        assert_eq!(run(&mut keys, "SETRANGE pad 3 x", 0), Reply::Integer(4));
        assert_eq!(run(&mut keys, "GET pad", 0), Reply::bulk(b"\0\0\0x".to_vec()));
        assert_eq!(run(&mut keys, "APPEND new abc", 0), Reply::Integer(3));
    }

    #[test]
    fn expiry_is_absolute_and_kept_or_cleared_as_redis_does() {
        let mut keys = Keyspace::new_in(Global);
        assert_eq!(run(&mut keys, "SET k v EX 10", 1_000), Reply::ok());
        assert_eq!(run(&mut keys, "TTL k", 1_000), Reply::Integer(10));
        assert_eq!(run(&mut keys, "PTTL k", 5_600), Reply::Integer(5_400));
        assert_eq!(run(&mut keys, "TTL k", 5_600), Reply::Integer(5), "rounded as Redis rounds");
        assert_eq!(run(&mut keys, "INCR n", 0), Reply::Integer(1));
        assert_eq!(run(&mut keys, "TTL n", 0), Reply::Integer(-1));
        assert_eq!(run(&mut keys, "TTL nope", 0), Reply::Integer(-2));
        assert_eq!(run(&mut keys, "PEXPIREAT far 1", 0), Reply::Integer(0));
        assert_eq!(run(&mut keys, "SET far v PXAT 9223372036854775807", 0), Reply::ok());
        assert_eq!(
            run(&mut keys, "TTL far", 0),
            Reply::Integer(9_223_372_036_854_775),
            "no overflow near the end of time"
        );
        // INCR and APPEND keep a TTL; SET clears it unless KEEPTTL.
        assert_eq!(run(&mut keys, "APPEND k w", 2_000), Reply::Integer(2));
        assert_eq!(run(&mut keys, "PTTL k", 2_000), Reply::Integer(9_000));
        assert_eq!(run(&mut keys, "SET k v KEEPTTL", 2_000), Reply::ok());
        assert_eq!(run(&mut keys, "PTTL k", 2_000), Reply::Integer(9_000));
        assert_eq!(run(&mut keys, "GET k", 11_000), Reply::Null, "expired at 11,000");
        assert_eq!(run(&mut keys, "SET k v2 XX", 11_000), Reply::Null, "an expired key does not exist");
        assert_eq!(run(&mut keys, "SET k v3", 11_000), Reply::ok());
        assert_eq!(run(&mut keys, "TTL k", 11_000), Reply::Integer(-1));
        // An expired string of the new value's length is absent too, not overwritten in place.
        assert_eq!(run(&mut keys, "SET e ab PX 10", 0), Reply::ok());
        assert_eq!(run(&mut keys, "SET e cd NX GET", 20), Reply::Null);
        assert_eq!(run(&mut keys, "GET e", 20), bulk("cd"));
        assert_eq!(run(&mut keys, "TTL e", 20), Reply::Integer(-1), "the deadline went with the expired key");
        // The EXPIRE family's conditions.
        assert_eq!(run(&mut keys, "EXPIRE k 100 XX", 11_000), Reply::Integer(0));
        assert_eq!(run(&mut keys, "EXPIRE k 100 NX", 11_000), Reply::Integer(1));
        assert_eq!(run(&mut keys, "EXPIRE k 50 GT", 11_000), Reply::Integer(0));
        assert_eq!(run(&mut keys, "EXPIRE k 50 LT", 11_000), Reply::Integer(1));
        assert_eq!(run(&mut keys, "PERSIST k", 11_000), Reply::Integer(1));
        assert_eq!(run(&mut keys, "PERSIST k", 11_000), Reply::Integer(0));
        assert_eq!(run(&mut keys, "EXPIRE k 50 XX LT", 11_000), Reply::Integer(0));
        assert_eq!(run(&mut keys, "EXPIRE k 50 GT", 11_000), Reply::Integer(0), "GT never sets a key without expiry");
        assert_eq!(run(&mut keys, "EXPIRE k -1", 11_000), Reply::Integer(1));
        assert_eq!(run(&mut keys, "EXISTS k", 11_000), Reply::Integer(0), "a past expiry deletes");
        // GETEX sets or clears the expiry as it reads.
        assert_eq!(run(&mut keys, "SET g v", 0), Reply::ok());
        assert_eq!(run(&mut keys, "GETEX g PX 100", 0), bulk("v"));
        assert_eq!(run(&mut keys, "PTTL g", 0), Reply::Integer(100));
        assert_eq!(run(&mut keys, "GETEX g PERSIST", 0), bulk("v"));
        assert_eq!(run(&mut keys, "PTTL g", 0), Reply::Integer(-1));
        assert_eq!(run(&mut keys, "SET p v PXAT 5", 10), Reply::ok());
        assert_eq!(run(&mut keys, "EXISTS p", 10), Reply::Integer(0), "set already expired");
    }

    #[test]
    fn hashes_answer_as_redis_and_types_do_not_mix() {
        let mut keys = Keyspace::new_in(Global);
        assert_eq!(run(&mut keys, "HSET h a 1 b 2 a 3", 0), Reply::Integer(2), "a field named twice is new once");
        assert_eq!(run(&mut keys, "HGET h a", 0), bulk("3"));
        assert_eq!(run(&mut keys, "HSET h b 4 c 5", 0), Reply::Integer(1));
        assert_eq!(run(&mut keys, "HMSET h d 6", 0), Reply::ok());
        assert_eq!(run(&mut keys, "HMGET h a nope d", 0), Reply::Array(vec![bulk("3"), Reply::Null, bulk("6")]));
        assert_eq!(run(&mut keys, "HLEN h", 0), Reply::Integer(4));
        assert_eq!(run(&mut keys, "HSETNX h a 9", 0), Reply::Integer(0));
        assert_eq!(run(&mut keys, "HSETNX h e 9", 0), Reply::Integer(1));
        assert_eq!(run(&mut keys, "HEXISTS h e", 0), Reply::Integer(1));
        assert_eq!(run(&mut keys, "HSTRLEN h e", 0), Reply::Integer(1));
        assert_eq!(run(&mut keys, "HINCRBY h a 10", 0), Reply::Integer(13));
        assert_eq!(run(&mut keys, "HINCRBY h new -2", 0), Reply::Integer(-2));
        assert_eq!(run(&mut keys, "HINCRBYFLOAT h f 1.5", 0), bulk("1.5"));
        assert_eq!(run(&mut keys, "HSET h s x", 0), Reply::Integer(1));
        assert_eq!(run(&mut keys, "HINCRBY h s 1", 0), Reply::error("ERR hash value is not an integer"));
        assert_eq!(run(&mut keys, "HINCRBYFLOAT h s 1", 0), Reply::error("ERR hash value is not a float"));
        let Reply::Map(pairs) = run(&mut keys, "HGETALL h", 0) else { panic!("a map") };
        assert_eq!(pairs.len(), 8);
        assert!(pairs.contains(&(bulk("a"), bulk("13"))));
        let Reply::Array(fields) = run(&mut keys, "HKEYS h", 0) else { panic!("an array") };
        assert_eq!(fields.len(), 8);
        assert_eq!(run(&mut keys, "HGETALL nope", 0), Reply::Map(vec![]));
        assert_eq!(run(&mut keys, "TYPE h", 0), Reply::Simple("hash".into()));
        // Types do not mix: a string command on a hash, and a hash command on a string.
        let wrongtype = Reply::error(WRONGTYPE);
        assert_eq!(run(&mut keys, "GET h", 0), wrongtype);
        assert_eq!(run(&mut keys, "INCR h", 0), wrongtype);
        assert_eq!(run(&mut keys, "APPEND h x", 0), wrongtype);
        assert_eq!(run(&mut keys, "SET h v GET", 0), wrongtype);
        assert_eq!(run(&mut keys, "MGET h", 0), Reply::Array(vec![Reply::Null]), "MGET answers nil for other types");
        assert_eq!(run(&mut keys, "SET s v", 0), Reply::ok());
        assert_eq!(run(&mut keys, "HSET s a 1", 0), wrongtype);
        assert_eq!(run(&mut keys, "HGET s a", 0), wrongtype);
        assert_eq!(run(&mut keys, "HDEL s a", 0), wrongtype);
        // SET replaces a hash outright; HDEL of the last field removes the key.
        assert_eq!(run(&mut keys, "SET h v", 0), Reply::ok());
        assert_eq!(run(&mut keys, "GET h", 0), bulk("v"));
        assert_eq!(run(&mut keys, "HSET g a 1 b 2", 0), Reply::Integer(2));
        assert_eq!(run(&mut keys, "HDEL g a nope", 0), Reply::Integer(1));
        assert_eq!(run(&mut keys, "HDEL g b", 0), Reply::Integer(1));
        assert_eq!(run(&mut keys, "EXISTS g", 0), Reply::Integer(0));
        assert_eq!(run(&mut keys, "HSET g", 0), Reply::error("ERR wrong number of arguments for 'hset' command"));
        assert_eq!(run(&mut keys, "HSET g a 1 b", 0), Reply::error("ERR wrong number of arguments for 'hset' command"));
        // An expiring hash expires whole.
        assert_eq!(run(&mut keys, "HSET t a 1", 0), Reply::Integer(1));
        assert_eq!(run(&mut keys, "PEXPIRE t 10", 0), Reply::Integer(1));
        assert_eq!(run(&mut keys, "HGET t a", 10), Reply::Null);
        assert_eq!(run(&mut keys, "HSET t b 2", 10), Reply::Integer(1));
        assert_eq!(run(&mut keys, "HLEN t", 10), Reply::Integer(1), "the expired fields are gone");
        assert_eq!(run(&mut keys, "TTL t", 10), Reply::Integer(-1));
    }

    #[test]
    fn keyspace_commands_answer_as_redis() {
        let mut keys = Keyspace::new_in(Global);
        assert_eq!(run(&mut keys, "MSET user:1 a user:2 b other c", 0), Reply::ok());
        assert_eq!(run(&mut keys, "DBSIZE", 0), Reply::Integer(3));
        let Reply::Array(mut found) = run(&mut keys, "KEYS user:*", 0) else { panic!("an array") };
        found.sort_by_key(|reply| format!("{reply:?}"));
        assert_eq!(found, vec![bulk("user:1"), bulk("user:2")]);
        assert_eq!(run(&mut keys, "RENAME nope x", 0), Reply::error("ERR no such key"));
        assert_eq!(run(&mut keys, "RENAMENX user:1 user:2", 0), Reply::Integer(0));
        assert_eq!(run(&mut keys, "RENAME user:1 user:2", 0), Reply::ok());
        assert_eq!(run(&mut keys, "MGET user:1 user:2", 0), Reply::Array(vec![Reply::Null, bulk("a")]));
        assert_eq!(run(&mut keys, "RENAMENX user:2 fresh", 0), Reply::Integer(1));
        assert_eq!(run(&mut keys, "RENAME fresh fresh", 0), Reply::ok());
        assert_eq!(run(&mut keys, "FLUSHDB ASYNC", 0), Reply::ok());
        assert_eq!(run(&mut keys, "DBSIZE", 0), Reply::Integer(0));
        assert_eq!(run(&mut keys, "FLUSHALL BOTH", 0), Reply::error("ERR syntax error"));
    }

    /// The global allocator until its budget of bytes is spent, then nothing.
    #[derive(Clone)]
    struct Budget(Rc<Cell<usize>>);

    // SAFETY: every allocation is the global allocator's, handed back to it unchanged.
    unsafe impl Allocator for Budget {
        fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
            let left = self.0.get();
            if layout.size() > left {
                return Err(AllocError);
            }
            self.0.set(left - layout.size());
            Global.allocate(layout)
        }

        unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
            self.0.set(self.0.get() + layout.size());
            // SAFETY: `ptr` came from `Global.allocate` with this layout (above).
            unsafe { Global.deallocate(ptr, layout) }
        }
    }

    #[test]
    fn a_full_memory_answers_oom_and_changes_nothing() {
        let budget = Rc::new(Cell::new(4096));
        let mut keys = Keyspace::new_in(Budget(budget.clone()));
        assert_eq!(run(&mut keys, "SET a 1", 0), Reply::ok());
        let big = "x".repeat(8192);
        for command in [
            format!("SET b {big}"),
            format!("APPEND a {big}"),
            format!("MSET c 1 d {big}"),
            "SETRANGE a 9000 x".into(),
            format!("SADD c x {big}"),
            format!("RPUSH c x {big}"),
        ] {
            assert_eq!(run(&mut keys, &command, 0), Reply::error(OOM), "{command}");
            assert_eq!(
                run(&mut keys, "MGET a b c d", 0),
                Reply::Array(vec![bulk("1"), Reply::Null, Reply::Null, Reply::Null])
            );
        }
        budget.set(1 << 20);
        assert_eq!(run(&mut keys, &format!("SET b {big}"), 0), Reply::ok(), "once there is room again");
    }

    /// A string overwritten by one of the same length stays where it lies (no allocation, even
    /// with no memory left), and the write is still a `SET` in every way a client sees: the
    /// expiry it asks for, `KEEPTTL`, `GET`, and a `WATCH` that sees the key change.
    #[test]
    fn a_string_of_the_same_length_is_overwritten_in_place() {
        let budget = Rc::new(Cell::new(1 << 20));
        let mut keys = Keyspace::new_in(Budget(budget.clone()));
        assert_eq!(run(&mut keys, "SET k aaa PX 5000", 1_000), Reply::ok());
        let watched = vec![b"k".to_vec()];
        let Reply::Array(digests) = keys.execute(&Command::Digest { keys: watched.clone() }, 1_000) else {
            panic!("a digest per key")
        };
        let digests: Vec<u64> =
            digests.iter().map(|d| if let Reply::Integer(d) = d { *d as u64 } else { panic!("{d:?}") }).collect();
        let unchanged = Command::Unchanged { keys: watched, digests };
        assert_eq!(keys.execute(&unchanged, 1_000), Reply::Integer(1));
        budget.set(0);
        assert_eq!(run(&mut keys, "SET k bbb KEEPTTL GET", 2_000), bulk("aaa"), "no allocation needed");
        assert_eq!(keys.execute(&unchanged, 2_000), Reply::Integer(0), "WATCH sees the key changed");
        assert_eq!(run(&mut keys, "PTTL k", 2_000), Reply::Integer(4_000), "KEEPTTL kept the deadline");
        assert_eq!(run(&mut keys, "SET k ccc", 2_000), Reply::ok());
        assert_eq!(run(&mut keys, "PTTL k", 2_000), Reply::Integer(-1), "a plain SET clears it");
        assert_eq!(run(&mut keys, "SET k ddd PX 10", 2_000), Reply::ok());
        assert_eq!(run(&mut keys, "GET k", 2_009), bulk("ddd"));
        assert_eq!(run(&mut keys, "GET k", 2_010), Reply::Null, "the new deadline holds");
        assert_eq!(run(&mut keys, "SET k longer", 2_010), Reply::error(OOM), "another length allocates");
    }
}

#[cfg(test)]
mod sizes {
    use super::*;
    use nonstop_region::heap::RegionAlloc;

    /// Every key costs a table slot of a key and an entry: keep the entry to a string's size
    /// and the key to a pointer and a length (and the allocator's handle).
    #[test]
    fn a_table_slot_stays_small() {
        let (key, entry) = (size_of::<Key<RegionAlloc>>(), size_of::<Entry<RegionAlloc>>());
        assert!(entry <= 48 && key <= 24, "an entry takes {entry} bytes, a key {key}");
    }
}
