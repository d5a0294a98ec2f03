//! What a backup's image went through: the last checkpoints it applied, each with the pages it
//! wrote to reach it.
//!
//! After a promotion the other holders of the service keep their images, each one checkpoint
//! of the old term or another. The new primary asks each what it holds ([`Holding`]); if that
//! state is in the new primary's history, the pages written since it are all that can differ,
//! and if the holder went past the state the new primary resumed from (it applied checkpoints
//! the new primary never received), the pages the holder wrote since then are. Either way the
//! rebase sends those pages, plus the pages written since the promotion, instead of the whole
//! image: a few checkpoints' worth instead of every page the service uses.
//!
//! ```
//! use nonstop_proto::control::ImageState;
//! use nonstop_proto::history::ImageHistory;
//! use nonstop_proto::{CheckpointId, Term};
//! let at = |c| ImageState { term: Term(1), checkpoint: CheckpointId(c) };
//! let mut history = ImageHistory::new();
//! history.restart(at(1)); // a whole image
//! history.step(at(2), vec![7, 3]);
//! history.step(at(3), vec![3, 9]);
//! assert_eq!(history.current(), Some(at(3)));
//! assert_eq!(history.pages_since(at(1)), Some(vec![3, 7, 9]));
//! assert_eq!(history.pages_since(at(3)), Some(vec![]));
//! assert_eq!(history.pages_since(at(4)), None, "never held");
//! ```

use crate::control::{Holding, ImageState};
use std::collections::VecDeque;
use thiserror::Error;

/// One applied checkpoint: the state it reached and the pages it wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Step {
    to: ImageState,
    pages: Vec<u32>,
}

/// The recent states of one image, oldest first, with the pages written between them.
///
/// Bounded: at most [`ImageHistory::MAX_STEPS`] checkpoints and [`ImageHistory::MAX_PAGES`]
/// page numbers are remembered; the oldest are forgotten first. A state it no longer
/// remembers costs a whole image instead of a diff, nothing worse.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageHistory {
    /// The oldest state remembered (`None`: the image is no checkpoint anyone can build on).
    base: Option<ImageState>,
    steps: VecDeque<Step>,
    /// Page numbers held in `steps`.
    pages: usize,
}

/// A holder's [`Holding`] names pages its image cannot have.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HoldingError {
    /// A page number past the end of the region.
    #[error("holder names page {page}, but the region has {pages} pages: its answer is corrupt")]
    PageOutOfRange {
        /// The page named.
        page: u32,
        /// Pages in the region.
        pages: usize,
    },
}

impl ImageHistory {
    /// Checkpoints remembered at most.
    pub const MAX_STEPS: usize = 4096;
    /// Page numbers remembered at most (1 MiB of them): past that, a rebase would send about
    /// as much as a whole image anyway.
    pub const MAX_PAGES: usize = 1 << 18;

    /// Nothing known.
    pub fn new() -> ImageHistory {
        ImageHistory::default()
    }

    /// The image was replaced whole (a whole image, a completed pre-copy): it is `at`, and
    /// nothing before it matters.
    pub fn restart(&mut self, at: ImageState) {
        self.base = Some(at);
        self.steps.clear();
        self.pages = 0;
    }

    /// The image is no longer a checkpoint (corrupted, or being overwritten by a pre-copy).
    pub fn forget(&mut self) {
        self.base = None;
        self.steps.clear();
        self.pages = 0;
    }

    /// A checkpoint was applied: the image went from [`ImageHistory::current`] to `to` by
    /// writing `pages`. Ignored while nothing is known.
    pub fn step(&mut self, to: ImageState, pages: Vec<u32>) {
        if self.base.is_none() {
            return;
        }
        if pages.len() > Self::MAX_PAGES {
            self.restart(to);
            return;
        }
        self.pages += pages.len();
        self.steps.push_back(Step { to, pages });
        while self.steps.len() > Self::MAX_STEPS || self.pages > Self::MAX_PAGES {
            let oldest = self.steps.pop_front().expect("over a limit, so not empty");
            self.pages -= oldest.pages.len();
            self.base = Some(oldest.to);
        }
    }

    /// The state the image is in now, if it is one.
    pub fn current(&self) -> Option<ImageState> {
        self.steps.back().map(|step| step.to).or(self.base)
    }

    /// Every page written since the image was `state`, sorted, each once; `None` if the image
    /// was not in that state within what is remembered.
    pub fn pages_since(&self, state: ImageState) -> Option<Vec<u32>> {
        let after = if self.base == Some(state) { 0 } else { self.steps.iter().position(|step| step.to == state)? + 1 };
        let mut pages: Vec<u32> = self.steps.iter().skip(after).flat_map(|step| step.pages.iter().copied()).collect();
        pages.sort_unstable();
        pages.dedup();
        Some(pages)
    }

    /// What a holder's rebase must carry besides the pages the primary wrote since it resumed:
    /// the pages in which the holder's image can differ from the state the primary resumed
    /// from, sorted and each once; `Ok(None)` if they are not known (the holder holds nothing,
    /// or shares no remembered state with this image), so that a whole image must go.
    ///
    /// `self` is the history of the image the primary resumed from; `cut` is the newest
    /// checkpoint the primary cut since (a holder of one of those differs only in pages written
    /// since the resume, which the rebase sends anyway); `region_pages` bounds the holder's
    /// page numbers, which come from the network.
    pub fn rebase_pages(
        &self,
        holding: &Holding,
        cut: Option<ImageState>,
        region_pages: usize,
    ) -> Result<Option<Vec<u32>>, HoldingError> {
        let Some(held) = holding.held else { return Ok(None) };
        if cut.is_some_and(|cut| held.term == cut.term && held.checkpoint <= cut.checkpoint) {
            return Ok(Some(Vec::new()));
        }
        if let Some(pages) = self.pages_since(held) {
            // The holder is where this image was: the pages written since then differ.
            return Ok(Some(pages));
        }
        let Some(written) = &holding.written_since_resumed else { return Ok(None) };
        // The holder went past this image: the pages it wrote since are to be put back.
        if let Some(&page) = written.iter().find(|&&page| page as usize >= region_pages) {
            return Err(HoldingError::PageOutOfRange { page, pages: region_pages });
        }
        let mut pages = written.clone();
        pages.sort_unstable();
        pages.dedup();
        Ok(Some(pages))
    }
}

/// The pages a rebase's first checkpoint carries: those [`ImageHistory::rebase_pages`] named
/// and every page written since the primary resumed, in order, each once. The mirror and the
/// simulator's model primary both build the rebase from this.
///
/// ```
/// assert_eq!(nonstop_proto::history::rebase_union(&[5, 2], &[2, 9]), [2, 5, 9]);
/// ```
pub fn rebase_union(named: &[u32], written_since_resume: &[usize]) -> Vec<usize> {
    let mut pages: Vec<usize> =
        named.iter().map(|&page| page as usize).chain(written_since_resume.iter().copied()).collect();
    pages.sort_unstable();
    pages.dedup();
    pages
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CheckpointId, Term};

    fn at(term: u64, checkpoint: u64) -> ImageState {
        ImageState { term: Term(term), checkpoint: CheckpointId(checkpoint) }
    }

    #[test]
    fn nothing_known_until_a_whole_image() {
        let mut history = ImageHistory::new();
        history.step(at(1, 2), vec![1]);
        assert_eq!(history.current(), None);
        assert_eq!(history.pages_since(at(1, 2)), None);
        history.restart(at(1, 5));
        history.step(at(1, 6), vec![4]);
        assert_eq!(history.pages_since(at(1, 5)), Some(vec![4]));
        history.forget();
        assert_eq!(history.current(), None);
    }

    #[test]
    fn oldest_steps_are_forgotten_past_the_limits() {
        let mut history = ImageHistory::new();
        history.restart(at(1, 0));
        for checkpoint in 1..=ImageHistory::MAX_STEPS as u64 + 10 {
            history.step(at(1, checkpoint), vec![checkpoint as u32 % 7]);
        }
        assert_eq!(history.pages_since(at(1, 0)), None);
        assert_eq!(history.pages_since(at(1, 10)), Some((0..7).collect()));
        history.step(at(1, 9000), vec![0; ImageHistory::MAX_PAGES - 1]);
        assert!(history.pages <= ImageHistory::MAX_PAGES);
        assert_eq!(history.pages_since(at(1, 10)), None, "pushed out by the page limit");
        history.step(at(1, 9001), vec![0; ImageHistory::MAX_PAGES + 1]);
        assert_eq!(history.current(), Some(at(1, 9001)));
        assert_eq!(history.pages_since(at(1, 9001)), Some(vec![]));
    }

    #[test]
    fn rebase_pages_from_either_side() {
        let mut primary = ImageHistory::new();
        primary.restart(at(1, 1));
        primary.step(at(1, 2), vec![5]);
        primary.step(at(1, 3), vec![6, 5]);
        // Behind: the holder holds checkpoint 2, the primary resumed from 3.
        let behind = Holding { held: Some(at(1, 2)), written_since_resumed: None };
        assert_eq!(primary.rebase_pages(&behind, None, 16), Ok(Some(vec![5, 6])));
        // Ahead: it applied 4 and 5, which the primary never received.
        let ahead = Holding { held: Some(at(1, 5)), written_since_resumed: Some(vec![9, 2, 9]) };
        assert_eq!(primary.rebase_pages(&ahead, None, 16), Ok(Some(vec![2, 9])));
        let lying = Holding { held: Some(at(1, 5)), written_since_resumed: Some(vec![16]) };
        assert_eq!(primary.rebase_pages(&lying, None, 16), Err(HoldingError::PageOutOfRange { page: 16, pages: 16 }));
        // A checkpoint of the primary's own term: only the pages written since it resumed.
        let own = Holding { held: Some(at(2, 7)), written_since_resumed: None };
        assert_eq!(primary.rebase_pages(&own, Some(at(2, 9)), 16), Ok(Some(vec![])));
        assert_eq!(primary.rebase_pages(&own, Some(at(2, 6)), 16), Ok(None), "not cut yet: not believed");
        // Unrelated or empty: a whole image.
        let stranger = Holding { held: Some(at(2, 1)), written_since_resumed: None };
        assert_eq!(primary.rebase_pages(&stranger, None, 16), Ok(None));
        assert_eq!(primary.rebase_pages(&Holding { held: None, written_since_resumed: None }, None, 16), Ok(None));
    }
}
