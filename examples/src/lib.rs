//! Services written against nonstop's public API only, as a newcomer would write theirs.
//! Each has a node binary in `bin/` (`cargo build --release --examples`).
//!
//! * [`sessions`]: a session store on declared transactions.
//! * [`orderbook`]: a price-time priority matching engine on ordinary collections in the
//!   region (transparent mode).
//! * [`seats`]: seats for shows sold by several worker threads at once, actively replicated.

// The examples are read whole in examples/README.md: their fields are named for what they hold, and
// documented where a name is not enough.
#![allow(missing_docs)]

pub mod orderbook;
pub mod seats;
pub mod sessions;
