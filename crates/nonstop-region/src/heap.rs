//! Ordinary Rust collections in the region: an allocator that lives inside it, and a typed
//! root to find the service's state again after a promotion.
//!
//! In transparent mode ([`crate::Mirror::tracked`]) a service keeps its state as plain Rust
//! values in the region — a [`RegionHashMap`], a [`RegionVec`], structs of them — and writes
//! them normally inside [`crate::Mirror::update`]. The allocator's own state (a `talc`
//! allocator) sits in the region's first bytes with the root's address, so a backup's image
//! holds it too: after a promotion the new primary opens the same heap, finds the same root,
//! and every pointer in it is valid because the region is mapped at the same address.
//!
//! ```
//! use nonstop_region::heap::{Heap, RegionHashMap};
//! use nonstop_region::{Mirror, Region};
//! use nonstop_proto::CheckpointId;
//! let mirror = Mirror::tracked(Region::map(0x2300_2000_0000, 4 << 20).unwrap(), None, CheckpointId(1)).unwrap();
//! mirror.update(|image| {
//!     let mut heap = Heap::open(image).unwrap();
//!     let alloc = heap.allocator();
//!     let counts = heap.root(|| RegionHashMap::<u64, u64>::with_hasher_in(Default::default(), alloc)).unwrap();
//!     *counts.entry(7).or_insert(0) += 1;
//! });
//! ```
//!
//! # What may live in the region
//!
//! Only values whose every pointer points into the region, and whose meaning does not depend
//! on the process that made them:
//!
//! * collections must allocate with [`RegionAlloc`]: a `std` `Vec`, `String` or `Box` puts
//!   its buffer on the process heap, which no backup has ([`stray_pointers`] finds them).
//!   Use [`RegionVec`], [`RegionBox`], [`RegionHashMap`] / [`RegionHashSet`], and
//!   [`RegionOrderedMap`] where a `BTreeMap` would do; a string is a `RegionVec<u8>` of UTF-8;
//! * hash maps need a fixed-seed hasher ([`FixedState`]): a randomly seeded one hashes the
//!   same key differently after a promotion, and lookups miss;
//! * no file descriptors, thread handles, `Arc`s, references to statics or to the stack —
//!   none of them survives into another process;
//! * every node must run the same build: the root is checked by type name, size and alignment.
//!
//! # The arena grows as it fills
//!
//! The allocator starts with the region's first [`INITIAL_ARENA`] bytes and claims more as
//! allocations need it (a quarter of what it has, at least 1 MiB, up to the region's end), and
//! never gives any back. Everything the heap or its values write lies below the arena's end,
//! which a cut reads (`WriteExtent::Heap`): it then asks the kernel about those pages only, so a
//! checkpoint costs what the heap holds, not what the region could hold (a scan of 512 MiB of
//! page tables took ~140 us on 2026-12-06; the 17 MB that 100,000 small keys take, in
//! proportion, ~5 us).
//!
//! # What is checked in an image
//!
//! A heap opened in a promoted backup's image trusts what the image says. The header's magic,
//! length and root (address and type) are checked when it is opened, and the allocator's
//! growth record when the arena grows (a damaged one fails the allocation rather than grow
//! the arena past the region). talc's own free lists and tags are not checked: damage there
//! is what the image's checksums in transit and the service's consistency check are for.

use allocator_api2::alloc::{AllocError, Allocator, Layout};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use talc::{OomHandler, Span, Talc, Talck};
use thiserror::Error;

/// The fixed-seed hasher that region hash maps must use: every node hashes alike.
pub type FixedState = foldhash::fast::FixedState;

/// A hash map in the region.
pub type RegionHashMap<K, V> = hashbrown::HashMap<K, V, FixedState, RegionAlloc>;

/// A hash set in the region.
pub type RegionHashSet<T> = hashbrown::HashSet<T, FixedState, RegionAlloc>;

/// A vector in the region.
pub type RegionVec<T> = allocator_api2::vec::Vec<T, RegionAlloc>;

/// A box in the region.
pub type RegionBox<T> = allocator_api2::boxed::Box<T, RegionAlloc>;

/// An ordered map in the region: what a `BTreeMap` is for (iteration in key order, ranges,
/// first and last). `std`'s `BTreeMap` takes no allocator on stable Rust, so this is `blart`'s
/// adaptive radix tree, which has `BTreeMap`'s methods. Keys order by their bytes: give
/// integers as big-endian byte arrays ([`ordered_key`]); `insert` takes fixed-size keys, and
/// byte strings of any length go through `try_insert` (no key may be a prefix of another).
pub type RegionOrderedMap<K, V> = blart::TreeMap<K, V, { blart::map::DEFAULT_PREFIX_LEN }, RegionAlloc>;

/// `n` as a key of a [`RegionOrderedMap`] that orders as the numbers do.
pub fn ordered_key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

/// "NSHEAP" and the layout version: a region formatted by another layout is refused.
const MAGIC: u64 = u64::from_le_bytes(*b"NSHEAP03");

/// The arena a heap starts with (or the whole region, if shorter).
pub const INITIAL_ARENA: usize = 1 << 20;

/// The least the arena grows by when it is full.
const MIN_GROWTH: usize = 1 << 20;

type Allocator_ = Talck<spin::Mutex<()>, Grow>;

/// talc's out-of-memory handler: claims more of the region when the arena is full, and
/// publishes the arena's new end in the header ([`Header::arena_end`]). It lives in the region
/// with the allocator, so a promoted backup's heap grows from where the primary's stopped.
struct Grow {
    /// The region's base address (where the header is).
    region: usize,
    /// The arena as talc last returned it (addresses): `talc.extend` needs it back.
    arena: (usize, usize),
    /// The region's end: the arena grows no further.
    limit: usize,
}

// The allocator lives in the header, and `Grow::inside_its_region` finds the region's base
// as the page the allocator lies in.
const _: () = assert!(ARENA_START <= nonstop_proto::PAGE_SIZE);

impl Grow {
    /// Whether a growth record, as found in the region (with the allocator, which lies at
    /// `talc_address`), describes the region it lies in: its fields come from the image, and
    /// a damaged image must not make the arena grow over memory outside the region. The
    /// header sits at the region's page-aligned base, so the allocator's own address names the
    /// region, and the header's length was checked against the mapping when the heap was
    /// opened ([`Heap::open`]). Read only when the arena is full, never per allocation.
    fn inside_its_region(talc_address: usize, region: usize, (base, acme): (usize, usize), limit: usize) -> bool {
        if region != talc_address & !(nonstop_proto::PAGE_SIZE - 1) {
            return false;
        }
        // SAFETY: `region` is the base of the page the allocator lies in, where the header is
        // while the heap is in use; the length is read through a raw pointer, without a
        // reference that would overlap the allocator's exclusive borrow.
        let len = unsafe { std::ptr::addr_of!((*(region as *const Header)).len).read() };
        region.checked_add(len) == Some(limit) && region + ARENA_START <= base && base <= acme && acme <= limit
    }
}

impl OomHandler for Grow {
    fn handle_oom(talc: &mut Talc<Self>, layout: Layout) -> Result<(), ()> {
        let Grow { region, arena: (base, acme), limit } = talc.oom_handler;
        let talc_address = std::ptr::from_mut(talc) as usize;
        if !Grow::inside_its_region(talc_address, region, (base, acme), limit) {
            tracing::error!(
                region = format_args!("{region:#x}"),
                arena = format_args!("{base:#x}..{acme:#x}"),
                limit = format_args!("{limit:#x}"),
                "the heap's growth record does not describe its own region: the image is damaged; allocations that need more arena fail"
            );
            return Err(());
        }
        // Room for the allocation at its alignment, and talc's tags around it.
        let needed = layout.size() + layout.align() + 64;
        let growth = needed.max((acme - base) / 4).max(MIN_GROWTH).next_multiple_of(nonstop_proto::PAGE_SIZE);
        let wanted = acme.saturating_add(growth).min(limit);
        if wanted <= acme {
            return Err(());
        }
        // SAFETY: `arena` is the span talc last returned for this heap; the new span holds it
        // and lies inside the region, whose bytes past the arena no value and no allocator
        // uses (the arena only grows); the region is mapped at the same address for as long
        // as the heap is in use.
        let grown = unsafe {
            talc.extend(Span::new(base as *mut u8, acme as *mut u8), Span::new(base as *mut u8, wanted as *mut u8))
        };
        let (base, acme) = grown.get_base_acme().map(|(b, a)| (b as usize, a as usize)).ok_or(())?;
        talc.oom_handler.arena = (base, acme);
        // SAFETY: the header lies at the region's base while the heap is in use; the end is an
        // atomic, so a cut reading it meanwhile reads one value or the other.
        let published =
            unsafe { AtomicUsize::from_ptr((region + std::mem::offset_of!(Header, arena_end)) as *mut usize) };
        published.store(acme - region, Ordering::Release);
        Ok(())
    }
}

/// The region's allocator and what it has handed out, kept in the region's header. The counts
/// are atomics beside the allocator's own lock so that a reader (`INFO memory`, between two
/// updates) reads them without taking a lock, which would write to the region.
struct Accounted {
    allocator: Allocator_,
    allocated_bytes: AtomicUsize,
    allocations: AtomicUsize,
    arena_bytes: usize,
}

/// What a region's heap holds now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapUsage {
    /// Bytes of the live allocations (as their layouts ask; the allocator's own headers and
    /// alignment padding are not counted).
    pub allocated_bytes: usize,
    /// Live allocations.
    pub allocations: usize,
    /// Bytes the arena can grow to, the most that can be allocated.
    pub arena_bytes: usize,
}

/// The region's first bytes in transparent mode.
#[repr(C)]
struct Header {
    magic: u64,
    /// Identifies the root's type (name, size, alignment); zero until a root exists.
    root_fingerprint: u64,
    /// The root's address, in the region.
    root: usize,
    /// The region's length when formatted: a heap is opened only in a region as long.
    len: usize,
    /// The arena's end, from the region's base: the heap and its values have written nothing
    /// past it. Only grows ([`Grow`]); an atomic, read by cuts ([`written_end`]).
    arena_end: AtomicUsize,
    allocator: Accounted,
}

/// Heap space starts here, after the header, aligned for any value.
const ARENA_START: usize = size_of::<Header>().next_multiple_of(64);

/// The region's heap could not be opened or its root not found.
#[derive(Debug, Error)]
pub enum HeapError {
    /// The region holds something else (not zeros, not a heap).
    #[error(
        "the region holds neither zeros nor a nonstop heap (magic {found:#018x}): a transparent-mode service needs a region of its own"
    )]
    NotAHeap {
        /// The first eight bytes found.
        found: u64,
    },
    /// The heap was formatted in a region of another length.
    #[error("the heap was made in a region of {made} bytes, this one has {now}: every node needs the same region size")]
    LengthChanged {
        /// Its length when formatted.
        made: usize,
        /// This region's length.
        now: usize,
    },
    /// The region is too small for the heap's header and any allocation.
    #[error("a region of {len} bytes is too small for a heap: give it at least 64 KiB")]
    TooSmall {
        /// The region's length.
        len: usize,
    },
    /// The region is not where a region is mapped (page-aligned).
    #[error("the heap must start at the region's base address (page-aligned), not {address:#x}")]
    Misaligned {
        /// The address given.
        address: usize,
    },
    /// The header's root address does not name a place in the heap (a damaged image).
    #[error("the heap's root address {root:#x} lies outside its arena or is misaligned: the region's image is damaged")]
    RootOutside {
        /// The address found.
        root: usize,
    },
    /// The root exists with another type.
    #[error(
        "the region's root was made as another type than {asked} (or by another build): every node of a service must run the same build"
    )]
    RootType {
        /// The type asked for.
        asked: &'static str,
    },
}

/// The heap in a region, opened for one update.
pub struct Heap<'a> {
    header: &'a mut Header,
}

impl<'a> Heap<'a> {
    /// Opens the heap in `image`, the whole region as [`crate::Mirror::update`] hands it over;
    /// a region of zeros is formatted first.
    pub fn open(image: &'a mut [u8]) -> Result<Heap<'a>, HeapError> {
        let address = image.as_ptr() as usize;
        if !address.is_multiple_of(nonstop_proto::PAGE_SIZE) {
            return Err(HeapError::Misaligned { address });
        }
        if image.len() < ARENA_START + (64 << 10) {
            return Err(HeapError::TooSmall { len: image.len() });
        }
        let magic = u64::from_ne_bytes(image[..8].try_into().expect("8 bytes"));
        let len = image.len();
        let base = image.as_mut_ptr();
        if magic == 0 {
            if image[..ARENA_START].iter().any(|b| *b != 0) {
                return Err(HeapError::NotAHeap { found: magic });
            }
            let region = base as usize;
            let end = INITIAL_ARENA.clamp(ARENA_START + (64 << 10), len);
            let mut talc = Talc::new(Grow { region, arena: (0, 0), limit: region + len });
            // SAFETY: the arena is the region's first bytes past the header, which this update
            // owns, and no other heap claims them; it does not contain the null address.
            let arena = unsafe { talc.claim(Span::from_base_size(base.add(ARENA_START), end - ARENA_START)) }
                .map_err(|()| HeapError::TooSmall { len })?;
            let (arena_base, arena_acme) = arena.get_base_acme().ok_or(HeapError::TooSmall { len })?;
            talc.oom_handler.arena = (arena_base as usize, arena_acme as usize);
            let allocator = Accounted {
                allocator: talc.lock(),
                allocated_bytes: AtomicUsize::new(0),
                allocations: AtomicUsize::new(0),
                arena_bytes: len - ARENA_START,
            };
            let arena_end = AtomicUsize::new(arena_acme as usize - region);
            let header = Header { magic: MAGIC, root_fingerprint: 0, root: 0, len, arena_end, allocator };
            // SAFETY: the header fits before the arena, the base is page-aligned, and the
            // bytes were zeros (no value is overwritten).
            unsafe { base.cast::<Header>().write(header) };
        } else if magic != MAGIC {
            return Err(HeapError::NotAHeap { found: magic });
        }
        // SAFETY: a formatted header (just written, or found with our magic and made by this
        // build, as the root's fingerprint checks) at the page-aligned base; `image`'s
        // exclusive borrow covers it for 'a.
        let header = unsafe { &mut *base.cast::<Header>() };
        if header.len != len {
            return Err(HeapError::LengthChanged { made: header.len, now: len });
        }
        Ok(Heap { header })
    }

    /// The allocator for values in this region.
    pub fn allocator(&self) -> RegionAlloc {
        RegionAlloc { allocator: NonNull::from(&self.header.allocator) }
    }

    /// The region's root: found where an earlier update (here, or on the primary this node
    /// took over from) left it, or made by `init` on first use.
    pub fn root<T: 'static>(&mut self, init: impl FnOnce() -> T) -> Result<&'a mut T, HeapError> {
        if self.header.root == 0 {
            let boxed = RegionBox::new_in(init(), self.allocator());
            let (pointer, _) = RegionBox::into_raw_with_allocator(boxed);
            self.header.root = pointer as usize;
            self.header.root_fingerprint = fingerprint::<T>();
        } else {
            existing_root::<T>(self.header)?;
        }
        // SAFETY: the root was made as a `T` (same fingerprint) in this region, which the
        // update borrows exclusively for 'a; `&mut self` hands it out once per borrow.
        Ok(unsafe { &mut *(self.header.root as *mut T) })
    }

    /// The root of a heap in `image` (a quiesced primary's region, or a backup's image at the
    /// same address), read-only: for checks and audits that only look. `None` if the region
    /// holds zeros or a heap without a root yet.
    pub fn root_in<T: 'static>(image: &'a [u8]) -> Result<Option<&'a T>, HeapError> {
        let address = image.as_ptr() as usize;
        if !address.is_multiple_of(nonstop_proto::PAGE_SIZE) {
            return Err(HeapError::Misaligned { address });
        }
        if image.len() < ARENA_START {
            return Err(HeapError::TooSmall { len: image.len() });
        }
        match u64::from_ne_bytes(image[..8].try_into().expect("8 bytes")) {
            0 => return Ok(None),
            MAGIC => {}
            found => return Err(HeapError::NotAHeap { found }),
        }
        // SAFETY: a header with our magic at the page-aligned base, shared for 'a.
        let header = unsafe { &*image.as_ptr().cast::<Header>() };
        if header.len != image.len() {
            return Err(HeapError::LengthChanged { made: header.len, now: image.len() });
        }
        if header.root == 0 {
            return Ok(None);
        }
        existing_root::<T>(header)?;
        // SAFETY: made as a `T` (same fingerprint) inside the arena of this image, which is
        // borrowed shared for 'a.
        Ok(Some(unsafe { &*(header.root as *const T) }))
    }
}

/// How far from `region`'s base a heap made over its first `len` bytes, and the values on it,
/// can have written: the arena's end, which only grows. A region that holds no heap yet gets
/// its first page (an update that makes the heap writes its header there first), and one that
/// holds something else, or a heap of another length, gets all `len` bytes. Reads three words
/// atomically and writes nothing, so it may run while an update runs; an arena that grows
/// meanwhile is read by the next call.
pub(crate) fn written_end(region: &crate::Region, len: usize) -> usize {
    let (base, len) = (region.as_ptr(), len.min(region.len()));
    if len < ARENA_START {
        return len;
    }
    // SAFETY: the region is mapped, page-aligned and at least a header long; the words are
    // read atomically (the magic is written once, by the update that formats the heap, and
    // the end only through its atomic).
    let (magic, made_for, end) = unsafe {
        let word = |offset: usize| base.add(offset).cast::<u64>();
        (
            AtomicU64::from_ptr(word(std::mem::offset_of!(Header, magic))).load(Ordering::Acquire),
            AtomicU64::from_ptr(word(std::mem::offset_of!(Header, len))).load(Ordering::Relaxed) as usize,
            AtomicUsize::from_ptr(word(std::mem::offset_of!(Header, arena_end)).cast()).load(Ordering::Acquire),
        )
    };
    match magic {
        0 => nonstop_proto::PAGE_SIZE.min(len),
        MAGIC if made_for == len => end.clamp(ARENA_START, len),
        _ => len,
    }
}

/// Checks that the root a header names is a `T` lying inside its arena: the header may come
/// from another node's image.
fn existing_root<T: 'static>(header: &Header) -> Result<(), HeapError> {
    if header.root_fingerprint != fingerprint::<T>() {
        return Err(HeapError::RootType { asked: std::any::type_name::<T>() });
    }
    let base = header as *const Header as usize;
    let arena = base + ARENA_START..base + header.len;
    let root = header.root;
    let fits = root.checked_add(size_of::<T>()).is_some_and(|end| arena.contains(&root) && end <= arena.end);
    if !fits || !root.is_multiple_of(align_of::<T>()) {
        return Err(HeapError::RootOutside { root });
    }
    Ok(())
}

/// Type name, size and alignment, hashed: a root read back as another type is refused.
///
/// A service asks for its root on every request, and the name of a generic root type runs to
/// a hundred bytes hashed one at a time (1.6 % of the I/O thread's time under a `SET` load),
/// so each thread keeps the last type's fingerprint: the type's id says it is the same type in
/// this process, the fingerprint says so across processes.
fn fingerprint<T: 'static>() -> u64 {
    thread_local! {
        static LAST: std::cell::Cell<Option<(std::any::TypeId, u64)>> = const { std::cell::Cell::new(None) };
    }
    let id = std::any::TypeId::of::<T>();
    LAST.with(|last| match last.get() {
        Some((seen, fingerprint)) if seen == id => fingerprint,
        _ => {
            let fingerprint = hash_type::<T>();
            last.set(Some((id, fingerprint)));
            fingerprint
        }
    })
}

/// What [`fingerprint`] keeps: FNV-1a over the type's name, size and alignment.
fn hash_type<T>() -> u64 {
    let name = std::any::type_name::<T>();
    let mut hash = 0xcbf2_9ce4_8422_2325u64; // FNV-1a: stable across builds and processes
    for byte in name.bytes().chain(size_of::<T>().to_le_bytes()).chain(align_of::<T>().to_le_bytes()) {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    hash | 1
}

/// Allocates in the region's heap; collections in the region must use it.
///
/// It holds the address of the allocator in the region's header, which is the same on every
/// node, so a collection that stores it stays valid after a promotion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionAlloc {
    allocator: NonNull<Accounted>,
}

impl RegionAlloc {
    /// What the heap holds now. Reads two counters and writes nothing, so it may be called
    /// from a read of the region.
    pub fn usage(&self) -> HeapUsage {
        // SAFETY: the allocator sits in the region's header while the region is mapped.
        let accounted = unsafe { self.allocator.as_ref() };
        HeapUsage {
            allocated_bytes: accounted.allocated_bytes.load(Ordering::Relaxed),
            allocations: accounted.allocations.load(Ordering::Relaxed),
            arena_bytes: accounted.arena_bytes,
        }
    }

    fn counted(&self, grown: isize, allocations: isize) {
        // SAFETY: as in `usage`.
        let accounted = unsafe { self.allocator.as_ref() };
        accounted.allocated_bytes.fetch_add(grown as usize, Ordering::Relaxed);
        accounted.allocations.fetch_add(allocations as usize, Ordering::Relaxed);
    }
}

// SAFETY: the allocator behind the pointer locks itself (a spin lock in the region).
unsafe impl Send for RegionAlloc {}
// SAFETY: as above.
unsafe impl Sync for RegionAlloc {}

// SAFETY: every call forwards to talc's `Allocator` for the region's allocator, which lives
// as long as the region mapping that every value using it lives in.
unsafe impl Allocator for RegionAlloc {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: the allocator sits in the region's header while the region is mapped.
        let allocated = unsafe { &self.allocator.as_ref().allocator }.allocate(layout)?;
        self.counted(layout.size() as isize, 1);
        Ok(allocated)
    }

    unsafe fn deallocate(&self, pointer: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.allocator.as_ref().allocator.deallocate(pointer, layout) }
        self.counted(-(layout.size() as isize), -1);
    }

    unsafe fn grow(&self, pointer: NonNull<u8>, old: Layout, new: Layout) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: forwarded with the caller's guarantees.
        let grown = unsafe { self.allocator.as_ref().allocator.grow(pointer, old, new) }?;
        self.counted(new.size() as isize - old.size() as isize, 0);
        Ok(grown)
    }

    unsafe fn shrink(&self, pointer: NonNull<u8>, old: Layout, new: Layout) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: forwarded with the caller's guarantees.
        let shrunk = unsafe { self.allocator.as_ref().allocator.shrink(pointer, old, new) }?;
        self.counted(new.size() as isize - old.size() as isize, 0);
        Ok(shrunk)
    }
}

/// A word in the region that looks like a pointer out of it, into this process's own memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StrayPointer {
    /// Where the word is, from the region's base.
    pub offset: usize,
    /// Its value: an address in this process's heap, stacks or other private memory.
    pub points_to: usize,
}

/// Finds words in `image` (the region) that hold an address of this process's heap, stacks or
/// anonymous memory outside the region: the usual sign of a `std` collection or a reference
/// stored in the region, which no backup could follow. A heuristic for tests and debugging —
/// a value that happens to look like such an address is reported too — and a scan of every
/// word, so not for a hot path. The heap's own header is not looked at. At most `limit` are
/// returned.
pub fn stray_pointers(image: &[u8], limit: usize) -> std::io::Result<Vec<StrayPointer>> {
    let region = image.as_ptr() as usize..image.as_ptr() as usize + image.len();
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let private: Vec<std::ops::Range<usize>> = maps
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (range, permissions) = (fields.next()?, fields.next()?);
            let path = fields.nth(3).unwrap_or("");
            let (start, end) = range.split_once('-')?;
            let range = usize::from_str_radix(start, 16).ok()?..usize::from_str_radix(end, 16).ok()?;
            let private =
                permissions.starts_with("rw") && (path.is_empty() || path == "[heap]" || path.starts_with("[stack"));
            let outside = range.end <= region.start || range.start >= region.end;
            (private && outside).then_some(range)
        })
        .collect();
    // The heap's header holds the allocator's bitmaps, which can look like anything.
    let skip = match image.get(..8).map(|m| u64::from_ne_bytes(m.try_into().expect("8 bytes"))) {
        Some(MAGIC) => ARENA_START / 8,
        _ => 0,
    };
    let mut found = Vec::new();
    for (index, word) in image.chunks_exact(8).enumerate().skip(skip) {
        let value = usize::from_ne_bytes(word.try_into().expect("8 bytes"));
        if value == 0 || region.contains(&value) {
            continue;
        }
        if private.iter().any(|range| range.contains(&value)) {
            found.push(StrayPointer { offset: index * 8, points_to: value });
            if found.len() >= limit {
                break;
            }
        }
    }
    Ok(found)
}
