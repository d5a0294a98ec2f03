//! nonstop's Redis-compatible service (`kind = "kv"`), for clients that speak RESP unchanged.
//!
//! Built in layers, each pure and tested on its own before the next uses it:
//!
//! * [`resp`]: the wire protocol. Requests (multibulk and inline, pipelined, cut anywhere) are
//!   decoded incrementally under Redis's limits with Redis's protocol errors; replies are
//!   encoded for RESP2 or RESP3, as the connection's `HELLO` chose.
//! * [`command`]: requests read as commands (today the string and key commands), every
//!   argument checked with Redis's error replies, relative times made absolute.
//! * [`keyspace`]: the keys and their values over an allocator of the caller's (the region's
//!   heap, in the service), and the commands run on them as Redis runs them: expiry at the
//!   request's time, every refusal (a full region included) before the first change.
//!
//! The other commands, the service on nonstop's `Service` trait and the server that puts them on a
//! port come next (docs/kv.md will list what is supported).

pub mod command;
pub mod keyspace;
pub mod resp;
