//! `kv`: the keyspace as a nonstop service, kept on the region's heap (transparent mode).
//!
//! A request is one command, or the commands of a `MULTI`/`EXEC` transaction, already parsed
//! and stamped with the time the node received them ([`KvRequest`]); the reply is one RESP
//! reply per command. Writes go through [`nonstop_service::Service::execute`], so each reply
//! leaves only once the backups hold the keyspace it answers about; reads that change nothing
//! go through a query.

use crate::command::Command;
use crate::keyspace::Keyspace;
use crate::resp::Reply;
use nonstop_region::heap::{Heap, RegionAlloc};
use nonstop_service::{Image, Service, ServiceError, Settings, Store, View, Writes};
use serde::{Deserialize, Serialize};

/// The service's kind.
pub const NAME: &str = "kv";

/// Commands to run together, as received at `now_ms` on the receiving node's clock.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KvRequest {
    /// Milliseconds since the Unix epoch when the node received the request.
    pub now_ms: u64,
    /// One command, or a transaction's, run in order with nothing between them.
    pub commands: Vec<Command>,
}

/// The service's settings (`[services.settings]`).
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KvSettings {
    /// Memory for keys and values, in MiB (Redis's `maxmemory`): a write that needs more is
    /// answered `-OOM` and changes nothing.
    pub memory_mib: u64,
}

impl Default for KvSettings {
    fn default() -> Self {
        KvSettings { memory_mib: 64 }
    }
}

/// The Redis-compatible keyspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kv {
    memory: usize,
}

impl Kv {
    /// A keyspace of `memory_mib` MiB.
    pub fn new(memory_mib: u64) -> Kv {
        Kv { memory: (memory_mib as usize) << 20 }
    }

    /// The service a config's settings describe, checked.
    pub fn from_settings(settings: &Settings) -> Result<Kv, String> {
        let parsed: KvSettings = settings.parse()?;
        if !(1..=1 << 20).contains(&parsed.memory_mib) {
            return Err(format!("memory_mib = {} is out of range: use 1 to 1048576", parsed.memory_mib));
        }
        Ok(Kv::new(parsed.memory_mib))
    }

    fn keyspace<'a>(&self, store: &'a mut Store<'_>) -> Result<&'a mut Keyspace<RegionAlloc>, ServiceError> {
        let mut heap = store.heap()?;
        let alloc = heap.allocator();
        Ok(heap.root(|| Keyspace::new_in(alloc))?)
    }
}

impl Service for Kv {
    type Request = KvRequest;
    type Reply = Vec<Reply>;
    type Query = KvRequest;
    type Answer = Vec<Reply>;
    const WRITES: Writes = Writes::Collections;
    /// Replies longer than this (a large `GET`) are sent once and not kept: a Redis
    /// connection never retries through the platform's numbers, so the room only serves
    /// nonstop's own client. Kept small, since the table holds it for every client.
    const MAX_REPLY: usize = 512;
    /// Every Redis connection is a client of the platform (a node takes 10,000 connections
    /// by default); idle ones give up their slots after an hour. 16,384 slots of 576 bytes.
    const MAX_CLIENTS: usize = 16_384;

    fn state_len(&self) -> usize {
        self.memory
    }

    fn init(&self, store: &mut Store<'_>) -> Result<(), ServiceError> {
        self.keyspace(store).map(drop)
    }

    fn execute(&self, store: &mut Store<'_>, request: &KvRequest) -> Result<Vec<Reply>, ServiceError> {
        let keyspace = self.keyspace(store)?;
        in_order(&request.commands, |command| Ok(keyspace.execute(command, request.now_ms)))
    }

    fn query(&self, view: &View<'_>, request: &KvRequest) -> Result<Vec<Reply>, ServiceError> {
        let Some(keyspace) = view.root::<Keyspace<RegionAlloc>>()? else {
            return Err(ServiceError::Broken("the keyspace was never made".into()));
        };
        in_order(&request.commands, |command| {
            let mut reply = keyspace.read(command, request.now_ms).ok_or_else(|| {
                ServiceError::refused(format!("a query cannot run {command:?}: it writes; send it as a call"))
            })?;
            if let (Command::Stats, Reply::Array(figures)) = (command, &mut reply) {
                let usage = keyspace.allocator().usage();
                figures.extend([usage.allocated_bytes, usage.arena_bytes].map(|n| Reply::Integer(n as i64)));
            }
            Ok(reply)
        })
    }

    fn check(&self, image: &Image<'_>) -> Result<String, String> {
        let keyspace = Heap::root_in::<Keyspace<RegionAlloc>>(image.state()).map_err(|error| error.to_string())?;
        match keyspace {
            None => Ok("no keyspace yet".into()),
            Some(keyspace) => Ok(format!("{} keys", keyspace.len())),
        }
    }
}

/// Runs a request's commands in order, with nothing between them; a `WATCH` guard that finds
/// a watched key changed stops the transaction before its first command.
fn in_order(
    commands: &[Command],
    mut run: impl FnMut(&Command) -> Result<Reply, ServiceError>,
) -> Result<Vec<Reply>, ServiceError> {
    let mut replies = Vec::with_capacity(commands.len());
    for command in commands {
        let reply = run(command)?;
        let stop = matches!(command, Command::Unchanged { .. }) && reply == Reply::Integer(0);
        replies.push(reply);
        if stop {
            break;
        }
    }
    Ok(replies)
}

/// Registers the service as kind [`NAME`].
pub fn register(registry: &mut nonstop_service::Registry) -> &mut nonstop_service::Registry {
    registry.register(NAME, Kv::from_settings)
}
