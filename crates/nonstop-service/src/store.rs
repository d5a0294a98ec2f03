//! What a service sees of the region: its own part, for one request.
//!
//! The platform's client table lies past the service's part, written in the same transaction
//! (or update) as the service's writes; nothing here reaches it.

use crate::service::{ServiceError, Writes};
use crate::table::{ClientRecord, ClientTable};
use nonstop_proto::client::ClientMemory;
use nonstop_region::heap::Heap;
use nonstop_region::{RegionWrite, Transaction, TxError, Update};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Who sent the request being executed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    /// The client's id (0 while the state is created, and for an unnumbered call).
    pub client: u64,
    /// The request's number for that client.
    pub request: u64,
    /// The client connection's lane: a small number, stable per connection, for a service
    /// that spreads its writes over per-lane structures (e.g. history segments) to avoid lock
    /// conflicts. Take it modulo your lane count.
    pub lane: usize,
}

/// One request's access to the service's state, in either way of writing the region.
pub struct Store<'a> {
    access: Access<'a>,
    caller: Caller,
}

enum Access<'a> {
    /// Declared writes: through the request's transaction, within `[0, len)`.
    Declared { tx: &'a Transaction<'a>, len: u64 },
    /// Transparent mode: the service's part of the region itself, values at offsets.
    Transparent(&'a mut [u8]),
    /// Transparent mode, a part that the region's heap owns ([`Writes::Collections`]): a cut
    /// looks for writes only as far as the heap has grown, so only the heap may write it.
    Heap(&'a mut [u8]),
}

impl<'a> Store<'a> {
    pub(crate) fn declared(tx: &'a Transaction<'a>, len: usize, caller: Caller) -> Store<'a> {
        Store { access: Access::Declared { tx, len: len as u64 }, caller }
    }

    /// Transparent mode, for a service that writes its part as `writes` says.
    pub(crate) fn transparent(state: &'a mut [u8], caller: Caller, writes: Writes) -> Store<'a> {
        let access = match writes {
            Writes::AtOffsets => Access::Transparent(state),
            Writes::Collections => Access::Heap(state),
        };
        Store { access, caller }
    }

    /// Who sent the request.
    pub fn caller(&self) -> Caller {
        self.caller
    }

    /// Whether the region is in transparent mode (no undo: a refusal must come before the
    /// first write).
    pub fn is_transparent(&self) -> bool {
        matches!(self.access, Access::Transparent(_) | Access::Heap(_))
    }

    /// Typed reads and writes at offsets of the service's part ([`nonstop_region::RegionWrite`]).
    ///
    /// # Panics
    ///
    /// In a [`Writes::Collections`] service, whose part belongs to its heap
    /// ([`Store::heap`]): a cut looks for writes only as far as the heap has grown, so a write
    /// at an offset past it would never reach the backups. Declare [`Writes::AtOffsets`] to
    /// lay out values at offsets.
    #[inline]
    pub fn writer(&mut self) -> Writer<'_> {
        match &mut self.access {
            Access::Declared { tx, len } => Writer(WriterAccess::Declared { tx, base: 0, len: *len }),
            Access::Transparent(state) => Writer(WriterAccess::Transparent(Update::new(state))),
            Access::Heap(_) => panic!(
                "Store::writer in a Writes::Collections service: its part of the region belongs to its heap (Store::heap), and checkpoints look for writes only as far as the heap has grown; declare Writes::AtOffsets to write at offsets"
            ),
        }
    }

    /// The region's heap, for services that keep ordinary collections ([`crate::Writes::Collections`]).
    pub fn heap(&mut self) -> Result<Heap<'_>, ServiceError> {
        match &mut self.access {
            Access::Declared { .. } => Err(ServiceError::NeedsTransparent),
            Access::Transparent(state) | Access::Heap(state) => Ok(Heap::open(state)?),
        }
    }
}

/// Typed access at offsets within one part of the region; offsets are relative to the part.
pub struct Writer<'a>(WriterAccess<'a>);

enum WriterAccess<'a> {
    Declared { tx: &'a Transaction<'a>, base: u64, len: u64 },
    Transparent(Update<'a>),
}

impl<'a> Writer<'a> {
    /// `[base, base + len)` of the region, through `tx`.
    pub(crate) fn declared(tx: &'a Transaction<'a>, base: usize, len: usize) -> Writer<'a> {
        Writer(WriterAccess::Declared { tx, base: base as u64, len: len as u64 })
    }

    /// `part` of a transparent-mode region.
    pub(crate) fn transparent(part: &'a mut [u8]) -> Writer<'a> {
        Writer(WriterAccess::Transparent(Update::new(part)))
    }
}

/// The region offset of `[offset, +size)` of a part at `base` of `len` bytes, if it lies inside.
#[inline]
fn within(base: u64, len: u64, offset: u64, size: u64) -> Result<u64, TxError> {
    match offset.checked_add(size) {
        Some(end) if end <= len => Ok(base + offset),
        _ => Err(TxError::OutOfRegion { offset, len: size, region_len: len }),
    }
}

// Inlined: each is a bounds check in front of the transaction's own, on every field a service
// writes; a call apiece cost the bank's requests 5% against the same transactions made directly.
impl RegionWrite for Writer<'_> {
    #[inline]
    fn write<T: FromBytes + IntoBytes + KnownLayout + Immutable>(&self, offset: u64) -> Result<&mut T, TxError> {
        match &self.0 {
            WriterAccess::Declared { tx, base, len } => tx.write(within(*base, *len, offset, size_of::<T>() as u64)?),
            WriterAccess::Transparent(update) => update.write(offset),
        }
    }

    #[inline]
    fn read<T: FromBytes + KnownLayout + Immutable>(&self, offset: u64) -> Result<T, TxError> {
        match &self.0 {
            WriterAccess::Declared { tx, base, len } => tx.read(within(*base, *len, offset, size_of::<T>() as u64)?),
            WriterAccess::Transparent(update) => update.read(offset),
        }
    }

    #[inline]
    fn write_bytes(&self, offset: u64, len: usize) -> Result<&mut [u8], TxError> {
        match &self.0 {
            WriterAccess::Declared { tx, base, len: part } => {
                tx.write_bytes(within(*base, *part, offset, len as u64)?, len)
            }
            WriterAccess::Transparent(update) => update.write_bytes(offset, len),
        }
    }

    #[inline]
    fn read_bytes(&self, offset: u64, out: &mut [u8]) -> Result<(), TxError> {
        match &self.0 {
            WriterAccess::Declared { tx, base, len } => {
                tx.read_bytes(within(*base, *len, offset, out.len() as u64)?, out)
            }
            WriterAccess::Transparent(update) => update.read_bytes(offset, out),
        }
    }
}

/// A read-only view of the service's state, for a query: its part of the region, and what the
/// platform remembers of each client.
pub struct View<'a> {
    state: ViewAccess<'a>,
    clients: ClientsAccess<'a>,
}

enum ViewAccess<'a> {
    /// Through a read-only transaction: each line read is locked and checked against its seal.
    Declared { tx: &'a Transaction<'a>, len: u64 },
    /// The service's part of a transparent-mode region while no update runs, or of a
    /// quiesced image.
    Bytes(&'a [u8]),
}

enum ClientsAccess<'a> {
    Declared { tx: &'a Transaction<'a>, base: usize, table: ClientTable },
    Bytes { bytes: &'a [u8], table: ClientTable },
}

impl<'a> View<'a> {
    pub(crate) fn declared(tx: &'a Transaction<'a>, len: usize, table_at: usize, table: ClientTable) -> View<'a> {
        View {
            state: ViewAccess::Declared { tx, len: len as u64 },
            clients: ClientsAccess::Declared { tx, base: table_at, table },
        }
    }

    pub(crate) fn bytes(state: &'a [u8], table_bytes: &'a [u8], table: ClientTable) -> View<'a> {
        View { state: ViewAccess::Bytes(state), clients: ClientsAccess::Bytes { bytes: table_bytes, table } }
    }

    /// A copy of the `T` at `offset`.
    pub fn read<T: FromBytes + KnownLayout + Immutable>(&self, offset: u64) -> Result<T, TxError> {
        match &self.state {
            ViewAccess::Declared { tx, len } => tx.read(within(0, *len, offset, size_of::<T>() as u64)?),
            ViewAccess::Bytes(state) => {
                let at = within(0, state.len() as u64, offset, size_of::<T>() as u64)? as usize;
                Ok(T::read_from_bytes(&state[at..at + size_of::<T>()]).expect("length is size_of::<T>()"))
            }
        }
    }

    /// What the platform remembers of `client`: its last request, how many it applied and the
    /// reply it was sent (`None`: it never had a request applied).
    pub fn client(&self, client: u64) -> Result<Option<ClientMemory>, TxError> {
        match &self.clients {
            ClientsAccess::Declared { tx, base, table } => {
                table.remembered(&Writer::declared(tx, *base, table.len()), client)
            }
            ClientsAccess::Bytes { bytes, table } => Ok(table.memory(bytes, client)),
        }
    }

    /// The heap's root, as [`nonstop_region::heap::Heap::root_in`] finds it: `None` before the
    /// state exists. Transparent mode only. The root's type is checked, its contents are not:
    /// check lengths and extents before reading through them.
    pub fn root<T: 'static>(&self) -> Result<Option<&'a T>, ServiceError> {
        match &self.state {
            ViewAccess::Declared { .. } => Err(ServiceError::NeedsTransparent),
            ViewAccess::Bytes(state) => Ok(Heap::root_in(state)?),
        }
    }

    /// The service's part of the region as bytes, where it can be read directly (transparent
    /// mode and audits; `None` with declared writes, where reads go through [`View::read`] to
    /// be locked and checked).
    pub fn image(&self) -> Option<&'a [u8]> {
        match &self.state {
            ViewAccess::Declared { .. } => None,
            ViewAccess::Bytes(state) => Some(state),
        }
    }
}

/// An image of the whole region, as a consistency check sees it: the service's state and
/// what the platform remembers of its clients.
pub struct Image<'a> {
    state: &'a [u8],
    table: ClientTable,
    table_bytes: &'a [u8],
}

impl<'a> Image<'a> {
    pub(crate) fn new(state: &'a [u8], table: ClientTable, table_bytes: &'a [u8]) -> Image<'a> {
        Image { state, table, table_bytes }
    }

    /// The service's part of the region.
    pub fn state(&self) -> &'a [u8] {
        self.state
    }

    /// Every client the platform remembers: its last request applied and how many were.
    pub fn clients(&self) -> impl Iterator<Item = ClientRecord> + 'a {
        self.table.records(self.table_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_collections_service_writes_through_its_heap() {
        let mut part = vec![0u8; 1 << 20];
        let mut store = Store::transparent(&mut part, Caller::default(), Writes::Collections);
        assert!(store.is_transparent());
        // (This buffer is no page-aligned region, so opening the heap fails past that point.)
        assert!(!matches!(store.heap(), Err(ServiceError::NeedsTransparent)), "its heap is where it writes");
        let at_offsets = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut store = Store::transparent(&mut part, Caller::default(), Writes::Collections);
            let _ = store.writer().write::<u64>(0).map(|value| *value = 7);
        }));
        let refusal = at_offsets.expect_err("a write at an offset is refused");
        let message = refusal.downcast_ref::<&str>().copied().unwrap_or_default();
        assert!(message.contains("Writes::AtOffsets"), "says what to do instead: {message}");
        let mut store = Store::transparent(&mut part, Caller::default(), Writes::AtOffsets);
        store.writer().write::<u64>(0).map(|value| *value = 7).expect("a service of offsets writes there");
    }
}
