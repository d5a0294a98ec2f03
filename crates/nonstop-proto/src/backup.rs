//! The backup's state machine: apply a checkpoint whole or not at all, acknowledge.
//!
//! Runs of checkpoint `n` are validated as they arrive and kept aside; `Close(n)` checks the
//! close agrees with what arrived and only then copies them into the image. A checkpoint that
//! grows past [`EAGER_AFTER`] bytes (a long AU epoch) switches to applying its runs as they
//! arrive, each with its undo image saved first, so that its work is spread over the epoch
//! instead of landing at the close; its close then only drops the undo log. If the stream is
//! cut first — the primary killed after any byte, a frame refused — staged runs are dropped and
//! the undo log is played back, newest first: the image is exactly checkpoint `n - 1` again. A
//! whole image (the first checkpoint after an attach) replaces the image, so it is always
//! staged; so is a rebase, the first checkpoint of a primary that asked what this backup
//! holds ([`Holding`]) and sends only the pages that differ from it. Either way, once a
//! session ends, the image is byte for byte one checkpoint.
//!
//! The backup remembers the checkpoints it applied and the pages each wrote
//! ([`ImageHistory`]): it answers a rebase with the pages it wrote past the state the new
//! primary resumed from, and a promoted backup hands its history to the primary it becomes.
//!
//! Every byte written to the image (runs, undo, a clear) is sealed at once in a table of line
//! checksums ([`crate::integrity`]); [`Backup::scrub`] checks the image against it a slice at a
//! time. A line that changed without being written — memory corrupted behind the program's
//! back — makes the backup forget its image: it holds no checkpoint, so it can be neither
//! promoted nor counted as a copy, and the next attach sends it a whole image. The seals go
//! with the image when the backup is promoted ([`Backup::into_seals`]).

use crate::control::{self, Attach, Close, CloseKind, ControlError, Holding, ImageState, VerifyRequest};
use crate::frame::{Frame, FrameKind};
use crate::history::ImageHistory;
use crate::integrity::{CorruptLine, LineChecksums, Scrubber};
use crate::runs::{RunsError, apply_validated_runs_checked, runs, undo_runs, validate_runs};
use crate::written::{CheckpointPages, WrittenPages};
use crate::{CheckpointId, PAGE_SIZE, Term};
use thiserror::Error;

/// The memory a backup applies checkpoints to.
pub trait Image {
    /// The image's bytes.
    fn bytes_mut(&mut self) -> &mut [u8];
    /// Sets every byte to zero (before a whole-image checkpoint).
    fn clear(&mut self);
}

impl Image for Vec<u8> {
    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
    fn clear(&mut self) {
        self.fill(0);
    }
}

/// Why a backup refused a frame. The session must end; the image is unchanged.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BackupError {
    /// A frame other than Attach before the primary attached.
    #[error("{0:?} frame before Attach: a primary must attach first")]
    NotAttached(FrameKind),
    /// The frame's term is older than a primary this backup already follows (fencing).
    #[error("frame from {got}, but this backup follows {current}: a deposed primary is fenced off")]
    StaleTerm {
        /// The backup's term.
        current: Term,
        /// The frame's.
        got: Term,
    },
    /// A frame from a newer term that is not an Attach.
    #[error("frame from {got} while following {current}: a new primary must attach first")]
    UnattachedTerm {
        /// The backup's term.
        current: Term,
        /// The frame's.
        got: Term,
    },
    /// The primary's region is not this backup's region.
    #[error(
        "primary mirrors a region at {primary_base:#x} of {primary_len} bytes ({primary_page}-byte pages), this backup maps {ours_base:#x} of {ours_len} bytes: configure both with the same region"
    )]
    RegionMismatch {
        /// The primary's base address.
        primary_base: u64,
        /// The primary's region length.
        primary_len: u64,
        /// The primary's page size.
        primary_page: u32,
        /// Our base address.
        ours_base: u64,
        /// Our region length.
        ours_len: u64,
    },
    /// Runs or Close for a checkpoint other than the one expected.
    #[error("frame for {got}, expected {expected}: checkpoints must arrive in order")]
    WrongCheckpoint {
        /// The checkpoint expected.
        expected: CheckpointId,
        /// The one in the frame.
        got: CheckpointId,
    },
    /// The first checkpoint after Attach was not a whole image.
    #[error("first checkpoint after attach ({0}) is not a whole image")]
    FirstNotFull(CheckpointId),
    /// A pre-copy frame after the session's first checkpoint, or a checkpoint that claims to
    /// complete a pre-copy that never came.
    #[error("{0}: pre-copy frames only come before the first checkpoint of a session, which then completes them")]
    UnexpectedPreCopy(CheckpointId),
    /// A rebase from a state other than the one the image holds.
    #[error(
        "{checkpoint} rebases from {from:?}, but this image holds {held:?}: a rebase must start from the image held"
    )]
    RebaseFromElsewhere {
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// The state the primary rebases from.
        from: ImageState,
        /// The state held.
        held: Option<ImageState>,
    },
    /// A whole image where changes were expected.
    #[error(
        "{0} claims to be a whole image, but this session already holds one: only the first checkpoint after attach is"
    )]
    UnexpectedFull(CheckpointId),
    /// Close disagrees with what was staged: frames went missing.
    #[error(
        "close of {checkpoint} announces {announced_frames} frames / {announced_bytes} bytes, {staged_frames} frames / {staged_bytes} bytes arrived"
    )]
    IncompleteCheckpoint {
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// Frames the primary sent.
        announced_frames: u32,
        /// Bytes the primary sent.
        announced_bytes: u64,
        /// Frames staged.
        staged_frames: u32,
        /// Bytes staged.
        staged_bytes: u64,
    },
    /// A frame kind a primary never sends.
    #[error("unexpected {0:?} frame from a primary")]
    UnexpectedKind(FrameKind),
    /// A runs payload failed validation.
    #[error(transparent)]
    Runs(#[from] RunsError),
    /// A control payload failed to decode.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The image changed in memory where no checkpoint wrote: it is forgotten, and the next
    /// primary to attach sends a whole image.
    #[error(transparent)]
    Corrupt(#[from] CorruptLine),
}

/// What the driver must do after a frame was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupOutput {
    /// A primary attached; it will send a whole image next.
    Attached(Term),
    /// A primary attached and asks what the image holds, to rebase it: send this answer as a
    /// `Holding` frame.
    Holding(Holding),
    /// Send `Ack` for this checkpoint: the image now holds it.
    Ack(CheckpointId),
    /// Answer with a digest of the image (and the workload check).
    Verify(VerifyRequest),
    /// Echo this payload as a `Pong`.
    Pong(Vec<u8>),
}

/// Staged bytes after which an incremental checkpoint is applied as it arrives, with undo.
/// Below it, staging and copying at the close is cheaper (no undo copy, and short epochs stay
/// in cache); above it, a long epoch would otherwise land on the image as one burst.
pub const EAGER_AFTER: usize = 4 << 20;

/// The checkpoint being received.
#[derive(Clone, Debug)]
struct Open {
    checkpoint: CheckpointId,
    frames: u32,
    run_bytes: u64,
    /// Payloads kept aside until the close.
    staged: Vec<Vec<u8>>,
    staged_bytes: usize,
    /// Runs are applied on arrival; `undo` holds runs of the old bytes.
    eager: bool,
    undo: Vec<u8>,
}

/// The backup side of one region.
#[derive(Clone, Debug)]
pub struct Backup {
    region_base: u64,
    region_len: u64,
    term: Option<Term>,
    held: Option<CheckpointId>,
    /// The term of the primary that sent the checkpoint held: checkpoint numbers are ordered
    /// within a term, so a newer primary's whole image may carry any number.
    held_term: Option<Term>,
    expect_full: bool,
    /// Pre-copy runs were written into the image in this session: it is no checkpoint until
    /// the first checkpoint completes it.
    precopied: bool,
    eager_after: usize,
    open: Option<Open>,
    /// Reused undo buffer, so that steady streaming allocates nothing.
    spare_undo: Vec<u8>,
    /// A checksum per line of the image, sealed whenever this backup writes it.
    seals: LineChecksums,
    written: Written,
    /// The checkpoints applied, with the pages each wrote.
    history: ImageHistory,
    scrubber: Scrubber,
}

/// What the backup notes of every byte it writes.
#[derive(Clone, Debug)]
struct Written {
    /// The pages written since the image was last cleared (every other page is zero).
    ever: WrittenPages,
    /// The pages the open checkpoint wrote, for the history.
    checkpoint: CheckpointPages,
}

impl Written {
    fn new(image_len: usize) -> Written {
        Written { ever: WrittenPages::new(image_len), checkpoint: CheckpointPages::new(image_len) }
    }

    fn mark(&mut self, offset: u64, len: usize) {
        self.ever.mark(offset, len);
        self.checkpoint.mark(offset, len);
    }

    fn reset(&mut self) {
        self.ever.reset();
        self.checkpoint.take();
    }
}

/// Applies a validated runs payload, each run in one go: with `check`, its lines are checked
/// against their seals first (a run covers part of a line, and sealing the line after it is
/// written would otherwise seal in a corrupted byte beside the run); then it is written (its
/// old bytes appended to `undo` first, if given), sealed, and its pages noted as written. A
/// corrupt line stops the apply there, earlier runs written: the caller forgets the image.
///
/// Runs land at random offsets (an account here, a history record there), so each run would
/// wait for its line and its seal to come from memory in turn; loading them eight runs ahead
/// keeps several such loads in flight at once, and doing all three steps while the line is in
/// cache reads it from memory once.
fn apply_sealed(
    seals: &LineChecksums,
    written: &mut Written,
    payload: &[u8],
    image: &mut [u8],
    undo: Option<&mut Vec<u8>>,
    check: bool,
) -> Result<(), CorruptLine> {
    const AHEAD: usize = 8;
    let mut lead = runs(payload, image.len() as u64).map_while(Result::ok);
    lead.by_ref().take(AHEAD).for_each(|run| seals.prefetch(image, run.offset as usize));
    apply_validated_runs_checked(
        payload,
        image,
        undo,
        |image, offset, len| {
            if let Some(next) = lead.next() {
                seals.prefetch(image, next.offset as usize);
            }
            if check { seals.check_range(image, offset, len) } else { Ok(()) }
        },
        |image, offset, len| {
            seals.seal_range(image, offset, len);
            written.mark(offset as u64, len);
        },
    )
}

/// Seals the ranges a runs payload (or an undo log, which has the same layout) just wrote, and
/// notes their pages as written.
fn seal_runs(seals: &LineChecksums, written: &mut Written, payload: &[u8], image: &[u8]) {
    for run in runs(payload, image.len() as u64).map_while(Result::ok) {
        seals.seal_range(image, run.offset as usize, run.bytes.len());
        written.mark(run.offset, run.bytes.len());
    }
}

impl Backup {
    /// A backup of the region at `region_base` of `region_len` bytes, holding nothing yet.
    pub fn new(region_base: u64, region_len: u64) -> Backup {
        Backup {
            region_base,
            region_len,
            term: None,
            held: None,
            held_term: None,
            expect_full: true,
            precopied: false,
            eager_after: EAGER_AFTER,
            open: None,
            spare_undo: Vec::new(),
            seals: LineChecksums::zeroed(region_len as usize),
            written: Written::new(region_len as usize),
            history: ImageHistory::new(),
            scrubber: Scrubber::new(),
        }
    }

    /// The image's line seals.
    pub fn seals(&self) -> &LineChecksums {
        &self.seals
    }

    /// The line seals, for the primary this backup's image becomes ([`Backup::held`] says
    /// which checkpoint they describe, once the session has ended).
    pub fn into_seals(self) -> LineChecksums {
        self.seals
    }

    /// The pages this backup has written since its image was last cleared: every other page of
    /// the image is zero (so a promotion need not read it).
    pub fn written_pages(&self) -> &WrittenPages {
        &self.written.ever
    }

    /// The checkpoints the image went through, ending at the one held: a promoted backup's
    /// primary rebases the other holders with it.
    pub fn history(&self) -> &ImageHistory {
        &self.history
    }

    /// Checks the next `lines` lines of the image against their seals. A mismatch means the
    /// image was corrupted in memory: the backup forgets it (it holds no checkpoint, so it is
    /// never promoted nor counted as a copy) and the error says so; the driver must end the
    /// session, so that the primary attaches again and sends a whole image.
    ///
    /// An image that holds no checkpoint is not scrubbed: it is about to be replaced whole
    /// (a forgotten image would otherwise be found corrupt again before its replacement
    /// arrived, and refuse every new session).
    pub fn scrub<I: Image + ?Sized>(&mut self, image: &mut I, lines: usize) -> Result<(), BackupError> {
        if self.held.is_none() {
            return Ok(());
        }
        let result = self.scrubber.step(&self.seals, image.bytes_mut(), lines);
        result.map_err(|corruption| self.forget_image(corruption))
    }

    /// Full scrub passes over the image so far.
    pub fn scrub_passes(&self) -> u64 {
        self.scrubber.passes()
    }

    fn forget_image(&mut self, corruption: CorruptLine) -> BackupError {
        self.held = None;
        self.held_term = None;
        self.history.forget();
        self.expect_full = true;
        BackupError::Corrupt(corruption)
    }

    /// The checkpoint the image holds.
    pub fn held(&self) -> Option<CheckpointId> {
        self.held
    }

    /// The checkpoint held with the term of the primary that sent it: what backups compare to
    /// find the most up-to-date image.
    pub fn held_with_term(&self) -> Option<(Term, CheckpointId)> {
        self.held_term.zip(self.held)
    }

    fn held_state(&self) -> Option<ImageState> {
        self.held_with_term().map(|(term, checkpoint)| ImageState { term, checkpoint })
    }

    /// The term of the primary followed.
    pub fn term(&self) -> Option<Term> {
        self.term
    }

    /// Sets the staged bytes after which a checkpoint is applied on arrival (default
    /// [`EAGER_AFTER`]; 0: always). Tests and the simulator use it to cover both paths.
    pub fn with_eager_after(mut self, bytes: usize) -> Backup {
        self.eager_after = bytes;
        self
    }

    /// Whether a checkpoint is partly received (its runs may be partly applied).
    pub fn checkpoint_open(&self) -> bool {
        self.open.is_some()
    }

    /// The session ended (connection closed or a frame refused): undo what was applied of an
    /// unfinished checkpoint, so the image is exactly the checkpoint held.
    pub fn on_disconnect<I: Image + ?Sized>(&mut self, image: &mut I) {
        if let Some(mut open) = self.open.take() {
            undo_runs(&open.undo, image.bytes_mut());
            seal_runs(&self.seals, &mut self.written, &open.undo, image.bytes_mut());
            open.undo.clear();
            self.spare_undo = open.undo;
        }
        // The pages an unfinished checkpoint wrote are back as they were.
        self.written.checkpoint.take();
    }

    /// Handles one authenticated frame from the primary.
    ///
    /// A refused frame ends the session: what was applied of the open checkpoint is undone
    /// before the error is returned.
    pub fn on_frame<I: Image + ?Sized>(
        &mut self,
        frame: Frame,
        image: &mut I,
    ) -> Result<Option<BackupOutput>, BackupError> {
        debug_assert_eq!(image.bytes_mut().len() as u64, self.region_len);
        let result = self.handle(frame, image);
        if result.is_err() {
            self.on_disconnect(image);
        }
        result
    }

    fn handle<I: Image + ?Sized>(&mut self, frame: Frame, image: &mut I) -> Result<Option<BackupOutput>, BackupError> {
        match frame.kind {
            FrameKind::Attach => return self.on_attach(&frame).map(Some),
            FrameKind::Ping => return Ok(Some(BackupOutput::Pong(frame.payload))),
            FrameKind::Ack
            | FrameKind::Refuse
            | FrameKind::VerifyReply
            | FrameKind::Pong
            | FrameKind::Control
            | FrameKind::ControlPart
            | FrameKind::Holding
            | FrameKind::Operator
            | FrameKind::Transfer => {
                return Err(BackupError::UnexpectedKind(frame.kind));
            }
            FrameKind::Runs | FrameKind::Close | FrameKind::VerifyRequest | FrameKind::PreCopy => {}
        }
        let current = self.term.ok_or(BackupError::NotAttached(frame.kind))?;
        if frame.term < current {
            return Err(BackupError::StaleTerm { current, got: frame.term });
        }
        if frame.term > current {
            return Err(BackupError::UnattachedTerm { current, got: frame.term });
        }
        match frame.kind {
            FrameKind::PreCopy => {
                if !self.expect_full || self.open.is_some() {
                    return Err(BackupError::UnexpectedPreCopy(frame.checkpoint));
                }
                validate_runs(&frame.payload, self.region_len)?;
                // A pre-copy starts from zero, like a whole image, so the primary need not send
                // pages that are zero; the image stops being a checkpoint here.
                if !self.precopied {
                    image.clear();
                    self.seals.reset();
                    self.written.reset();
                }
                self.held = None;
                self.held_term = None;
                self.history.forget();
                self.precopied = true;
                let (seals, written) = (&self.seals, &mut self.written);
                apply_sealed(seals, written, &frame.payload, image.bytes_mut(), None, false)
                    .expect("no check, no error");
                Ok(None)
            }
            FrameKind::Runs => {
                let bytes = validate_runs(&frame.payload, self.region_len)?;
                let (whole, eager_after) = (self.expect_full, self.eager_after);
                self.open_for(frame.checkpoint)?;
                let (seals, written, open) =
                    (&self.seals, &mut self.written, self.open.as_mut().expect("opened above"));
                open.frames += 1;
                open.run_bytes += bytes;
                if whole || (!open.eager && open.staged_bytes + frame.payload.len() <= eager_after) {
                    open.staged_bytes += frame.payload.len();
                    open.staged.push(frame.payload);
                    return Ok(None);
                }
                // Applied with undo from here on: a cut stream plays the undo log back.
                let image = image.bytes_mut();
                let staged = if open.eager { Vec::new() } else { std::mem::take(&mut open.staged) };
                open.staged_bytes = 0;
                open.eager = true;
                let applied = staged
                    .iter()
                    .chain([&frame.payload])
                    .try_for_each(|payload| apply_sealed(seals, written, payload, image, Some(&mut open.undo), true));
                match applied {
                    Ok(()) => Ok(None),
                    Err(corruption) => Err(self.forget_image(corruption)),
                }
            }
            FrameKind::Close => {
                let close: Close = control::decode("close", &frame.payload)?;
                self.open_for(frame.checkpoint)?;
                let checkpoint = frame.checkpoint;
                match close.kind {
                    CloseKind::Changes if self.expect_full => return Err(BackupError::FirstNotFull(checkpoint)),
                    kind if kind.is_first() && !self.expect_full => {
                        return Err(BackupError::UnexpectedFull(checkpoint));
                    }
                    CloseKind::PreCopied if !self.precopied => return Err(BackupError::UnexpectedPreCopy(checkpoint)),
                    CloseKind::Rebased { from } if self.held_state() != Some(from) => {
                        return Err(BackupError::RebaseFromElsewhere { checkpoint, from, held: self.held_state() });
                    }
                    _ => {}
                }
                let open = self.open.as_ref().expect("opened above");
                if close.runs_frames != open.frames || close.run_bytes != open.run_bytes {
                    return Err(BackupError::IncompleteCheckpoint {
                        checkpoint: frame.checkpoint,
                        announced_frames: close.runs_frames,
                        announced_bytes: close.run_bytes,
                        staged_frames: open.frames,
                        staged_bytes: open.run_bytes,
                    });
                }
                let mut open = self.open.take().expect("opened above");
                let whole = close.kind == CloseKind::Whole;
                if whole {
                    image.clear();
                    self.seals.reset();
                    self.written.reset();
                }
                // A whole image lands on zeros just sealed as such: nothing to check.
                let (seals, written, bytes) = (&self.seals, &mut self.written, image.bytes_mut());
                let applied = open
                    .staged
                    .iter()
                    .try_for_each(|payload| apply_sealed(seals, written, payload, bytes, None, !whole));
                open.undo.clear();
                self.spare_undo = open.undo;
                if let Err(corruption) = applied {
                    return Err(self.forget_image(corruption));
                }
                self.held = Some(checkpoint);
                self.held_term = Some(frame.term);
                self.expect_full = false;
                let state = ImageState { term: frame.term, checkpoint };
                let pages = self.written.checkpoint.take();
                match close.kind {
                    CloseKind::Whole | CloseKind::PreCopied => self.history.restart(state),
                    CloseKind::Changes | CloseKind::Rebased { .. } => self.history.step(state, pages),
                }
                Ok(Some(BackupOutput::Ack(checkpoint)))
            }
            FrameKind::VerifyRequest => {
                let request: VerifyRequest = control::decode("verify request", &frame.payload)?;
                Ok(Some(BackupOutput::Verify(request)))
            }
            _ => unreachable!("filtered above"),
        }
    }

    fn on_attach(&mut self, frame: &Frame) -> Result<BackupOutput, BackupError> {
        let attach: Attach = control::decode("attach", &frame.payload)?;
        if let Some(current) = self.term
            && frame.term < current
        {
            return Err(BackupError::StaleTerm { current, got: frame.term });
        }
        if attach.region_base != self.region_base
            || attach.region_len != self.region_len
            || attach.page_size as usize != PAGE_SIZE
        {
            return Err(BackupError::RegionMismatch {
                primary_base: attach.region_base,
                primary_len: attach.region_len,
                primary_page: attach.page_size,
                ours_base: self.region_base,
                ours_len: self.region_len,
            });
        }
        self.term = Some(frame.term);
        self.expect_full = true;
        self.precopied = false;
        debug_assert!(self.open.is_none(), "an attach arrives on a new session");
        Ok(match attach.rebase {
            None => BackupOutput::Attached(frame.term),
            Some(resumed) => BackupOutput::Holding(Holding {
                held: self.held_state(),
                written_since_resumed: self.history.pages_since(resumed).filter(|p| p.len() <= Holding::MAX_PAGES),
            }),
        })
    }

    fn open_for(&mut self, checkpoint: CheckpointId) -> Result<&mut Open, BackupError> {
        let newer_term = self.held_term.is_none_or(|held_term| self.term.is_some_and(|term| term > held_term));
        let expected = match (&self.open, self.held, self.expect_full) {
            (Some(open), _, _) => open.checkpoint,
            // A whole image may start at any checkpoint after what we hold, or at any
            // checkpoint at all if it comes from a newer primary.
            (None, Some(held), true) if checkpoint > held || newer_term => checkpoint,
            (None, None, true) => checkpoint,
            (None, Some(held), _) => held.next(),
            (None, None, false) => unreachable!("expect_full is only cleared by applying a checkpoint"),
        };
        if checkpoint != expected {
            return Err(BackupError::WrongCheckpoint { expected, got: checkpoint });
        }
        let spare_undo = &mut self.spare_undo;
        Ok(self.open.get_or_insert_with(|| Open {
            checkpoint,
            frames: 0,
            run_bytes: 0,
            staged: Vec::new(),
            staged_bytes: 0,
            eager: false,
            undo: std::mem::take(spare_undo),
        }))
    }
}
