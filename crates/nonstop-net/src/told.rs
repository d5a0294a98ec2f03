//! Conditions that are retried often and told once: a driver retries what can pass by itself
//! (a peer not up yet, a port still taken, descriptors exhausted) every tick or so, but logs
//! only when the condition changes, so a minute of waiting is one line, not six thousand.
//!
//! ```
//! use nonstop_net::told::Told;
//! let mut unreachable = Told::default();
//! assert!(unreachable.now("connection refused"), "first time: log it");
//! assert!(!unreachable.now("connection refused"), "the same again: stay quiet");
//! assert!(unreachable.cleared(), "it passed: log that once");
//! assert!(!unreachable.cleared());
//! ```

/// The last condition told, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Told<T>(Option<T>);

impl<T> Default for Told<T> {
    fn default() -> Told<T> {
        Told(None)
    }
}

impl<T: PartialEq> Told<T> {
    /// The condition holds now; true if it was not the one last told (the caller logs it).
    pub fn now(&mut self, condition: T) -> bool {
        if self.0.as_ref() == Some(&condition) {
            return false;
        }
        self.0 = Some(condition);
        true
    }

    /// The condition passed; true if one was told (the caller may log that it passed).
    pub fn cleared(&mut self) -> bool {
        self.0.take().is_some()
    }

    /// Whether `condition` is the one last told.
    pub fn is(&self, condition: &T) -> bool {
        self.0.as_ref() == Some(condition)
    }
}
