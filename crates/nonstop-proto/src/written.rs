//! Which pages of a backup's image its checkpoints have written since it was last cleared:
//! every other page is zero. A promotion into transparent mode copies the image into a shadow
//! to diff against; with this record it reads only the pages that can hold anything, instead
//! of every page of a region that a backup keeps resident (~0.1 s per GiB).

use crate::PAGE_SIZE;

/// One bit per page of an image.
///
/// ```
/// use nonstop_proto::written::WrittenPages;
/// let mut written = WrittenPages::new(4 * 4096);
/// written.mark(4090, 10); // crosses into the second page
/// written.mark(3 * 4096, 1 << 20); // runs past the image: pages beyond it are ignored
/// assert_eq!(written.pages().collect::<Vec<_>>(), [0, 1, 3]);
/// written.reset();
/// assert_eq!(written.pages().count(), 0);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenPages {
    words: Vec<u64>,
    /// Pages in the image (the last word may have bits beyond it).
    pages: usize,
}

impl WrittenPages {
    /// No page written, for an image of `image_len` bytes.
    pub fn new(image_len: usize) -> WrittenPages {
        let pages = image_len.div_ceil(PAGE_SIZE);
        WrittenPages { words: vec![0; pages.div_ceil(64)], pages }
    }

    /// Notes the pages of `len` bytes at `offset` as written (pages beyond the image are
    /// ignored: the caller applies validated runs only).
    pub fn mark(&mut self, offset: u64, len: usize) {
        if len == 0 || self.pages == 0 {
            return;
        }
        let (first, last) = (offset as usize / PAGE_SIZE, (offset as usize + len - 1) / PAGE_SIZE);
        for page in first..=last.min(self.pages - 1) {
            self.words[page / 64] |= 1 << (page % 64);
        }
    }

    /// Notes one page; returns whether it was not noted before.
    fn mark_page(&mut self, page: usize) -> bool {
        let (word, bit) = (&mut self.words[page / 64], 1u64 << (page % 64));
        let new = *word & bit == 0;
        *word |= bit;
        new
    }

    /// Forgets every page: the image was cleared to zeros.
    pub fn reset(&mut self) {
        self.words.fill(0);
    }

    /// The pages written, in order.
    pub fn pages(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(index, &word)| {
            std::iter::successors((word != 0).then_some(word), |rest| Some(rest & (rest - 1)).filter(|r| *r != 0))
                .map(move |bits| index * 64 + bits.trailing_zeros() as usize)
        })
    }
}

/// The pages one checkpoint writes, each once, in the order first written: a bit per page to
/// note it, and the list, so that ending a checkpoint costs the pages it wrote rather than a
/// scan of the whole image's bits.
///
/// ```
/// use nonstop_proto::written::CheckpointPages;
/// let mut pages = CheckpointPages::new(8 * 4096);
/// pages.mark(5 * 4096, 4097);
/// pages.mark(5 * 4096 + 10, 1);
/// assert_eq!(pages.take(), [5, 6]);
/// assert!(pages.take().is_empty());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointPages {
    noted: WrittenPages,
    list: Vec<u32>,
}

impl CheckpointPages {
    /// None yet, for an image of `image_len` bytes.
    pub fn new(image_len: usize) -> CheckpointPages {
        CheckpointPages { noted: WrittenPages::new(image_len), list: Vec::new() }
    }

    /// Notes the pages of `len` bytes at `offset` (pages beyond the image are ignored).
    pub fn mark(&mut self, offset: u64, len: usize) {
        if len == 0 || self.noted.pages == 0 {
            return;
        }
        let (first, last) = (offset as usize / PAGE_SIZE, (offset as usize + len - 1) / PAGE_SIZE);
        for page in first..=last.min(self.noted.pages - 1) {
            if self.noted.mark_page(page) {
                self.list.push(page as u32);
            }
        }
    }

    /// The pages noted since the last take, and none noted from now on.
    pub fn take(&mut self) -> Vec<u32> {
        for &page in &self.list {
            self.noted.words[page as usize / 64] &= !(1 << (page % 64));
        }
        std::mem::take(&mut self.list)
    }
}
