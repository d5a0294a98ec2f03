//! The platform's client table: what makes every request exactly-once.
//!
//! A client numbers its requests 1, 2, 3, … per service and retries the same number until it
//! gets an answer, across failovers too. The table keeps, per client, the last request number
//! applied, how many were applied, and the reply. It lies in the region past the service's
//! state and is written in the same transaction (or transparent-mode update) as the service's
//! writes, so a checkpoint holds both or neither: after a failover the new primary answers a
//! retry from the table instead of applying it again.
//!
//! Layout, from the table's first byte: a 64-byte header (magic, slots, reply room), then
//! `slots` slots, each a [`SlotHead`] and room for the reply, in whole cache lines so that two
//! clients never share a line (and a lock stripe) with declared writes. A client's slot is
//! found by linear probing from a hash of its id.
//!
//! A full table does not refuse new clients for ever: when a new client finds no free slot
//! among its probes, it takes the slot of the one idle longest, if that one has been idle for
//! the table's expiry (an hour by default). An expired client that comes back is a stranger:
//! its next request skips numbers and is refused, so nothing is applied twice. Idle time is
//! the primary's clock at each request applied, passed in like every other input.

use nonstop_proto::PAGE_SIZE;
use nonstop_proto::client::ClientMemory;
use nonstop_region::{RegionWrite, TxError};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

const MAGIC: u64 = u64::from_le_bytes(*b"nsclien2");
const HEADER: usize = 64;
const LINE: usize = 64;
/// Slots probed for a client before the table counts as full.
const PROBES: u64 = 32;
/// `reply_len` of a request applied whose reply did not fit: it cannot be answered again.
const NOT_REMEMBERED: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct Header {
    magic: U64,
    slots: U64,
    reply_room: U64,
    expiry_ms: U64,
    reserved: [u8; 32],
}

/// What the table keeps of one client, before its reply's bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SlotHead {
    client: U64,
    request: U64,
    applied: U64,
    /// The primary's clock (ms) when its last request was applied.
    applied_at_ms: U64,
    reply_len: U32,
    reserved: U32,
}

/// What the platform remembers of one client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientRecord {
    /// The client's id.
    pub client: u64,
    /// The last request number applied.
    pub request: u64,
    /// Requests applied in all: equal to `request` unless one was lost or applied twice.
    pub applied: u64,
}

/// The shape of a service's client table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientTable {
    slots: u64,
    reply_room: usize,
    stride: usize,
    expiry_ms: u64,
}

/// What the table says about a request before it is executed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// The client's next request: apply it, then [`ClientTable::record`] it at `at`.
    Next { at: u64, previous: SlotHead },
    /// A retry of the last request applied: its reply, as sent the first time (`None` if it
    /// was too long to keep).
    Retry(Option<Vec<u8>>),
    /// Older than the last request applied: the client already had its answer.
    Stale { last: u64 },
    /// It skips numbers: the service expects `expected` first.
    Skips { expected: u64 },
    /// A new client and no free slot, none of its probes idle long enough to expire.
    Full {
        /// Clients the table keeps.
        slots: usize,
        /// How long a client must be idle to give up its slot.
        expiry_ms: u64,
    },
}

impl ClientTable {
    /// A table of `slots` clients, each with room for a reply of `reply_room` bytes, whose
    /// clients idle for `expiry_ms` may give up their slots to new ones.
    pub fn new(slots: usize, reply_room: usize, expiry_ms: u64) -> ClientTable {
        let stride = (size_of::<SlotHead>() + reply_room).next_multiple_of(LINE);
        ClientTable { slots: slots.max(1) as u64, reply_room, stride, expiry_ms }
    }

    /// Bytes it takes, in whole pages.
    pub fn len(&self) -> usize {
        (HEADER + self.slots as usize * self.stride).next_multiple_of(PAGE_SIZE)
    }

    /// Whether it has no slots (never: a table has one at least).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The longest reply it keeps.
    pub fn reply_room(&self) -> usize {
        self.reply_room
    }

    /// Clients it keeps at once.
    pub fn slots(&self) -> usize {
        self.slots as usize
    }

    fn slot_at(&self, index: u64) -> u64 {
        (HEADER + (index % self.slots) as usize * self.stride) as u64
    }

    fn home(client: u64) -> u64 {
        client.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32
    }

    /// Writes the header of an empty table.
    pub(crate) fn format(&self, table: &impl RegionWrite) -> Result<(), TxError> {
        *table.write::<Header>(0)? = Header {
            magic: U64::new(MAGIC),
            slots: U64::new(self.slots),
            reply_room: U64::new(self.reply_room as u64),
            expiry_ms: U64::new(self.expiry_ms),
            reserved: [0; 32],
        };
        Ok(())
    }

    /// What the table says of request `request` of `client` (both checked non-zero by the
    /// caller) at `now_ms` on the primary's clock.
    pub(crate) fn lookup(
        &self,
        table: &impl RegionWrite,
        client: u64,
        request: u64,
        now_ms: u64,
    ) -> Result<Lookup, TxError> {
        // The slot a new client takes: the first free one, else the one idle longest.
        let mut taken: Option<(u64, SlotHead)> = None;
        for probe in 0..PROBES {
            let at = self.slot_at(Self::home(client) + probe);
            let head: SlotHead = table.read(at)?;
            if head.client.get() == client {
                let last = head.request.get();
                return Ok(match request {
                    r if r == last => Lookup::Retry(self.reply(table, at, &head)?),
                    r if r < last => Lookup::Stale { last },
                    r if r > last + 1 => Lookup::Skips { expected: last + 1 },
                    _ => Lookup::Next { at, previous: head },
                });
            }
            if head.client.get() == 0 {
                taken = Some((at, SlotHead::default()));
                break;
            }
            if taken.is_none_or(|(_, oldest)| head.applied_at_ms.get() < oldest.applied_at_ms.get()) {
                taken = Some((at, head));
            }
        }
        let expired = |head: &SlotHead| {
            head.client.get() == 0 || now_ms.saturating_sub(head.applied_at_ms.get()) >= self.expiry_ms
        };
        Ok(match taken {
            Some((_, head)) if !expired(&head) => {
                Lookup::Full { slots: self.slots as usize, expiry_ms: self.expiry_ms }
            }
            None => Lookup::Full { slots: self.slots as usize, expiry_ms: self.expiry_ms },
            Some(_) if request > 1 => Lookup::Skips { expected: 1 },
            // A new client's count starts afresh, whoever held the slot before.
            Some((at, _)) => Lookup::Next { at, previous: SlotHead::default() },
        })
    }

    fn reply(&self, table: &impl RegionWrite, at: u64, head: &SlotHead) -> Result<Option<Vec<u8>>, TxError> {
        let len = head.reply_len.get();
        if len == NOT_REMEMBERED || len as usize > self.reply_room {
            return Ok(None);
        }
        let mut reply = vec![0u8; len as usize];
        if !reply.is_empty() {
            table.read_bytes(at + size_of::<SlotHead>() as u64, &mut reply)?;
        }
        Ok(Some(reply))
    }

    /// Records request `request` of `client` as applied at `now_ms`, answered with `reply`
    /// (kept if it fits; `None`: there is no reply to keep), in the slot [`Lookup::Next`] found.
    #[allow(clippy::too_many_arguments)] // One call site per way of writing; a struct would only rename them.
    pub(crate) fn record(
        &self,
        table: &impl RegionWrite,
        at: u64,
        previous: &SlotHead,
        client: u64,
        request: u64,
        now_ms: u64,
        reply: Option<&[u8]>,
    ) -> Result<(), TxError> {
        let reply = reply.filter(|reply| reply.len() <= self.reply_room);
        let kept = reply.is_some();
        let reply = reply.unwrap_or_default();
        let head = SlotHead {
            client: U64::new(client),
            request: U64::new(request),
            applied: U64::new(previous.applied.get() + 1),
            applied_at_ms: U64::new(now_ms),
            reply_len: U32::new(if kept { reply.len() as u32 } else { NOT_REMEMBERED }),
            reserved: U32::new(0),
        };
        // One range for the head and the reply: a declared range costs a lock, an undo image
        // and a capture each, and most replies share the head's cache line. In whole 8-byte
        // words (the slot's stride is whole lines): a range ending inside a word costs its
        // line's seal a slower update at commit.
        let kept_len = if kept { reply.len() } else { 0 };
        let reply_end = size_of::<SlotHead>() + kept_len;
        let slot = table.write_bytes(at, reply_end.next_multiple_of(8))?;
        slot[..size_of::<SlotHead>()].copy_from_slice(head.as_bytes());
        slot[size_of::<SlotHead>()..reply_end].copy_from_slice(&reply[..kept_len]);
        slot[reply_end..].fill(0);
        Ok(())
    }

    fn head_in(&self, bytes: &[u8], at: u64) -> Option<SlotHead> {
        SlotHead::read_from_prefix(bytes.get(at as usize..)?).ok().map(|(head, _)| head)
    }

    /// What the table read through `table` remembers of `client`.
    pub(crate) fn remembered(&self, table: &impl RegionWrite, client: u64) -> Result<Option<ClientMemory>, TxError> {
        for probe in 0..PROBES {
            let at = self.slot_at(Self::home(client) + probe);
            let head: SlotHead = table.read(at)?;
            if head.client.get() == client {
                let reply = self.reply(table, at, &head)?;
                return Ok(Some(ClientMemory { request: head.request.get(), applied: head.applied.get(), reply }));
            }
            if head.client.get() == 0 {
                break;
            }
        }
        Ok(None)
    }

    /// What the table in `bytes` (a quiesced region's or a backup's image of it) remembers of
    /// `client`.
    pub fn memory(&self, bytes: &[u8], client: u64) -> Option<ClientMemory> {
        for probe in 0..PROBES {
            let at = self.slot_at(Self::home(client) + probe);
            let head = self.head_in(bytes, at)?;
            if head.client.get() == client {
                let len = head.reply_len.get() as usize;
                let start = at as usize + size_of::<SlotHead>();
                let reply =
                    (len <= self.reply_room).then(|| bytes.get(start..start + len)).flatten().map(<[u8]>::to_vec);
                return Some(ClientMemory { request: head.request.get(), applied: head.applied.get(), reply });
            }
            if head.client.get() == 0 {
                return None;
            }
        }
        None
    }

    /// Every client remembered in `bytes`.
    pub fn records<'a>(&self, bytes: &'a [u8]) -> impl Iterator<Item = ClientRecord> + 'a {
        let table = *self;
        (0..self.slots)
            .filter_map(move |index| table.head_in(bytes, table.slot_at(index)))
            .filter(|head| head.client.get() != 0)
            .map(|head| record_of(&head))
    }

    /// The platform's check of the table in `bytes`: its shape is this one, and every client's
    /// applied count equals its last request number (none lost, none applied twice).
    pub fn check(&self, bytes: &[u8]) -> Result<String, String> {
        let header = Header::read_from_prefix(bytes).map_err(|_| "no room for the client table".to_string())?.0;
        if header.magic.get() != MAGIC {
            return Err("no client table in this region (bad magic): was the service ever started?".into());
        }
        let shape = (header.slots.get(), header.reply_room.get(), header.expiry_ms.get());
        if shape != (self.slots, self.reply_room as u64, self.expiry_ms) {
            return Err(format!(
                "the client table has {} slots of {} reply bytes expiring after {} ms, this node expects {} of {} after {} ms: every node of a service must run the same build and config",
                shape.0, shape.1, shape.2, self.slots, self.reply_room, self.expiry_ms
            ));
        }
        if bytes.len() < self.len() {
            return Err(format!("the client table needs {} bytes, the region leaves {}", self.len(), bytes.len()));
        }
        let mut clients = 0u64;
        for index in 0..self.slots {
            let head = self.head_in(bytes, self.slot_at(index)).expect("length checked");
            if head.client.get() == 0 {
                continue;
            }
            clients += 1;
            if head.applied.get() != head.request.get() {
                return Err(format!(
                    "client {}: last request {} but {} applied",
                    head.client.get(),
                    head.request.get(),
                    head.applied.get()
                ));
            }
            let len = head.reply_len.get();
            if len != NOT_REMEMBERED && len as usize > self.reply_room {
                return Err(format!(
                    "client {}: a reply of {len} bytes in a slot of {}",
                    head.client.get(),
                    self.reply_room
                ));
            }
        }
        Ok(format!("{clients} clients, each request applied once"))
    }
}

fn record_of(head: &SlotHead) -> ClientRecord {
    ClientRecord { client: head.client.get(), request: head.request.get(), applied: head.applied.get() }
}
