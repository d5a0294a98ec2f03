//! Lists: `LPUSH`, `RPUSH` (and the `X` forms), `LPOP`, `RPOP` with a count, `LRANGE`, `LLEN`,
//! `LINDEX`, `LSET`, `LREM`, `LTRIM`, `LINSERT`, `LPOS`, as Redis runs them, on a [`Deque`] in
//! the keyspace's allocator. Every refusal comes before the first change; popping never
//! allocates.

use super::{Bytes, KeyRef, Keyspace, OOM, Refused, Value};
use crate::command::{Command, End};
use crate::deque::Deque;
use crate::resp::Reply;
use allocator_api2::alloc::Allocator;

/// A list's elements.
pub type List<A> = Deque<Bytes<A>, A>;

/// Redis's inclusive `start`/`stop` (negative from the end) as a range of `len` elements.
pub(super) fn span(start: i64, stop: i64, len: usize) -> std::ops::Range<usize> {
    let len = len as i64;
    let start = if start < 0 { len.saturating_add(start).max(0) } else { start };
    let stop = if stop < 0 { len.saturating_add(stop) } else { stop.min(len - 1) };
    if start > stop || start >= len { 0..0 } else { start as usize..stop as usize + 1 }
}

/// Index `index` (negative from the end) of `len` elements, if it is one.
fn place(index: i64, len: usize) -> Option<usize> {
    let index = if index < 0 { (len as i64).checked_add(index)? } else { index };
    (0..len as i64).contains(&index).then_some(index as usize)
}

impl<A: Allocator + Clone> Keyspace<A> {
    /// The key's list at `now_ms`: `Ok(None)` if it does not exist, WRONGTYPE if it is not a
    /// list.
    fn list(&self, key: &[u8], now_ms: u64) -> Result<Option<&List<A>>, Refused> {
        self.typed(key, now_ms)
    }

    /// The live list of `key`, which the caller found.
    fn list_mut(&mut self, key: &[u8]) -> &mut List<A> {
        self.typed_mut(key)
    }

    /// Removes `key` if its list is empty: a key goes with its last element.
    fn drop_if_empty(&mut self, key: &[u8]) {
        if self.list_mut(key).is_empty() {
            self.keys.remove(&KeyRef(key));
        }
    }

    /// Answers the list commands that only read.
    pub(super) fn read_list(&self, command: &Command, now_ms: u64) -> Result<Reply, Refused> {
        let bulk = |element: &Bytes<A>| Reply::bulk(element.to_vec());
        Ok(match command {
            Command::LRange { key, start, stop } => {
                let Some(list) = self.list(key, now_ms)? else { return Ok(Reply::Array(Vec::new())) };
                let span = span(*start, *stop, list.len());
                Reply::Array(list.iter().skip(span.start).take(span.len()).map(bulk).collect())
            }
            Command::LLen { key } => Reply::Integer(self.list(key, now_ms)?.map_or(0, |list| list.len() as i64)),
            Command::LIndex { key, index } => {
                let list = self.list(key, now_ms)?;
                list.and_then(|list| list.get(place(*index, list.len())?)).map_or(Reply::Null, bulk)
            }
            Command::LPos { key, element, rank, count, maxlen } => {
                let list = self.list(key, now_ms)?;
                let len = list.map_or(0, Deque::len);
                let scanned = if *maxlen == 0 { len } else { len.min(*maxlen as usize) };
                let matches =
                    |position: &usize| list.and_then(|l| l.get(*position)).is_some_and(|e| e[..] == element[..]);
                // From the head for a positive rank, the tail for a negative one; skip the first
                // |rank| - 1 matches.
                let positions: Box<dyn Iterator<Item = usize>> = match *rank > 0 {
                    true => Box::new(0..scanned),
                    false => Box::new((len - scanned..len).rev()),
                };
                let mut found = positions.filter(matches).skip(rank.unsigned_abs() as usize - 1);
                match count {
                    None => found.next().map_or(Reply::Null, |at| Reply::Integer(at as i64)),
                    Some(0) => Reply::Array(found.map(|at| Reply::Integer(at as i64)).collect()),
                    Some(n) => Reply::Array(found.take(*n as usize).map(|at| Reply::Integer(at as i64)).collect()),
                }
            }
            other => unreachable!("{other:?} is not a list read"),
        })
    }

    /// Runs the list commands that write.
    pub(super) fn write_list(&mut self, command: &Command, now_ms: u64) -> Result<Reply, Refused> {
        match command {
            Command::Push { key, elements, end, only_existing } => {
                self.reclaim(key, now_ms);
                let exists = self.list(key, now_ms)?.is_some();
                if *only_existing && !exists {
                    return Ok(Reply::Integer(0));
                }
                let stored: Vec<Bytes<A>> = elements.iter().map(|e| self.bytes(e)).collect::<Result<_, _>>()?;
                let mut fresh = match exists {
                    true => None,
                    false => Some(Deque::new_in(self.alloc.clone())),
                };
                let list = match fresh.as_mut() {
                    Some(list) => list,
                    None => self.list_mut(key),
                };
                list.try_reserve(stored.len()).map_err(|_| Reply::error(OOM))?;
                // A new list goes in whole (or not at all, if the key finds no room).
                if let Some(mut list) = fresh {
                    push_all(&mut list, stored, *end);
                    let len = list.len();
                    self.put(key, Value::List(self.boxed(list)?), None)?;
                    return Ok(Reply::Integer(len as i64));
                }
                let list = self.list_mut(key);
                push_all(list, stored, *end);
                Ok(Reply::Integer(list.len() as i64))
            }
            Command::Pop { key, end, count } => {
                if self.list(key, now_ms)?.is_none() {
                    return Ok(if count.is_some() { Reply::NullArray } else { Reply::Null });
                }
                let list = self.list_mut(key);
                let take = count.unwrap_or(1).min(list.len() as u64) as usize;
                let popped: Vec<Reply> = (0..take)
                    .filter_map(|_| match end {
                        End::Left => list.pop_front(),
                        End::Right => list.pop_back(),
                    })
                    .map(|element| Reply::bulk(element.to_vec()))
                    .collect();
                self.drop_if_empty(key);
                Ok(match count {
                    None => popped.into_iter().next().unwrap_or(Reply::Null),
                    Some(_) => Reply::Array(popped),
                })
            }
            Command::LSet { key, index, element } => {
                let Some(list) = self.list(key, now_ms)? else { return Err(Reply::error("ERR no such key")) };
                let at = place(*index, list.len()).ok_or_else(|| Reply::error("ERR index out of range"))?;
                let stored = self.bytes(element)?;
                *self.list_mut(key).get_mut(at).expect("in range") = stored;
                Ok(Reply::ok())
            }
            Command::LRem { key, count, element } => {
                let Some(list) = self.list(key, now_ms)? else { return Ok(Reply::Integer(0)) };
                let len = list.len();
                let limit = if *count == 0 { usize::MAX } else { count.unsigned_abs() as usize };
                // The positions to remove: the first |count| matches from the chosen end.
                let matching = |at: &usize| list.get(*at).is_some_and(|e| e[..] == element[..]);
                let mut gone: Vec<usize> = match *count >= 0 {
                    true => (0..len).filter(matching).take(limit).collect(),
                    false => (0..len).rev().filter(matching).take(limit).collect(),
                };
                gone.sort_unstable();
                let list = self.list_mut(key);
                let mut position = 0;
                let mut next = gone.iter().peekable();
                let removed = list.retain(|_| {
                    let keep = next.peek() != Some(&&position);
                    if !keep {
                        next.next();
                    }
                    position += 1;
                    keep
                });
                self.drop_if_empty(key);
                Ok(Reply::Integer(removed as i64))
            }
            Command::LTrim { key, start, stop } => {
                let Some(list) = self.list(key, now_ms)? else { return Ok(Reply::ok()) };
                let span = span(*start, *stop, list.len());
                self.list_mut(key).keep_range(span.start, span.end);
                self.drop_if_empty(key);
                Ok(Reply::ok())
            }
            Command::LInsert { key, after, pivot, element } => {
                let Some(list) = self.list(key, now_ms)? else { return Ok(Reply::Integer(0)) };
                let Some(at) = list.iter().position(|e| e[..] == pivot[..]) else { return Ok(Reply::Integer(-1)) };
                let stored = self.bytes(element)?;
                let list = self.list_mut(key);
                list.try_reserve(1).map_err(|_| Reply::error(OOM))?;
                list.insert(at + usize::from(*after), stored).expect("room reserved");
                Ok(Reply::Integer(list.len() as i64))
            }
            other => unreachable!("{other:?} is not a list write"),
        }
    }
}

/// Pushes every element at `end`, in order (so `LPUSH k a b` leaves `b` first); room for them
/// was reserved.
fn push_all<A: Allocator + Clone>(list: &mut List<A>, elements: Vec<Bytes<A>>, end: End) {
    for element in elements {
        let pushed = match end {
            End::Left => list.push_front(element),
            End::Right => list.push_back(element),
        };
        pushed.expect("room reserved");
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
    fn lists_answer_as_redis() {
        let mut keys = Keyspace::new_in(Global);
        assert_eq!(run(&mut keys, "RPUSHX l a", 0), Reply::Integer(0));
        assert_eq!(run(&mut keys, "RPUSH l a b c", 0), Reply::Integer(3));
        assert_eq!(run(&mut keys, "LPUSH l z y", 0), Reply::Integer(5));
        assert_eq!(run(&mut keys, "LRANGE l 0 -1", 0), strings(&["y", "z", "a", "b", "c"]));
        assert_eq!(run(&mut keys, "LRANGE l -2 100", 0), strings(&["b", "c"]));
        assert_eq!(run(&mut keys, "LRANGE l 3 1", 0), strings(&[]));
        assert_eq!(run(&mut keys, "LLEN l", 0), Reply::Integer(5));
        assert_eq!(run(&mut keys, "LINDEX l -1", 0), Reply::bulk("c"));
        assert_eq!(run(&mut keys, "LINDEX l 9", 0), Reply::Null);
        assert_eq!(run(&mut keys, "LSET l 1 Z", 0), Reply::ok());
        assert_eq!(run(&mut keys, "LSET l 9 Z", 0), Reply::error("ERR index out of range"));
        assert_eq!(run(&mut keys, "LSET nope 0 Z", 0), Reply::error("ERR no such key"));
        assert_eq!(run(&mut keys, "LINSERT l BEFORE a x", 0), Reply::Integer(6));
        assert_eq!(run(&mut keys, "LINSERT l AFTER c x", 0), Reply::Integer(7));
        assert_eq!(run(&mut keys, "LINSERT l AFTER nope x", 0), Reply::Integer(-1));
        assert_eq!(run(&mut keys, "LINSERT l NEAR a x", 0), Reply::error("ERR syntax error"));
        assert_eq!(run(&mut keys, "LRANGE l 0 -1", 0), strings(&["y", "Z", "x", "a", "b", "c", "x"]));
        assert_eq!(run(&mut keys, "LPOS l x", 0), Reply::Integer(2));
        assert_eq!(run(&mut keys, "LPOS l x RANK -1", 0), Reply::Integer(6));
        assert_eq!(run(&mut keys, "LPOS l x COUNT 0", 0), Reply::Array(vec![Reply::Integer(2), Reply::Integer(6)]));
        assert_eq!(run(&mut keys, "LPOS l x MAXLEN 2", 0), Reply::Null);
        assert!(
            matches!(run(&mut keys, "LPOS l x RANK 0", 0), Reply::Error(e) if e.starts_with("ERR RANK can't be zero"))
        );
        assert_eq!(run(&mut keys, "LREM l -1 x", 0), Reply::Integer(1));
        assert_eq!(run(&mut keys, "LRANGE l 0 -1", 0), strings(&["y", "Z", "x", "a", "b", "c"]));
        assert_eq!(run(&mut keys, "LTRIM l 1 -2", 0), Reply::ok());
        assert_eq!(run(&mut keys, "LRANGE l 0 -1", 0), strings(&["Z", "x", "a", "b"]));
        assert_eq!(run(&mut keys, "LPOP l", 0), Reply::bulk("Z"));
        assert_eq!(run(&mut keys, "RPOP l 2", 0), strings(&["b", "a"]));
        assert_eq!(run(&mut keys, "LPOP l 0", 0), strings(&[]));
        assert_eq!(run(&mut keys, "LPOP l -1", 0), Reply::error("ERR value is out of range, must be positive"));
        assert_eq!(run(&mut keys, "RPOP l 5", 0), strings(&["x"]));
        assert_eq!(run(&mut keys, "EXISTS l", 0), Reply::Integer(0), "the key goes with its last element");
        assert_eq!(run(&mut keys, "LPOP l", 0), Reply::Null);
        assert_eq!(run(&mut keys, "LPOP l 2", 0), Reply::NullArray);
        assert_eq!(run(&mut keys, "RPUSH l a", 0), Reply::Integer(1));
        assert_eq!(run(&mut keys, "TYPE l", 0), Reply::Simple("list".into()));
        assert_eq!(run(&mut keys, "LTRIM l 5 10", 0), Reply::ok());
        assert_eq!(run(&mut keys, "EXISTS l", 0), Reply::Integer(0));
        assert_eq!(run(&mut keys, "SET s v", 0), Reply::ok());
        for command in ["LPUSH s a", "LRANGE s 0 1", "LPOP s", "LLEN s", "LPOS s a", "LINSERT s BEFORE a b"] {
            assert_eq!(run(&mut keys, command, 0), Reply::error(WRONGTYPE), "{command}");
        }
    }
}
