//! Sets: `SADD`, `SREM`, `SMEMBERS`, `SISMEMBER`, `SMISMEMBER`, `SCARD`, `SINTER`, `SUNION`,
//! `SDIFF` and their `STORE` forms, `SPOP`, `SRANDMEMBER`, as Redis runs them. Random choices
//! come from the seed the request carries; every refusal (a wrong type, a full region) comes
//! before the first change.

use super::{KeyRef, Keyspace, Members, OOM, Refused, Value};
use crate::command::{Command, SetOp};
use crate::resp::Reply;
use allocator_api2::alloc::Allocator;
use foldhash::fast::FixedState;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

impl<A: Allocator + Clone> Keyspace<A> {
    /// The key's set at `now_ms`: `Ok(None)` if it does not exist, WRONGTYPE if it is not a set.
    fn set(&self, key: &[u8], now_ms: u64) -> Result<Option<&Members<A>>, Refused> {
        self.typed(key, now_ms)
    }

    /// The sets of `keys` (a missing key is an empty set), or WRONGTYPE if any is not a set.
    fn sets(&self, keys: &[Vec<u8>], now_ms: u64) -> Result<Vec<Option<&Members<A>>>, Refused> {
        keys.iter().map(|key| self.set(key, now_ms)).collect()
    }

    /// The members of `keys` combined by `op`, in the order found.
    fn combine(&self, op: SetOp, keys: &[Vec<u8>], now_ms: u64) -> Result<Vec<&[u8]>, Refused> {
        let sets = self.sets(keys, now_ms)?;
        let mut seen = std::collections::HashSet::new();
        let members: Vec<&[u8]> = match op {
            SetOp::Inter => {
                // The smallest set's members, kept if every other set has them.
                let Some(Some(smallest)) = sets.iter().min_by_key(|set| set.map_or(0, |s| s.len())) else {
                    return Ok(Vec::new());
                };
                smallest
                    .iter()
                    .filter(|member| sets.iter().all(|set| set.is_some_and(|s| s.contains(&KeyRef(member)))))
                    .map(|member| member.as_slice())
                    .collect()
            }
            SetOp::Union => sets
                .iter()
                .flatten()
                .flat_map(|set| set.iter())
                .map(|m| m.as_slice())
                .filter(|m| seen.insert(*m))
                .collect(),
            SetOp::Diff => match sets.split_first() {
                Some((Some(first), others)) => first
                    .iter()
                    .filter(|member| !others.iter().flatten().any(|set| set.contains(&KeyRef(member))))
                    .map(|member| member.as_slice())
                    .collect(),
                _ => Vec::new(),
            },
        };
        Ok(members)
    }

    /// Answers the set commands that only read.
    pub(super) fn read_set(&self, command: &Command, now_ms: u64) -> Result<Reply, Refused> {
        let bulks = |members: &mut dyn Iterator<Item = &[u8]>| -> Vec<Reply> {
            members.map(|m| Reply::bulk(m.to_vec())).collect()
        };
        Ok(match command {
            Command::SMembers { key } => {
                Reply::Set(self.set(key, now_ms)?.map_or_else(Vec::new, |set| bulks(&mut set.iter().map(|m| &m[..]))))
            }
            Command::SIsMember { key, members, many } => {
                let set = self.set(key, now_ms)?;
                let found =
                    |member: &Vec<u8>| Reply::Integer(i64::from(set.is_some_and(|s| s.contains(&KeyRef(member)))));
                match many {
                    false => found(&members[0]),
                    true => Reply::Array(members.iter().map(found).collect()),
                }
            }
            Command::SCard { key } => Reply::Integer(self.set(key, now_ms)?.map_or(0, |set| set.len() as i64)),
            Command::SCombine { op, keys, store: None } => {
                Reply::Set(bulks(&mut self.combine(*op, keys, now_ms)?.into_iter()))
            }
            Command::SRandMember { key, count, seed } => {
                let members: Vec<&[u8]> =
                    self.set(key, now_ms)?.map_or_else(Vec::new, |set| set.iter().map(|m| &m[..]).collect());
                let mut rng = SmallRng::seed_from_u64(*seed);
                match *count {
                    None if members.is_empty() => Reply::Null,
                    None => Reply::bulk(members[rng.random_range(0..members.len())].to_vec()),
                    Some(_) if members.is_empty() => Reply::Array(Vec::new()),
                    // Negative: that many, a member possibly more than once.
                    Some(count) if count < 0 => Reply::Array(
                        (0..count.unsigned_abs())
                            .map(|_| Reply::bulk(members[rng.random_range(0..members.len())].to_vec()))
                            .collect(),
                    ),
                    Some(count) => Reply::Array(bulks(&mut pick(members, count as u64, &mut rng).into_iter())),
                }
            }
            other => unreachable!("{other:?} is not a set read"),
        })
    }

    /// Runs the set commands that write.
    pub(super) fn write_set(&mut self, command: &Command, now_ms: u64) -> Result<Reply, Refused> {
        match command {
            Command::SAdd { key, members } => {
                self.reclaim(key, now_ms);
                let existing = self.set(key, now_ms)?;
                let mut seen = std::collections::HashSet::new();
                let fresh: Vec<&[u8]> = members
                    .iter()
                    .map(|m| m.as_slice())
                    .filter(|m| existing.is_none_or(|set| !set.contains(&KeyRef(m))) && seen.insert(*m))
                    .collect();
                let added = fresh.len();
                self.add_members(key, fresh)?;
                Ok(Reply::Integer(added as i64))
            }
            Command::SRem { key, members } => {
                if self.set(key, now_ms)?.is_none() {
                    return Ok(Reply::Integer(0));
                }
                let set = self.set_mut(key);
                let removed = members.iter().filter(|member| set.remove(&KeyRef(member))).count();
                if set.is_empty() {
                    self.keys.remove(&KeyRef(key));
                }
                Ok(Reply::Integer(removed as i64))
            }
            Command::SCombine { op, keys, store: Some(destination) } => {
                let members: Vec<Vec<u8>> = self.combine(*op, keys, now_ms)?.into_iter().map(<[u8]>::to_vec).collect();
                let count = members.len();
                // The result, made whole before the destination changes.
                let mut set = Members::with_hasher_in(FixedState::default(), self.alloc.clone());
                set.try_reserve(count).map_err(|_| Reply::error(OOM))?;
                for member in &members {
                    set.insert(self.bytes(member)?);
                }
                match count {
                    0 => {
                        self.keys.remove(&KeyRef(destination));
                    }
                    _ => self.put(destination, Value::Set(self.boxed(set)?), None)?,
                }
                Ok(Reply::Integer(count as i64))
            }
            Command::SPop { key, count, seed } => {
                let Some(set) = self.set(key, now_ms)? else {
                    return Ok(if count.is_some() { Reply::Array(Vec::new()) } else { Reply::Null });
                };
                let mut rng = SmallRng::seed_from_u64(*seed);
                let members: Vec<&[u8]> = set.iter().map(|m| &m[..]).collect();
                let taken: Vec<Vec<u8>> =
                    pick(members, count.unwrap_or(1), &mut rng).into_iter().map(<[u8]>::to_vec).collect();
                let set = self.set_mut(key);
                for member in &taken {
                    set.remove(&KeyRef(member));
                }
                if set.is_empty() {
                    self.keys.remove(&KeyRef(key));
                }
                Ok(match count {
                    None => taken.into_iter().next().map_or(Reply::Null, Reply::bulk),
                    Some(_) => Reply::Array(taken.into_iter().map(Reply::bulk).collect()),
                })
            }
            other => unreachable!("{other:?} is not a set write"),
        }
    }

    /// The live set of `key`, which the caller found.
    fn set_mut(&mut self, key: &[u8]) -> &mut Members<A> {
        self.typed_mut(key)
    }

    /// Adds `fresh` members (none of them in the set) to the key's set, made if absent; every
    /// allocation comes before the first change.
    fn add_members(&mut self, key: &[u8], fresh: Vec<&[u8]>) -> Result<(), Refused> {
        let stored: Vec<_> = fresh.iter().map(|member| self.bytes(member)).collect::<Result<_, _>>()?;
        if self.keys.contains_key(&KeyRef(key)) {
            let set = self.set_mut(key);
            set.try_reserve(stored.len()).map_err(|_| Reply::error(OOM))?;
            set.extend(stored);
            return Ok(());
        }
        if stored.is_empty() {
            return Ok(());
        }
        let mut set = Members::with_hasher_in(FixedState::default(), self.alloc.clone());
        set.try_reserve(stored.len()).map_err(|_| Reply::error(OOM))?;
        set.extend(stored);
        self.put(key, Value::Set(self.boxed(set)?), None)
    }
}

/// Up to `count` of `members`, distinct, in random order.
fn pick<'a>(mut members: Vec<&'a [u8]>, count: u64, rng: &mut SmallRng) -> Vec<&'a [u8]> {
    let count = (count.min(members.len() as u64)) as usize;
    // A partial Fisher-Yates shuffle: the first `count` places get a random draw each.
    for i in 0..count {
        let j = rng.random_range(i..members.len());
        members.swap(i, j);
    }
    members.truncate(count);
    members
}

#[cfg(test)]
mod tests {
    use super::super::WRONGTYPE;
    use super::super::tests::run;
    use super::*;
    use allocator_api2::alloc::Global;

    fn members(reply: Reply) -> Vec<String> {
        let (Reply::Set(items) | Reply::Array(items)) = reply else { panic!("{reply:?}") };
        let mut found: Vec<String> = items
            .into_iter()
            .map(|item| match item {
                Reply::Bulk(bytes) => String::from_utf8(bytes).unwrap(),
                other => panic!("{other:?}"),
            })
            .collect();
        found.sort();
        found
    }

    #[test]
    fn sets_answer_as_redis() {
        let mut keys = Keyspace::new_in(Global);
        assert_eq!(run(&mut keys, "SADD s a b c a", 0), Reply::Integer(3));
        assert_eq!(run(&mut keys, "SADD s c d", 0), Reply::Integer(1));
        assert_eq!(members(run(&mut keys, "SMEMBERS s", 0)), ["a", "b", "c", "d"]);
        assert_eq!(run(&mut keys, "SCARD s", 0), Reply::Integer(4));
        assert_eq!(run(&mut keys, "SISMEMBER s a", 0), Reply::Integer(1));
        assert_eq!(run(&mut keys, "SMISMEMBER s a x", 0), Reply::Array(vec![Reply::Integer(1), Reply::Integer(0)]));
        assert_eq!(run(&mut keys, "TYPE s", 0), Reply::Simple("set".into()));
        assert_eq!(run(&mut keys, "SREM s a x", 0), Reply::Integer(1));
        assert_eq!(run(&mut keys, "SADD t c d e", 0), Reply::Integer(3));
        assert_eq!(members(run(&mut keys, "SINTER s t", 0)), ["c", "d"]);
        assert_eq!(members(run(&mut keys, "SUNION s t nope", 0)), ["b", "c", "d", "e"]);
        assert_eq!(members(run(&mut keys, "SDIFF s t", 0)), ["b"]);
        assert_eq!(members(run(&mut keys, "SINTER s nope", 0)), Vec::<String>::new());
        assert_eq!(run(&mut keys, "SUNIONSTORE u s t", 0), Reply::Integer(4));
        assert_eq!(members(run(&mut keys, "SMEMBERS u", 0)), ["b", "c", "d", "e"]);
        assert_eq!(run(&mut keys, "SINTERSTORE u s nope", 0), Reply::Integer(0));
        assert_eq!(run(&mut keys, "EXISTS u", 0), Reply::Integer(0), "an empty result deletes the destination");
        assert_eq!(run(&mut keys, "SET str v", 0), Reply::ok());
        assert_eq!(run(&mut keys, "SDIFFSTORE str s t", 0), Reply::Integer(1), "any type is overwritten");
        assert_eq!(run(&mut keys, "TYPE str", 0), Reply::Simple("set".into()));
        assert_eq!(run(&mut keys, "SET str v", 0), Reply::ok());
        let wrong = Reply::error(WRONGTYPE);
        for command in ["SADD str a", "SMEMBERS str", "SINTER s str", "SUNION nope str", "SCARD str", "SPOP str"] {
            assert_eq!(run(&mut keys, command, 0), wrong, "{command}");
        }
        assert_eq!(run(&mut keys, "SREM s b c d", 0), Reply::Integer(3));
        assert_eq!(run(&mut keys, "EXISTS s", 0), Reply::Integer(0), "the key goes with its last member");
        assert_eq!(run(&mut keys, "SPOP s -1", 0), Reply::error("ERR value is out of range, must be positive"));
        assert_eq!(run(&mut keys, "SPOP s 1 2", 0), Reply::error("ERR syntax error"));
    }

    #[test]
    fn random_members_come_from_the_requests_seed() {
        let mut keys = Keyspace::new_in(Global);
        assert_eq!(run(&mut keys, "SADD s a b c d e", 0), Reply::Integer(5));
        let draw = |keys: &mut Keyspace<Global>, text: &str, seed: u64| {
            let request: Vec<Vec<u8>> = text.split(' ').map(|w| w.as_bytes().to_vec()).collect();
            keys.execute(&crate::command::parse(&request, 0).unwrap().seeded(seed), 0)
        };
        assert_eq!(
            draw(&mut keys, "SRANDMEMBER s", 7),
            draw(&mut keys, "SRANDMEMBER s", 7),
            "the same seed, the same member"
        );
        assert_eq!(members(draw(&mut keys, "SRANDMEMBER s 10", 1)), ["a", "b", "c", "d", "e"], "distinct, at most all");
        let Reply::Array(repeated) = draw(&mut keys, "SRANDMEMBER s -8", 1) else { panic!() };
        assert_eq!(repeated.len(), 8, "negative: with repetition");
        assert_eq!(run(&mut keys, "SRANDMEMBER nope", 0), Reply::Null);
        assert_eq!(run(&mut keys, "SRANDMEMBER nope 3", 0), Reply::Array(Vec::new()));
        let popped = members(draw(&mut keys, "SPOP s 2", 3));
        assert_eq!(popped.len(), 2);
        assert_eq!(run(&mut keys, "SCARD s", 0), Reply::Integer(3));
        let Reply::Bulk(_) = draw(&mut keys, "SPOP s", 4) else { panic!() };
        assert_eq!(members(draw(&mut keys, "SPOP s 5", 5)).len(), 2);
        assert_eq!(run(&mut keys, "EXISTS s", 0), Reply::Integer(0));
        assert_eq!(run(&mut keys, "SPOP s", 0), Reply::Null);
    }
}
