//! The backup's state machine: stage a checkpoint, apply it whole, acknowledge.
//!
//! Runs of checkpoint `n` are validated as they arrive and kept aside; the image is not
//! touched until `Close(n)` arrives and agrees with what was staged. Applying is then a local
//! copy, so however the stream is cut — the primary killed after any byte — the image is
//! exactly checkpoint `n - 1` or exactly checkpoint `n`, never a mix. Any refused frame ends
//! the session and leaves the image as it was.

use crate::control::{self, Attach, Close, ControlError, VerifyRequest};
use crate::frame::{Frame, FrameKind};
use crate::runs::{RunsError, apply_validated_runs, validate_runs};
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
}

/// What the driver must do after a frame was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupOutput {
    /// A primary attached; it will send a whole image next.
    Attached(Term),
    /// Send `Ack` for this checkpoint: the image now holds it.
    Ack(CheckpointId),
    /// Answer with a digest of the image (and the workload check).
    Verify(VerifyRequest),
    /// Echo this payload as a `Pong`.
    Pong(Vec<u8>),
}

#[derive(Debug)]
struct Staging {
    checkpoint: CheckpointId,
    payloads: Vec<Vec<u8>>,
    run_bytes: u64,
}

/// The backup side of one region.
#[derive(Debug)]
pub struct Backup {
    region_base: u64,
    region_len: u64,
    term: Option<Term>,
    held: Option<CheckpointId>,
    /// The term of the primary that sent the checkpoint held: checkpoint numbers are ordered
    /// within a term, so a newer primary's whole image may carry any number.
    held_term: Option<Term>,
    expect_full: bool,
    staging: Option<Staging>,
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
            staging: None,
        }
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

    /// The term of the primary followed.
    pub fn term(&self) -> Option<Term> {
        self.term
    }

    /// The session ended (connection closed or refused): drop what was staged.
    pub fn on_disconnect(&mut self) {
        self.staging = None;
    }

    /// Handles one authenticated frame from the primary.
    pub fn on_frame<I: Image + ?Sized>(
        &mut self,
        frame: Frame,
        image: &mut I,
    ) -> Result<Option<BackupOutput>, BackupError> {
        debug_assert_eq!(image.bytes_mut().len() as u64, self.region_len);
        match frame.kind {
            FrameKind::Attach => return self.on_attach(&frame).map(Some),
            FrameKind::Ping => return Ok(Some(BackupOutput::Pong(frame.payload))),
            FrameKind::Ack | FrameKind::Refuse | FrameKind::VerifyReply | FrameKind::Pong => {
                return Err(BackupError::UnexpectedKind(frame.kind));
            }
            FrameKind::Runs | FrameKind::Close | FrameKind::VerifyRequest => {}
        }
        let current = self.term.ok_or(BackupError::NotAttached(frame.kind))?;
        if frame.term < current {
            return Err(BackupError::StaleTerm {
                current,
                got: frame.term,
            });
        }
        if frame.term > current {
            return Err(BackupError::UnattachedTerm {
                current,
                got: frame.term,
            });
        }
        match frame.kind {
            FrameKind::Runs => {
                let bytes = validate_runs(&frame.payload, self.region_len)?;
                let staging = self.staging_for(frame.checkpoint)?;
                staging.run_bytes += bytes;
                staging.payloads.push(frame.payload);
                Ok(None)
            }
            FrameKind::Close => {
                let close: Close = control::decode("close", &frame.payload)?;
                self.staging_for(frame.checkpoint)?;
                let staging = self.staging.take().expect("created above");
                if self.expect_full && !close.full {
                    return Err(BackupError::FirstNotFull(frame.checkpoint));
                }
                let staged_frames = staging.payloads.len() as u32;
                if close.runs_frames != staged_frames || close.run_bytes != staging.run_bytes {
                    return Err(BackupError::IncompleteCheckpoint {
                        checkpoint: frame.checkpoint,
                        announced_frames: close.runs_frames,
                        announced_bytes: close.run_bytes,
                        staged_frames,
                        staged_bytes: staging.run_bytes,
                    });
                }
                if close.full {
                    image.clear();
                }
                let bytes = image.bytes_mut();
                for payload in &staging.payloads {
                    apply_validated_runs(payload, bytes);
                }
                self.held = Some(frame.checkpoint);
                self.held_term = Some(frame.term);
                self.expect_full = false;
                Ok(Some(BackupOutput::Ack(frame.checkpoint)))
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
            return Err(BackupError::StaleTerm {
                current,
                got: frame.term,
            });
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
        self.staging = None;
        Ok(BackupOutput::Attached(frame.term))
    }

    fn staging_for(&mut self, checkpoint: CheckpointId) -> Result<&mut Staging, BackupError> {
        let newer_term = self
            .held_term
            .is_none_or(|held_term| self.term.is_some_and(|term| term > held_term));
        let expected = match (&self.staging, self.held, self.expect_full) {
            (Some(staging), _, _) => staging.checkpoint,
            // A whole image may start at any checkpoint after what we hold, or at any
            // checkpoint at all if it comes from a newer primary.
            (None, Some(held), true) if checkpoint > held || newer_term => checkpoint,
            (None, None, true) => checkpoint,
            (None, Some(held), _) => held.next(),
            (None, None, false) => unreachable!("expect_full is only cleared by applying a checkpoint"),
        };
        if checkpoint != expected {
            return Err(BackupError::WrongCheckpoint {
                expected,
                got: checkpoint,
            });
        }
        Ok(self.staging.get_or_insert_with(|| Staging {
            checkpoint,
            payloads: Vec::new(),
            run_bytes: 0,
        }))
    }
}
