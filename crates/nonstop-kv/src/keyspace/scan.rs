//! `SCAN`, `HSCAN`, `SSCAN`, `ZSCAN` and `RANDOMKEY`.
//!
//! A scan answers in one page: every match, and the next cursor 0. Redis's cursor walks its
//! hash table's buckets in reverse-bit order, which stays valid while the table grows; a
//! `hashbrown` table moves its entries when it grows or rehashes in place, and its buckets
//! cannot be walked from a position, so a cursor into it could miss keys. One page is what
//! Redis itself answers for small collections, and a client's scan loop takes it unchanged;
//! for a large keyspace it costs what `KEYS` costs.

use super::{Entry, Keyspace, Refused, Value, WRONGTYPE};
use crate::command::{Command, ScanOver};
use crate::glob::glob_matches;
use crate::resp::{Reply, format_double};
use allocator_api2::alloc::Allocator;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

impl<A: Allocator + Clone> Keyspace<A> {
    pub(super) fn scan(&self, command: &Command, now_ms: u64) -> Result<Reply, Refused> {
        let live = |entry: &&Entry<A>| entry.is_live(now_ms);
        match command {
            Command::RandomKey { seed } => {
                let count = self.keys.values().filter(live).count();
                if count == 0 {
                    return Ok(Reply::Null);
                }
                let chosen = SmallRng::seed_from_u64(*seed).random_range(0..count);
                let key = self.keys.iter().filter(|(_, entry)| live(entry)).nth(chosen).map(|(key, _)| key);
                Ok(key.map_or(Reply::Null, |key| Reply::bulk(key.to_vec())))
            }
            Command::Scan { over, cursor, pattern, kind, novalues } => {
                let matches = |item: &[u8]| pattern.as_ref().is_none_or(|pattern| glob_matches(pattern, item));
                let bulk = |item: &[u8]| Reply::bulk(item.to_vec());
                // Only cursor 0 is ever handed out; any other starts nowhere.
                let key = match over {
                    ScanOver::Keys => None,
                    ScanOver::Hash(key) | ScanOver::Set(key) | ScanOver::SortedSet(key) => Some(key),
                };
                let items: Vec<Reply> = match (key, *cursor) {
                    (_, 1..) => Vec::new(),
                    (None, 0) => self
                        .keys
                        .iter()
                        .filter(|(key, entry)| live(entry) && matches(key))
                        .filter(|(_, entry)| {
                            kind.as_ref().is_none_or(|kind| kind == entry.value.type_name().as_bytes())
                        })
                        .map(|(key, _)| bulk(key))
                        .collect(),
                    (Some(key), 0) => match (over, self.live(key, now_ms).map(|entry| &entry.value)) {
                        (_, None) => Vec::new(),
                        (ScanOver::Hash(_), Some(Value::Hash(fields))) => fields
                            .iter()
                            .filter(|(field, _)| matches(field))
                            .flat_map(|(field, value)| match novalues {
                                true => vec![bulk(field)],
                                false => vec![bulk(field), bulk(value)],
                            })
                            .collect(),
                        (ScanOver::Set(_), Some(Value::Set(members))) => {
                            members.iter().filter(|member| matches(member)).map(|member| bulk(member)).collect()
                        }
                        (ScanOver::SortedSet(_), Some(Value::SortedSet(set))) => set
                            .ascending()
                            .filter(|(member, _)| matches(member))
                            .flat_map(|(member, score)| [bulk(&member), bulk(format_double(score).as_bytes())])
                            .collect(),
                        (_, Some(_)) => return Err(Reply::error(WRONGTYPE)),
                    },
                };
                Ok(Reply::Array(vec![Reply::bulk("0"), Reply::Array(items)]))
            }
            other => unreachable!("{other:?} is not a scan"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::run;
    use super::*;
    use allocator_api2::alloc::Global;

    fn page(reply: Reply) -> Vec<String> {
        let Reply::Array(parts) = reply else { panic!("{reply:?}") };
        assert_eq!(parts[0], Reply::bulk("0"), "one page: the next cursor is 0");
        let Reply::Array(items) = &parts[1] else { panic!() };
        let mut items: Vec<String> = items
            .iter()
            .map(|item| match item {
                Reply::Bulk(bytes) => String::from_utf8(bytes.clone()).unwrap(),
                other => panic!("{other:?}"),
            })
            .collect();
        items.sort();
        items
    }

    #[test]
    fn scans_answer_every_match_in_one_page() {
        let mut keys = Keyspace::new_in(Global);
        assert_eq!(run(&mut keys, "MSET user:1 a user:2 b other c", 0), Reply::ok());
        assert_eq!(run(&mut keys, "SET gone x PX 5", 0), Reply::ok());
        assert_eq!(run(&mut keys, "HSET h f1 v1 f2 v2", 0), Reply::Integer(2));
        assert_eq!(run(&mut keys, "ZADD z 1.5 m", 0), Reply::Integer(1));
        assert_eq!(page(run(&mut keys, "SCAN 0", 10)), ["h", "other", "user:1", "user:2", "z"]);
        assert_eq!(page(run(&mut keys, "SCAN 0 MATCH user:* COUNT 1", 10)), ["user:1", "user:2"]);
        assert_eq!(page(run(&mut keys, "SCAN 0 TYPE hash", 10)), ["h"]);
        assert_eq!(page(run(&mut keys, "SCAN 7", 10)), Vec::<String>::new());
        assert_eq!(page(run(&mut keys, "HSCAN h 0 MATCH f1", 10)), ["f1", "v1"]);
        assert_eq!(page(run(&mut keys, "HSCAN h 0 NOVALUES", 10)), ["f1", "f2"]);
        assert_eq!(page(run(&mut keys, "ZSCAN z 0", 10)), ["1.5", "m"]);
        assert_eq!(page(run(&mut keys, "SSCAN nope 0", 10)), Vec::<String>::new());
        assert_eq!(run(&mut keys, "SSCAN h 0", 10), Reply::error(WRONGTYPE));
        assert_eq!(run(&mut keys, "SCAN x", 10), Reply::error("ERR invalid cursor"));
        assert_eq!(run(&mut keys, "SCAN 0 COUNT 0", 10), Reply::error("ERR syntax error"));
        assert_eq!(run(&mut keys, "SSCAN h 0 NOVALUES", 10), Reply::error("ERR syntax error"));
        let Reply::Bulk(_) = run(&mut keys, "RANDOMKEY", 10) else { panic!("a key") };
        assert_eq!(run(&mut keys, "FLUSHALL", 10), Reply::ok());
        assert_eq!(run(&mut keys, "RANDOMKEY", 10), Reply::Null);
    }
}
