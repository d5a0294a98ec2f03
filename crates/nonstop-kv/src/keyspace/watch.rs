//! What `WATCH` compares: a digest of a key's type, value and expiry, taken when the key is
//! watched and again by `EXEC`'s guard, inside the transaction's own request. A key written in
//! between (or expired, or deleted) digests differently, so the transaction does not run, as
//! in Redis. Unlike Redis, a key written and then written back to the same value and expiry
//! digests alike and does not stop it; and the digest reads the whole value, O(its size).

use super::{Entry, Keyspace, Value};
use crate::command::Command;
use crate::resp::Reply;
use allocator_api2::alloc::Allocator;
use foldhash::fast::FixedState;
use std::hash::{BuildHasher, Hash, Hasher};

/// The digests' seed: "WATCH".
const SEED: u64 = u64::from_le_bytes(*b"WATCH\0\0\0");

/// A hash of one item, for sums that do not depend on a table's order.
fn item(parts: &[&[u8]]) -> u64 {
    let mut hasher = FixedState::with_seed(SEED).build_hasher();
    for part in parts {
        part.hash(&mut hasher);
    }
    hasher.finish()
}

impl<A: Allocator + Clone> Keyspace<A> {
    /// The digest of `key` at `now_ms`; 0 if it does not exist.
    fn digest(&self, key: &[u8], now_ms: u64) -> u64 {
        let Some(Entry { value, expires_at_ms }) = self.live(key, now_ms) else { return 0 };
        let mut hasher = FixedState::with_seed(SEED).build_hasher();
        value.type_name().hash(&mut hasher);
        expires_at_ms.get().hash(&mut hasher);
        match value {
            Value::String(bytes) => bytes.as_slice().hash(&mut hasher),
            Value::Hash(fields) => {
                fields.iter().fold(0u64, |sum, (f, v)| sum.wrapping_add(item(&[f, v]))).hash(&mut hasher);
            }
            Value::Set(members) => members.iter().fold(0u64, |sum, m| sum.wrapping_add(item(&[m]))).hash(&mut hasher),
            Value::List(list) => list.iter().for_each(|element| element.as_slice().hash(&mut hasher)),
            Value::SortedSet(set) => set.ascending().for_each(|(member, score)| {
                member.hash(&mut hasher);
                score.to_bits().hash(&mut hasher);
            }),
        }
        // Never 0, which means absent.
        hasher.finish() | 1
    }

    pub(super) fn watch(&self, command: &Command, now_ms: u64) -> Reply {
        match command {
            Command::Digest { keys } => {
                Reply::Array(keys.iter().map(|key| Reply::Integer(self.digest(key, now_ms) as i64)).collect())
            }
            Command::Unchanged { keys, digests } => Reply::Integer(i64::from(
                keys.len() == digests.len()
                    && keys.iter().zip(digests).all(|(key, digest)| self.digest(key, now_ms) == *digest),
            )),
            other => unreachable!("{other:?} is not a watch"),
        }
    }
}
