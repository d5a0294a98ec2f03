//! nonstop's Redis-compatible service (`kind = "kv"`), for clients that speak RESP unchanged.
//!
//! Built in layers, each pure and tested on its own before the next uses it:
//!
//! * [`resp`]: the wire protocol. Requests (multibulk and inline, pipelined, cut anywhere) are
//!   decoded incrementally under Redis's limits with Redis's protocol errors; replies are
//!   encoded for RESP2 or RESP3, as the connection's `HELLO` chose.
//! * [`command`]: requests read as commands (strings, keys, hashes, lists, sets, sorted sets,
//!   scans), every argument checked with Redis's error replies, relative times made absolute;
//!   [`commands`] is the table of their names, arities and keys, as `COMMAND` reports it.
//! * [`keyspace`]: the keys and their values over an allocator of the caller's (the region's
//!   heap, in the service), and the commands run on them as Redis runs them: expiry at the
//!   request's time, every refusal (a full region included) before the first change.
//! * [`service`]: the keyspace as the `kv` service on nonstop's `Service` trait, on the
//!   region's heap: writes as calls (each reply held until the backups hold it), reads as
//!   queries.
//! * [`session`]: one Redis connection as a state machine: connection commands (`PING`,
//!   `HELLO`, `CLIENT`, `MULTI`/`EXEC`, ...) answered, data commands turned into the service's
//!   calls and queries, `WATCH` guards sent inside `EXEC`'s request. [`connection`] holds what
//!   every connection answers by itself (`AUTH` included); [`deque`] is the lists' ring buffer.
//! * [`topology`] and [`sentinel`]: where the service runs, as the node reports it from the
//!   control plane's record (`ROLE` on the data port), and Redis Sentinel's discovery commands
//!   on the sentinel port, so that clients configured with Sentinels find the primary.
//!
//! The node's Redis and sentinel ports (`nonstop-node`'s `redis_port` and `sentinel_port`) drive
//! them; docs/kv.md lists what is supported and what is not yet.

pub mod command;
pub mod commands;
pub mod connection;
pub mod deque;
mod glob;
pub mod keyspace;
pub mod resp;
pub mod sentinel;
pub mod service;
pub mod session;
pub mod topology;
