//! The consumers of a queue that have credit, in dispatch order: highest consumer
//! priority (`x-priority` on `basic.consume`) first, first-in-first-out within one
//! priority. Round-robin is "pop the front, push it back at the tail".

use std::cmp::Reverse;
use std::collections::{BTreeMap, VecDeque};

/// Consumers waiting for a message, by priority.
#[derive(Debug, Default)]
pub struct Active {
    by_priority: BTreeMap<Reverse<i32>, VecDeque<u64>>,
}

impl Active {
    /// Appends consumer `id` at the tail of its priority.
    pub fn push_back(&mut self, id: u64, priority: i32) {
        self.by_priority
            .entry(Reverse(priority))
            .or_default()
            .push_back(id);
    }

    /// Puts consumer `id` back at the head of its priority (taken by
    /// [`Active::pop_front`] and not served).
    pub fn push_front(&mut self, id: u64, priority: i32) {
        self.by_priority
            .entry(Reverse(priority))
            .or_default()
            .push_front(id);
    }

    /// Takes the next consumer: the front of the highest priority.
    pub fn pop_front(&mut self) -> Option<u64> {
        loop {
            let mut entry = self.by_priority.first_entry()?;
            match entry.get_mut().pop_front() {
                Some(id) => return Some(id),
                None => {
                    entry.remove();
                }
            }
        }
    }

    /// Keeps the consumers `keep` accepts.
    pub fn retain(&mut self, keep: impl Fn(u64) -> bool) {
        for q in self.by_priority.values_mut() {
            q.retain(|id| keep(*id));
        }
        self.by_priority.retain(|_, q| !q.is_empty());
    }

    /// Removes everyone.
    pub fn clear(&mut self) {
        self.by_priority.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::Active;

    #[test]
    fn higher_priority_first_then_fifo() {
        let mut a = Active::default();
        a.push_back(1, 0);
        a.push_back(2, 5);
        a.push_back(3, 0);
        a.push_back(4, 5);
        assert_eq!(a.pop_front(), Some(2));
        assert_eq!(a.pop_front(), Some(4));
        assert_eq!(a.pop_front(), Some(1));
        a.retain(|id| id != 3);
        assert_eq!(a.pop_front(), None);
    }
}
