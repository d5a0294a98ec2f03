//! Sorted sets: `ZADD` (with `NX`, `XX`, `GT`, `LT`, `CH`, `INCR`), `ZREM`, `ZSCORE`,
//! `ZMSCORE`, `ZINCRBY`, `ZCARD`, `ZCOUNT`, `ZRANK`, `ZREVRANK`, `ZRANGE` (by rank, `BYSCORE`,
//! `BYLEX`, `REV`, `LIMIT`, `WITHSCORES`) and its older forms, `ZPOPMIN`, `ZPOPMAX`, as Redis
//! runs them.
//!
//! Each set is a map from member to score and an ordered index of (score, member) in an
//! adaptive radix tree (`blart`) in the keyspace's allocator, as Redis pairs a dict with a skip
//! list. The index's keys are byte strings that sort as (score, member) do: the score's bits
//! made order-preserving, then the member with its zero bytes escaped and a terminator, so that
//! no key is a prefix of another. Ranks are counted by walking the index (O(rank)), where
//! Redis's skip list counts in O(log n).

use super::{Bytes, KeyRef, Keyspace, OOM, Refused, Value};
use crate::command::{Command, Direction, Existence, LexBound, ScoreBound, ZAddOptions, ZRangeBy};
use crate::resp::{Reply, format_double};
use allocator_api2::alloc::{Allocator, Layout};
use blart::{AsBytes, NoPrefixesBytes};
use foldhash::fast::FixedState;
use std::borrow::Borrow;

/// A key of the ordered index: (score, member), encoded to sort as they do.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ordered<A: Allocator>(Bytes<A>);

impl<A: Allocator> AsBytes for Ordered<A> {
    fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

// SAFETY: every key is `encode`'s output, which ends at its first `00 00` pair (a member's zero
// bytes are written `00 FF`): one key cannot be a proper prefix of another.
unsafe impl<A: Allocator> NoPrefixesBytes for Ordered<A> {}

impl<A: Allocator> Borrow<[u8]> for Ordered<A> {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

/// A sorted set's members and their order.
pub struct SortedSet<A: Allocator> {
    scores: hashbrown::HashMap<Bytes<A>, f64, FixedState, A>,
    order: blart::TreeMap<Ordered<A>, (), 16, A>,
}

impl<A: Allocator> std::fmt::Debug for SortedSet<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SortedSet").field("members", &self.scores.len()).finish()
    }
}

/// The score's bits, made to sort as the scores do (negative scores inverted, positive ones
/// with the sign bit set), big-endian.
fn score_bytes(score: f64) -> [u8; 8] {
    let bits = score.to_bits();
    let ordered = if bits >> 63 == 1 { !bits } else { bits | 1 << 63 };
    ordered.to_be_bytes()
}

fn score_of(key: &[u8]) -> f64 {
    let ordered = u64::from_be_bytes(key[..8].try_into().expect("every key starts with a score"));
    f64::from_bits(if ordered >> 63 == 1 { ordered & !(1 << 63) } else { !ordered })
}

/// The member in an index key, unescaped.
fn member_of(key: &[u8]) -> Vec<u8> {
    let mut member = Vec::with_capacity(key.len() - 10);
    let mut bytes = key[8..].iter();
    while let Some(&byte) = bytes.next() {
        if byte == 0 {
            match bytes.next() {
                Some(0xFF) => member.push(0),
                _ => break,
            }
        } else {
            member.push(byte);
        }
    }
    member
}

/// The index key of (`score`, `member`).
fn encode(score: f64, member: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(member.len() + 10);
    key.extend_from_slice(&score_bytes(score));
    for &byte in member {
        key.push(byte);
        if byte == 0 {
            key.push(0xFF);
        }
    }
    key.extend_from_slice(&[0, 0]);
    key
}

/// Bytes a `blart` insert may allocate at most (a new inner node and a leaf).
const INDEX_HEADROOM: usize = 8 << 10;

fn within_min(score: f64, min: &ScoreBound) -> bool {
    if min.exclusive { score > min.value } else { score >= min.value }
}

fn within_max(score: f64, max: &ScoreBound) -> bool {
    if max.exclusive { score < max.value } else { score <= max.value }
}

fn above_lex(member: &[u8], min: &LexBound) -> bool {
    match min {
        LexBound::Least => true,
        LexBound::Greatest => false,
        LexBound::Inclusive(bound) => member >= bound.as_slice(),
        LexBound::Exclusive(bound) => member > bound.as_slice(),
    }
}

fn below_lex(member: &[u8], max: &LexBound) -> bool {
    match max {
        LexBound::Least => false,
        LexBound::Greatest => true,
        LexBound::Inclusive(bound) => member <= bound.as_slice(),
        LexBound::Exclusive(bound) => member < bound.as_slice(),
    }
}

impl<A: Allocator + Clone> SortedSet<A> {
    fn new_in(alloc: A) -> SortedSet<A> {
        SortedSet {
            scores: hashbrown::HashMap::with_hasher_in(FixedState::default(), alloc.clone()),
            order: blart::TreeMap::new_in(alloc),
        }
    }

    fn len(&self) -> usize {
        self.scores.len()
    }

    fn score(&self, member: &[u8]) -> Option<f64> {
        self.scores.get(&KeyRef(member)).copied()
    }

    /// Members and scores in order, lowest first.
    pub(super) fn ascending(&self) -> impl DoubleEndedIterator<Item = (Vec<u8>, f64)> + '_ {
        self.order.iter().map(|(key, ())| (member_of(&key.0), score_of(&key.0)))
    }

    fn remove(&mut self, member: &[u8]) -> Option<f64> {
        let score = self.scores.remove(&KeyRef(member))?;
        self.order.remove(encode(score, member).as_slice());
        Some(score)
    }

    /// The members `by` selects, in order (reversed if `reverse`), after `limit`'s offset and
    /// up to its count.
    fn select(&self, by: &ZRangeBy, reverse: bool, limit: Option<(i64, i64)>) -> Vec<(Vec<u8>, f64)> {
        let ordered: Box<dyn Iterator<Item = (Vec<u8>, f64)> + '_> = match reverse {
            false => Box::new(self.ascending()),
            true => Box::new(self.ascending().rev()),
        };
        let (offset, count) = limit.unwrap_or((0, -1));
        if offset < 0 {
            return Vec::new();
        }
        let count = if count < 0 { usize::MAX } else { count as usize };
        match by {
            ZRangeBy::Rank { start, stop } => {
                let span = super::lists::span(*start, *stop, self.len());
                ordered.skip(span.start).take(span.len()).collect()
            }
            ZRangeBy::Score { min, max } => ordered
                .skip_while(|(_, score)| if reverse { !within_max(*score, max) } else { !within_min(*score, min) })
                .take_while(|(_, score)| if reverse { within_min(*score, min) } else { within_max(*score, max) })
                .skip(offset as usize)
                .take(count)
                .collect(),
            ZRangeBy::Lex { min, max } => ordered
                .filter(|(member, _)| above_lex(member, min) && below_lex(member, max))
                .skip(offset as usize)
                .take(count)
                .collect(),
        }
    }
}

/// Members as a reply, with their scores if asked.
fn members_reply(members: Vec<(Vec<u8>, f64)>, with_scores: bool) -> Reply {
    match with_scores {
        true => Reply::Pairs(members.into_iter().map(|(m, s)| (Reply::bulk(m), Reply::Double(s))).collect()),
        false => Reply::Array(members.into_iter().map(|(m, _)| Reply::bulk(m)).collect()),
    }
}

impl<A: Allocator + Clone> Keyspace<A> {
    /// The key's sorted set at `now_ms`: `Ok(None)` if it does not exist, WRONGTYPE if it is
    /// not one.
    fn zset(&self, key: &[u8], now_ms: u64) -> Result<Option<&SortedSet<A>>, Refused> {
        self.typed(key, now_ms)
    }

    fn zset_mut(&mut self, key: &[u8]) -> &mut SortedSet<A> {
        self.typed_mut(key)
    }

    /// Whether the allocator has room for `inserts` index inserts: the tree allocates its
    /// nodes as it goes and cannot refuse, so room is proven first by allocating it once.
    fn index_room(&self, inserts: usize) -> Result<(), Refused> {
        let size = INDEX_HEADROOM.saturating_mul(inserts.min(64)).max(INDEX_HEADROOM);
        let layout = Layout::from_size_align(size, 16).map_err(|_| Reply::error(OOM))?;
        let block = self.alloc.allocate(layout).map_err(|_| Reply::error(OOM))?;
        // SAFETY: allocated just above with this layout, and never used.
        unsafe { self.alloc.deallocate(block.cast(), layout) };
        Ok(())
    }

    /// Answers the sorted-set commands that only read.
    pub(super) fn read_zset(&self, command: &Command, now_ms: u64) -> Result<Reply, Refused> {
        Ok(match command {
            Command::ZScore { key, members, many } => {
                let set = self.zset(key, now_ms)?;
                let score = |member: &Vec<u8>| set.and_then(|s| s.score(member)).map_or(Reply::Null, Reply::Double);
                match many {
                    false => score(&members[0]),
                    true => Reply::Array(members.iter().map(score).collect()),
                }
            }
            Command::ZCard { key } => Reply::Integer(self.zset(key, now_ms)?.map_or(0, |s| s.len() as i64)),
            Command::ZCount { key, min, max } => Reply::Integer(
                self.zset(key, now_ms)?
                    .map_or(0, |set| set.select(&ZRangeBy::Score { min: *min, max: *max }, false, None).len() as i64),
            ),
            Command::ZRank { key, member, reverse, with_score } => {
                let Some(set) = self.zset(key, now_ms)? else { return Ok(Reply::Null) };
                let Some(score) = set.score(member) else { return Ok(Reply::Null) };
                let own = encode(score, member);
                let below = set
                    .order
                    .range::<[u8], _>((std::ops::Bound::Unbounded, std::ops::Bound::Excluded(own.as_slice())))
                    .count();
                let rank = if *reverse { set.len() - 1 - below } else { below } as i64;
                match with_score {
                    false => Reply::Integer(rank),
                    true => Reply::Array(vec![Reply::Integer(rank), Reply::Double(score)]),
                }
            }
            Command::ZRange { key, by, reverse, limit, with_scores } => {
                let members = self.zset(key, now_ms)?.map_or_else(Vec::new, |set| set.select(by, *reverse, *limit));
                members_reply(members, *with_scores)
            }
            other => unreachable!("{other:?} is not a sorted-set read"),
        })
    }

    /// Runs the sorted-set commands that write.
    pub(super) fn write_zset(&mut self, command: &Command, now_ms: u64) -> Result<Reply, Refused> {
        match command {
            Command::ZAdd { key, options, pairs } => self.zadd(key, options, pairs, now_ms),
            Command::ZIncrBy { key, by, member } => {
                let options = ZAddOptions { increment: true, ..ZAddOptions::default() };
                self.zadd(key, &options, &[(*by, member.clone())], now_ms)
            }
            Command::ZRem { key, members } => {
                if self.zset(key, now_ms)?.is_none() {
                    return Ok(Reply::Integer(0));
                }
                let set = self.zset_mut(key);
                let removed = members.iter().filter(|member| set.remove(member).is_some()).count();
                if set.len() == 0 {
                    self.keys.remove(&KeyRef(key));
                }
                Ok(Reply::Integer(removed as i64))
            }
            Command::ZPop { key, max, count } => {
                let Some(set) = self.zset(key, now_ms)? else { return Ok(Reply::Array(Vec::new())) };
                let take = count.unwrap_or(1).min(set.len() as u64) as usize;
                let popped: Vec<(Vec<u8>, f64)> = match max {
                    false => set.ascending().take(take).collect(),
                    true => set.ascending().rev().take(take).collect(),
                };
                let set = self.zset_mut(key);
                for (member, _) in &popped {
                    set.remove(member);
                }
                if set.len() == 0 {
                    self.keys.remove(&KeyRef(key));
                }
                Ok(match count {
                    // Without a count: one member and its score, flat in both protocols.
                    None => {
                        Reply::Array(popped.into_iter().flat_map(|(m, s)| [Reply::bulk(m), Reply::Double(s)]).collect())
                    }
                    Some(_) => members_reply(popped, true),
                })
            }
            other => unreachable!("{other:?} is not a sorted-set write"),
        }
    }

    fn zadd(
        &mut self,
        key: &[u8],
        options: &ZAddOptions,
        pairs: &[(f64, Vec<u8>)],
        now_ms: u64,
    ) -> Result<Reply, Refused> {
        self.reclaim(key, now_ms);
        let set = self.zset(key, now_ms)?;
        // Decide every member's fate first: (member, new score, old score).
        let mut staged: Vec<(&[u8], f64, Option<f64>)> = Vec::new();
        let mut seen = std::collections::HashMap::new();
        for (score, member) in pairs {
            let old = seen.get(member.as_slice()).copied().unwrap_or_else(|| set.and_then(|s| s.score(member)));
            let new = if options.increment { old.unwrap_or(0.0) + score } else { *score };
            if new.is_nan() {
                return Err(Reply::error("ERR resulting score is not a number (NaN)"));
            }
            let skip = match (options.existence, old) {
                (Some(Existence::Absent), Some(_)) | (Some(Existence::Present), None) => true,
                (_, Some(old)) => match options.compare {
                    Some(Direction::Up) => new <= old,
                    Some(Direction::Down) => new >= old,
                    None => false,
                },
                _ => false,
            };
            if skip {
                continue;
            }
            seen.insert(member.as_slice(), Some(new));
            staged.push((member, if new == 0.0 { 0.0 } else { new }, old));
        }
        let added = staged.iter().filter(|(_, _, old)| old.is_none()).count();
        let changed = staged.iter().filter(|(_, new, old)| old.is_some_and(|old| old != *new)).count();
        let answer = match options.increment {
            true => staged.last().map_or(Reply::Null, |(_, new, _)| Reply::bulk(format_double(*new).into_bytes())),
            false => Reply::Integer((added + if options.changed { changed } else { 0 }) as i64),
        };
        // Every allocation before the first change: members' bytes, index keys, room.
        let mut prepared = Vec::with_capacity(staged.len());
        for (member, new, old) in staged {
            let stored = if old.is_none() { Some(self.bytes(member)?) } else { None };
            let ordered = Ordered(self.bytes(&encode(new, member))?);
            prepared.push((member, new, old, stored, ordered));
        }
        if prepared.is_empty() {
            return Ok(answer);
        }
        self.index_room(prepared.len())?;
        let mut fresh = match set {
            Some(_) => None,
            None => Some(SortedSet::new_in(self.alloc.clone())),
        };
        let target = match fresh.as_mut() {
            Some(set) => set,
            None => self.zset_mut(key),
        };
        target.scores.try_reserve(added).map_err(|_| Reply::error(OOM))?;
        for (member, new, old, stored, ordered) in prepared {
            if let Some(old) = old {
                target.order.remove(encode(old, member).as_slice());
            }
            target.order.insert(ordered, ());
            match stored {
                Some(stored) => {
                    target.scores.insert(stored, new);
                }
                None => *target.scores.get_mut(&KeyRef(member)).expect("an existing member") = new,
            }
        }
        if let Some(set) = fresh {
            self.put(key, Value::SortedSet(self.boxed(set)?), None)?;
        }
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::super::WRONGTYPE;
    use super::super::tests::run;
    use super::*;
    use allocator_api2::alloc::Global;

    fn strings(items: &[&str]) -> Reply {
        Reply::Array(items.iter().map(|item| Reply::bulk(item.as_bytes().to_vec())).collect())
    }

    #[test]
    fn index_keys_sort_as_scores_and_members_do() {
        let cases: [(f64, &[u8]); 8] = [
            (f64::NEG_INFINITY, b"a"),
            (-2.5, b"z"),
            (-0.0, b""),
            (0.0, b"a"),
            (0.0, b"a\0"),
            (0.0, b"ab"),
            (1.0, b"\0"),
            (f64::INFINITY, b""),
        ];
        for pair in cases.windows(2) {
            let (a, b) = (encode(pair[0].0, pair[0].1), encode(pair[1].0, pair[1].1));
            assert!(a <= b, "{:?} before {:?}", pair[0], pair[1]);
            assert!(!b.starts_with(&a) || a == b, "no key is a prefix of another");
        }
        for (score, member) in cases {
            let key = encode(score, member);
            assert_eq!((score_of(&key), member_of(&key)), (score, member.to_vec()));
        }
    }

    #[test]
    fn sorted_sets_answer_as_redis() {
        let mut keys = Keyspace::new_in(Global);
        assert_eq!(run(&mut keys, "ZADD z 1 a 2 b 3 c", 0), Reply::Integer(3));
        assert_eq!(run(&mut keys, "ZADD z 1 a 5 b", 0), Reply::Integer(0));
        assert_eq!(run(&mut keys, "ZADD z CH 1 a 2 b 4 d", 0), Reply::Integer(2), "b changed, d added");
        assert_eq!(run(&mut keys, "ZADD z NX 9 a 9 e", 0), Reply::Integer(1));
        assert_eq!(run(&mut keys, "ZADD z XX CH 0 a 0 nope", 0), Reply::Integer(1));
        assert_eq!(run(&mut keys, "ZADD z GT CH 3 a", 0), Reply::Integer(1));
        assert_eq!(run(&mut keys, "ZADD z GT CH 1 a", 0), Reply::Integer(0), "GT: only up");
        assert_eq!(run(&mut keys, "ZADD z LT CH 2 a", 0), Reply::Integer(1));
        assert_eq!(run(&mut keys, "ZADD z INCR 10 a", 0), Reply::bulk("12"));
        assert_eq!(run(&mut keys, "ZADD z NX INCR 1 a", 0), Reply::Null);
        assert_eq!(run(&mut keys, "ZINCRBY z -2.5 a", 0), Reply::bulk("9.5"));
        assert_eq!(run(&mut keys, "ZSCORE z a", 0), Reply::Double(9.5));
        assert_eq!(run(&mut keys, "ZMSCORE z b nope", 0), Reply::Array(vec![Reply::Double(2.0), Reply::Null]));
        assert_eq!(run(&mut keys, "ZCARD z", 0), Reply::Integer(5));
        assert_eq!(run(&mut keys, "ZRANGE z 0 -1", 0), strings(&["b", "c", "d", "e", "a"]));
        assert_eq!(run(&mut keys, "ZREVRANGE z 0 1", 0), strings(&["a", "e"]));
        assert_eq!(
            run(&mut keys, "ZRANGE z 0 0 WITHSCORES", 0),
            Reply::Pairs(vec![(Reply::bulk("b"), Reply::Double(2.0))])
        );
        assert_eq!(run(&mut keys, "ZRANGEBYSCORE z (2 4", 0), strings(&["c", "d"]));
        assert_eq!(run(&mut keys, "ZRANGE z +inf (3 BYSCORE REV LIMIT 0 2", 0), strings(&["a", "e"]));
        assert_eq!(run(&mut keys, "ZREVRANGEBYSCORE z 4 -inf", 0), strings(&["d", "c", "b"]));
        assert_eq!(run(&mut keys, "ZCOUNT z -inf (9.5", 0), Reply::Integer(4));
        assert_eq!(run(&mut keys, "ZRANK z c", 0), Reply::Integer(1));
        assert_eq!(
            run(&mut keys, "ZREVRANK z c WITHSCORE", 0),
            Reply::Array(vec![Reply::Integer(3), Reply::Double(3.0)])
        );
        assert_eq!(run(&mut keys, "ZRANK z nope", 0), Reply::Null);
        assert_eq!(run(&mut keys, "ZREM z c nope", 0), Reply::Integer(1));
        assert_eq!(run(&mut keys, "ZPOPMIN z", 0), Reply::Array(vec![Reply::bulk("b"), Reply::Double(2.0)]));
        assert_eq!(
            run(&mut keys, "ZPOPMAX z 2", 0),
            Reply::Pairs(vec![(Reply::bulk("a"), Reply::Double(9.5)), (Reply::bulk("e"), Reply::Double(9.0))])
        );
        assert_eq!(run(&mut keys, "ZPOPMAX z 5", 0), Reply::Pairs(vec![(Reply::bulk("d"), Reply::Double(4.0))]));
        assert_eq!(run(&mut keys, "EXISTS z", 0), Reply::Integer(0), "the key goes with its last member");
        assert_eq!(run(&mut keys, "ZADD lex 0 b 0 a 0 c 0 d", 0), Reply::Integer(4));
        assert_eq!(run(&mut keys, "ZRANGEBYLEX lex [b (d", 0), strings(&["b", "c"]));
        assert_eq!(run(&mut keys, "ZRANGE lex + - BYLEX REV LIMIT 1 2", 0), strings(&["c", "b"]));
        assert_eq!(run(&mut keys, "TYPE lex", 0), Reply::Simple("zset".into()));
    }

    #[test]
    fn refusals_are_redis_words_and_change_nothing() {
        let mut keys = Keyspace::new_in(Global);
        let error = |text: &str| Reply::error(text);
        assert_eq!(
            run(&mut keys, "ZADD z NX XX 1 a", 0),
            error("ERR XX and NX options at the same time are not compatible")
        );
        assert_eq!(
            run(&mut keys, "ZADD z NX GT 1 a", 0),
            error("ERR GT, LT, and/or NX options at the same time are not compatible")
        );
        assert_eq!(
            run(&mut keys, "ZADD z INCR 1 a 2 b", 0),
            error("ERR INCR option supports a single increment-element pair")
        );
        assert_eq!(run(&mut keys, "ZADD z 1 a 2", 0), error("ERR syntax error"));
        assert_eq!(run(&mut keys, "ZADD z x a", 0), error("ERR value is not a valid float"));
        assert_eq!(run(&mut keys, "ZADD z inf a", 0), Reply::Integer(1));
        assert_eq!(run(&mut keys, "ZINCRBY z -inf a", 0), error("ERR resulting score is not a number (NaN)"));
        assert_eq!(
            run(&mut keys, "ZSCORE z a", 0),
            Reply::Double(f64::INFINITY),
            "a refused increment changes nothing"
        );
        assert_eq!(run(&mut keys, "ZRANGEBYSCORE z x 1", 0), error("ERR min or max is not a float"));
        assert_eq!(run(&mut keys, "ZRANGEBYLEX z a b", 0), error("ERR min or max not valid string range item"));
        assert_eq!(
            run(&mut keys, "ZRANGE z 0 1 LIMIT 0 1", 0),
            error("ERR syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX")
        );
        assert_eq!(
            run(&mut keys, "ZRANGE z - + BYLEX WITHSCORES", 0),
            error("ERR syntax error, WITHSCORES not supported in combination with BYLEX")
        );
        assert_eq!(run(&mut keys, "SET s v", 0), Reply::ok());
        for command in ["ZADD s 1 a", "ZSCORE s a", "ZRANGE s 0 1", "ZCARD s", "ZPOPMIN s", "ZRANK s a"] {
            assert_eq!(run(&mut keys, command, 0), Reply::error(WRONGTYPE), "{command}");
        }
    }
}
