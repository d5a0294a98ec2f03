//! A double-ended queue in any allocator (a list's elements on the region's heap): `std`'s
//! `VecDeque` takes no allocator on stable Rust, and `allocator_api2` has none.
//!
//! A ring of `Option<T>` slots: pushing at either end is O(1) amortized and only pushing
//! allocates (with `try_reserve`'s refusal instead of an abort), popping and indexing never
//! do. Slots outside the ring hold `None`; `Option` of a vector costs no space.

use allocator_api2::alloc::Allocator;
use allocator_api2::vec::Vec as AllocVec;

/// The ring could not grow: the allocator is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

/// A double-ended queue of `T` in allocator `A`.
#[derive(Debug)]
pub struct Deque<T, A: Allocator> {
    slots: AllocVec<Option<T>, A>,
    head: usize,
    len: usize,
}

impl<T, A: Allocator + Clone> Deque<T, A> {
    /// An empty queue; nothing is allocated until the first push.
    pub fn new_in(alloc: A) -> Deque<T, A> {
        Deque { slots: AllocVec::new_in(alloc), head: 0, len: 0 }
    }

    /// Elements held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn slot(&self, index: usize) -> usize {
        (self.head + index) % self.slots.len().max(1)
    }

    /// The element at `index` from the front.
    pub fn get(&self, index: usize) -> Option<&T> {
        if index >= self.len {
            return None;
        }
        self.slots[self.slot(index)].as_ref()
    }

    /// The element at `index` from the front, to change.
    pub fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        if index >= self.len {
            return None;
        }
        let slot = self.slot(index);
        self.slots[slot].as_mut()
    }

    /// Room for `more` elements, so that as many pushes cannot fail.
    pub fn try_reserve(&mut self, more: usize) -> Result<(), Full> {
        let needed = self.len.checked_add(more).ok_or(Full)?;
        if needed <= self.slots.len() {
            return Ok(());
        }
        let capacity = needed.max(self.slots.len() * 2).max(4);
        let mut slots = AllocVec::new_in(self.slots.allocator().clone());
        slots.try_reserve_exact(capacity).map_err(|_| Full)?;
        // In order from the front, then empty slots.
        for index in 0..self.len {
            let slot = self.slot(index);
            slots.push(self.slots[slot].take());
        }
        slots.resize_with(capacity, || None);
        self.slots = slots;
        self.head = 0;
        Ok(())
    }

    /// Puts `value` first.
    pub fn push_front(&mut self, value: T) -> Result<(), Full> {
        self.try_reserve(1)?;
        self.head = (self.head + self.slots.len() - 1) % self.slots.len();
        self.slots[self.head] = Some(value);
        self.len += 1;
        Ok(())
    }

    /// Puts `value` last.
    pub fn push_back(&mut self, value: T) -> Result<(), Full> {
        self.try_reserve(1)?;
        let slot = self.slot(self.len);
        self.slots[slot] = Some(value);
        self.len += 1;
        Ok(())
    }

    /// Takes the first element.
    pub fn pop_front(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        let value = self.slots[self.head].take();
        self.head = (self.head + 1) % self.slots.len();
        self.len -= 1;
        value
    }

    /// Takes the last element.
    pub fn pop_back(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        let slot = self.slot(self.len - 1);
        self.len -= 1;
        self.slots[slot].take()
    }

    /// Inserts `value` at `index` (0..=len), moving the elements after it back.
    pub fn insert(&mut self, index: usize, value: T) -> Result<(), Full> {
        assert!(index <= self.len, "insert at {index} of {}", self.len);
        self.push_back(value)?;
        // Bubble it from the end to its place.
        for at in (index..self.len - 1).rev() {
            let (a, b) = (self.slot(at), self.slot(at + 1));
            self.slots.swap(a, b);
        }
        Ok(())
    }

    /// Removes and returns the element at `index`, moving the elements after it forward.
    pub fn remove(&mut self, index: usize) -> Option<T> {
        if index >= self.len {
            return None;
        }
        for at in index..self.len - 1 {
            let (a, b) = (self.slot(at), self.slot(at + 1));
            self.slots.swap(a, b);
        }
        self.pop_back()
    }

    /// Keeps only the elements `keep` says yes to, in order; returns how many went.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) -> usize {
        let mut kept = 0;
        for index in 0..self.len {
            let slot = self.slot(index);
            if self.slots[slot].as_ref().is_some_and(&mut keep) {
                let to = self.slot(kept);
                self.slots.swap(to, slot);
                kept += 1;
            }
        }
        let gone = self.len - kept;
        for _ in 0..gone {
            self.pop_back();
        }
        gone
    }

    /// Keeps the elements `start..end` (from the front) and drops the rest.
    pub fn keep_range(&mut self, start: usize, end: usize) {
        let end = end.min(self.len);
        let start = start.min(end);
        for _ in end..self.len {
            self.pop_back();
        }
        for _ in 0..start {
            self.pop_front();
        }
    }

    /// The elements from the front.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + ExactSizeIterator {
        (0..self.len).map(|index| self.slots[self.slot(index)].as_ref().expect("a slot in the ring holds a value"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use allocator_api2::alloc::Global;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    #[derive(Clone, Debug)]
    enum Op {
        PushFront(u16),
        PushBack(u16),
        PopFront,
        PopBack,
        Insert(usize, u16),
        Remove(usize),
        Retain(u16),
        Keep(usize, usize),
        Set(usize, u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            any::<u16>().prop_map(Op::PushFront),
            any::<u16>().prop_map(Op::PushBack),
            Just(Op::PopFront),
            Just(Op::PopBack),
            (0..40usize, any::<u16>()).prop_map(|(i, v)| Op::Insert(i, v)),
            (0..40usize).prop_map(Op::Remove),
            (1..5u16).prop_map(Op::Retain),
            (0..40usize, 0..40usize).prop_map(|(a, b)| Op::Keep(a, b)),
            (0..40usize, any::<u16>()).prop_map(|(i, v)| Op::Set(i, v)),
        ]
    }

    proptest! {
        /// Every operation does to the ring what it does to std's VecDeque.
        #[test]
        fn it_behaves_as_a_vecdeque(ops in proptest::collection::vec(op(), 0..200)) {
            let mut ring = Deque::new_in(Global);
            let mut model = VecDeque::new();
            for op in ops {
                match op {
                    Op::PushFront(v) => { ring.push_front(v).unwrap(); model.push_front(v); }
                    Op::PushBack(v) => { ring.push_back(v).unwrap(); model.push_back(v); }
                    Op::PopFront => prop_assert_eq!(ring.pop_front(), model.pop_front()),
                    Op::PopBack => prop_assert_eq!(ring.pop_back(), model.pop_back()),
                    Op::Insert(i, v) => {
                        let i = i.min(model.len());
                        ring.insert(i, v).unwrap();
                        model.insert(i, v);
                    }
                    Op::Remove(i) => prop_assert_eq!(ring.remove(i), model.remove(i)),
                    Op::Retain(m) => {
                        let before = model.len();
                        model.retain(|v| v % m != 0);
                        prop_assert_eq!(ring.retain(|v| v % m != 0), before - model.len());
                    }
                    Op::Keep(a, b) => {
                        ring.keep_range(a, b);
                        let end = b.min(model.len());
                        let start = a.min(end);
                        model = model.range(start..end).copied().collect();
                    }
                    Op::Set(i, v) => {
                        if let Some(slot) = ring.get_mut(i) { *slot = v; }
                        if let Some(slot) = model.get_mut(i) { *slot = v; }
                    }
                }
                prop_assert_eq!(ring.len(), model.len());
                prop_assert!(ring.iter().eq(model.iter()));
                prop_assert!(ring.iter().rev().eq(model.iter().rev()));
            }
        }
    }
}
