//! Write tracking by memory protection: the fallback for kernels without asynchronous
//! userfaultfd write-protect.
//!
//! Every page of the region is made read-only. The first write to a page raises SIGSEGV; the
//! handler makes the page writable again, sets the page's bit and returns, and the write is
//! retried by the CPU. A collection swaps the bits out and protects those pages again.
//!
//! Ordering, so that no write is ever lost: the handler unprotects *before* it sets the bit,
//! and a collection clears the bits *before* it protects. A write that lands between a
//! collection's clear and its protect is in the page when the caller reads it after the
//! collection; a write after the protect faults and is reported next time. (The opposite
//! orders lose writes: a handler that set its bit, was collected, then unprotected would leave
//! the page writable with no bit set.)
//!
//! The handler is async-signal-safe: atomics and the raw `mprotect` system call only. A fault
//! outside every tracked region is passed on to the handler that was installed before ours
//! (the standard library's stack-overflow reporter), or to the default action.

use super::TrackingError;
use crate::capture::TouchedPages;
use nonstop_proto::PAGE_SIZE;
use rustix::mm::MprotectFlags;
use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// Regions tracked at once in one process.
const SLOTS: usize = 16;

struct Slot {
    /// Zero when free; set last on registration and cleared first on release.
    base: AtomicUsize,
    len: AtomicUsize,
    bitmap: AtomicPtr<AtomicU64>,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot =
    Slot { base: AtomicUsize::new(0), len: AtomicUsize::new(0), bitmap: AtomicPtr::new(std::ptr::null_mut()) };
static SLOTS_IN_USE: [Slot; SLOTS] = [FREE; SLOTS];
/// Handlers running now: a slot's bitmap is freed only once none can still be reading it.
static IN_HANDLER: AtomicUsize = AtomicUsize::new(0);
/// Registration and release are rare; one lock orders them.
static REGISTRY: Mutex<()> = Mutex::new(());
/// The SIGSEGV disposition before ours, to pass foreign faults on to.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

pub(super) struct MprotectTracker {
    slot: usize,
    base: usize,
    len: usize,
    /// One bit per page, set by the handler (through the slot's raw pointer to its words).
    bitmap: TouchedPages,
}

impl MprotectTracker {
    pub(super) fn start(base: usize, len: usize) -> Result<MprotectTracker, TrackingError> {
        install_handler()?;
        let pages = len / PAGE_SIZE;
        let bitmap = TouchedPages::new(pages);
        let _registry = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
        let slot = SLOTS_IN_USE
            .iter()
            .position(|s| s.base.load(Ordering::SeqCst) == 0)
            .ok_or(TrackingError::TooManyRegions { limit: SLOTS })?;
        let entry = &SLOTS_IN_USE[slot];
        entry.len.store(len, Ordering::SeqCst);
        entry.bitmap.store(bitmap.words_ptr().cast_mut(), Ordering::SeqCst);
        entry.base.store(base, Ordering::SeqCst);
        let tracker = MprotectTracker { slot, base, len, bitmap };
        // SAFETY: the range is the caller's region mapping; making it read-only changes no
        // byte, and the handler registered above turns each write fault back into a write.
        unsafe { rustix::mm::mprotect(base as *mut c_void, len, MprotectFlags::READ) }
            .map_err(|errno| TrackingError::Mprotect { errno })?;
        Ok(tracker)
    }

    pub(super) fn collect(&mut self, pages: &mut Vec<usize>) -> Result<(), TrackingError> {
        let first_new = pages.len();
        // Bits cleared before the pages are protected again: see the module docs.
        pages.extend(self.bitmap.take());
        // Protect again in runs of neighbouring pages: one system call per run.
        let mut run_start = first_new;
        for at in first_new..pages.len() {
            let ends = at + 1 == pages.len() || pages[at + 1] != pages[at] + 1;
            if ends {
                let first = pages[run_start];
                let count = at + 1 - run_start;
                // SAFETY: the pages lie inside the region; read-only changes no byte.
                unsafe {
                    rustix::mm::mprotect(
                        (self.base + first * PAGE_SIZE) as *mut c_void,
                        count * PAGE_SIZE,
                        MprotectFlags::READ,
                    )
                }
                .map_err(|errno| TrackingError::Mprotect { errno })?;
                run_start = at + 1;
            }
        }
        Ok(())
    }
}

impl Drop for MprotectTracker {
    fn drop(&mut self) {
        let _registry = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: our region's range, made writable again as it was before tracking.
        let _ = unsafe {
            rustix::mm::mprotect(self.base as *mut c_void, self.len, MprotectFlags::READ | MprotectFlags::WRITE)
        };
        let entry = &SLOTS_IN_USE[self.slot];
        entry.base.store(0, Ordering::SeqCst);
        while IN_HANDLER.load(Ordering::SeqCst) != 0 {
            std::hint::spin_loop();
        }
        entry.bitmap.store(std::ptr::null_mut(), Ordering::SeqCst);
    }
}

fn install_handler() -> Result<(), TrackingError> {
    static INSTALLED: OnceLock<Result<(), rustix::io::Errno>> = OnceLock::new();
    let result = INSTALLED.get_or_init(|| {
        // SAFETY: sigaction(2) with a zeroed, then filled-in, `struct sigaction`; the handler
        // is async-signal-safe (see the module docs).
        unsafe {
            let mut previous: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGSEGV, std::ptr::null(), &mut previous) != 0 {
                return Err(last_errno());
            }
            let _ = PREVIOUS.set(previous);
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_segv as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(libc::SIGSEGV, &action, std::ptr::null_mut()) != 0 {
                return Err(last_errno());
            }
        }
        Ok(())
    });
    result.map_err(|errno| TrackingError::SignalHandler { errno })
}

fn last_errno() -> rustix::io::Errno {
    rustix::io::Errno::from_raw_os_error(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EINVAL))
}

/// Marks `address`'s page written and writable, if it lies in a tracked region.
fn on_tracked_write(address: usize) -> bool {
    for slot in &SLOTS_IN_USE {
        let base = slot.base.load(Ordering::SeqCst);
        if base == 0 || address < base || address - base >= slot.len.load(Ordering::SeqCst) {
            continue;
        }
        let page = (address - base) / PAGE_SIZE;
        // Unprotect first, then mark: see the module docs for why this order.
        // SAFETY: the page lies inside a tracked region, which is mapped while registered.
        let unprotected = unsafe {
            rustix::mm::mprotect(
                (base + page * PAGE_SIZE) as *mut c_void,
                PAGE_SIZE,
                MprotectFlags::READ | MprotectFlags::WRITE,
            )
        };
        if unprotected.is_err() {
            return false;
        }
        let bitmap = slot.bitmap.load(Ordering::SeqCst);
        // SAFETY: the bitmap has one bit per page of the slot's region and is not freed while
        // a handler runs (IN_HANDLER).
        unsafe { (*bitmap.add(page / 64)).fetch_or(1 << (page % 64), Ordering::SeqCst) };
        return true;
    }
    false
}

extern "C" fn on_segv(signal: c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
    IN_HANDLER.fetch_add(1, Ordering::SeqCst);
    // SAFETY: the kernel passes a valid siginfo for a SA_SIGINFO handler.
    let address = unsafe { (*info).si_addr() } as usize;
    let handled = on_tracked_write(address);
    IN_HANDLER.fetch_sub(1, Ordering::SeqCst);
    if handled {
        return;
    }
    // Not ours: hand it to whoever handled SIGSEGV before, or to the default action (the
    // faulting instruction runs again and the process dies of SIGSEGV, as it would have).
    match PREVIOUS.get() {
        Some(previous) if previous.sa_sigaction != libc::SIG_DFL && previous.sa_sigaction != libc::SIG_IGN => {
            if previous.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the previous disposition is a SA_SIGINFO handler of this signature.
                let handler: extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) =
                    unsafe { std::mem::transmute(previous.sa_sigaction) };
                handler(signal, info, context);
            } else {
                // SAFETY: the previous disposition is a plain handler of this signature.
                let handler: extern "C" fn(c_int) = unsafe { std::mem::transmute(previous.sa_sigaction) };
                handler(signal);
            }
        }
        _ => {
            // SAFETY: restoring the default disposition with a zeroed sigaction (SIG_DFL).
            unsafe {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(libc::SIGSEGV, &default, std::ptr::null_mut());
            }
        }
    }
}
