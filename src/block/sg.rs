//! Guest data buffers for one SCSI command, seen as scatter-gather lists of guest memory.
//!
//! The virtio layer splits a descriptor chain into the request/response headers and the data
//! buffers; what remains is handed to the SCSI layer as a [`DataOut`] (guest-to-device, readable
//! by us) and a [`DataIn`] (device-to-guest, writable by us). Both are lists of `VolatileSlice`s
//! that point straight into guest memory, so bulk READ/WRITE data moves between the LUN and the
//! guest with `preadv`/`pwritev` and no bounce buffer. Small responses (INQUIRY, MODE SENSE …) are
//! built in a local buffer and copied with [`SgList::copy_from`].
//!
//! In unit tests the slices come from ordinary `Vec<u8>`s (`VolatileSlice: From<&mut [u8]>`).

use std::mem::MaybeUninit;

use vm_memory::VolatileSlice;

/// Segments a list holds without a heap allocation. A 4 KiB READ or WRITE from a Linux guest
/// has one or two data segments, and chain parsing builds a handful of lists per request, so
/// keeping them inline makes the request path allocation-free; longer lists (large transfers
/// over scattered pages) spill to a `Vec`.
pub const SG_INLINE: usize = 8;

/// A scatter-gather list over guest memory (or test memory), at most `u32::MAX` bytes in total.
///
/// Up to [`SG_INLINE`] segments live inline; more spill to the heap.
#[derive(Clone)]
pub struct SgList<'a> {
    /// The first `count` entries are initialized (when `spill` is empty). Left uninitialized
    /// rather than filled with empty slices: a new list is made per header and data buffer of
    /// every request, and filling costs as much as the list's size in stores.
    inline: [MaybeUninit<VolatileSlice<'a>>; SG_INLINE],
    /// Segments in `inline` (when `spill` is empty).
    count: usize,
    /// Every segment once the list outgrew `inline`.
    spill: Vec<VolatileSlice<'a>>,
    len: usize,
}

impl Default for SgList<'_> {
    fn default() -> Self {
        Self::new()
    }
}

/// The initialized part of a list's `inline` array: its first `count` entries.
#[inline]
fn initialized<'s, 'a>(
    inline: &'s [MaybeUninit<VolatileSlice<'a>>; SG_INLINE],
    count: usize,
) -> &'s [VolatileSlice<'a>] {
    let count = count.min(SG_INLINE);
    // SAFETY: `SgList::push` initializes `inline[..count]` before it raises `count` (never
    // above SG_INLINE), and `MaybeUninit<T>` has `T`'s layout, so the first `count` entries are
    // valid `VolatileSlice`s borrowed for `'a`.
    unsafe { std::slice::from_raw_parts(inline.as_ptr().cast(), count) }
}

impl<'a> SgList<'a> {
    #[inline]
    pub fn new() -> Self {
        Self {
            inline: [MaybeUninit::uninit(); SG_INLINE],
            count: 0,
            spill: Vec::new(),
            len: 0,
        }
    }

    /// Appends a segment; empty segments are dropped so that iovec lists never contain them.
    #[inline]
    pub fn push(&mut self, slice: VolatileSlice<'a>) {
        if slice.is_empty() {
            return;
        }
        self.len += slice.len();
        if !self.spill.is_empty() {
            self.spill.push(slice);
        } else if self.count < SG_INLINE {
            self.inline[self.count] = MaybeUninit::new(slice);
            self.count += 1;
        } else {
            self.spill.reserve(SG_INLINE * 2);
            self.spill
                .extend_from_slice(initialized(&self.inline, self.count));
            self.spill.push(slice);
        }
    }

    /// Total number of bytes in the list.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    pub fn segments(&self) -> &[VolatileSlice<'a>] {
        if self.spill.is_empty() {
            self.inline_segments()
        } else {
            &self.spill
        }
    }

    #[inline]
    fn inline_segments(&self) -> &[VolatileSlice<'a>] {
        initialized(&self.inline, self.count)
    }

    /// The sub-list covering bytes `[offset, offset + len)`, clamped to the list's end.
    pub fn range(&self, offset: usize, len: usize) -> SgList<'a> {
        let mut out = SgList::new();
        let mut skip = offset;
        let mut want = len;
        for s in self.segments() {
            if want == 0 {
                break;
            }
            if skip >= s.len() {
                skip -= s.len();
                continue;
            }
            let take = (s.len() - skip).min(want);
            // Cannot fail: skip < s.len() and skip + take <= s.len().
            if let Ok(sub) = s.subslice(skip, take) {
                out.push(sub);
            }
            want -= take;
            skip = 0;
        }
        out
    }

    /// Copies `src` into the start of the list; returns the number of bytes copied
    /// (`min(src.len(), self.len())`).
    pub fn copy_from(&self, src: &[u8]) -> usize {
        let mut done = 0;
        for s in self.segments() {
            if done == src.len() {
                break;
            }
            let n = s.len().min(src.len() - done);
            s.copy_from(&src[done..done + n]);
            done += n;
        }
        done
    }

    /// Copies the start of the list into `dst`; returns the number of bytes copied.
    pub fn copy_to(&self, dst: &mut [u8]) -> usize {
        let mut done = 0;
        for s in self.segments() {
            if done == dst.len() {
                break;
            }
            let n = s.len().min(dst.len() - done);
            done += s.copy_to(&mut dst[done..done + n]);
        }
        done
    }
}

/// The first `len` bytes of a list, borrowed: the guest memory a planned I/O moves (the guest's
/// buffer may be longer than the transfer). A few words, where cutting a new list copied every
/// segment and moved ~200 bytes with each hand-over of the plan.
#[derive(Clone, Copy, Default)]
pub struct SgPrefix<'a> {
    list: Option<&'a SgList<'a>>,
    len: usize,
}

impl<'a> SgPrefix<'a> {
    /// The first `len` bytes of `list` (all of it when it is shorter).
    #[inline]
    pub fn new(list: &'a SgList<'a>, len: usize) -> Self {
        Self {
            list: Some(list),
            len: len.min(list.len()),
        }
    }

    /// All of `list`.
    #[inline]
    pub fn whole(list: &'a SgList<'a>) -> Self {
        Self::new(list, list.len())
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The segments covering the prefix, the last one shortened where the prefix ends in it.
    pub fn segments(&self) -> impl Iterator<Item = VolatileSlice<'a>> + 'a {
        let mut left = self.len;
        self.list
            .map_or(&[][..], |l| l.segments())
            .iter()
            .map_while(move |s| {
                if left == 0 {
                    return None;
                }
                let take = s.len().min(left);
                left -= take;
                // Cannot fail: take <= s.len().
                s.subslice(0, take).ok()
            })
    }

    /// How many segments [`SgPrefix::segments`] yields.
    pub fn segment_count(&self) -> usize {
        let Some(list) = self.list else {
            return 0;
        };
        if self.len == list.len() {
            return list.segments().len();
        }
        let mut left = self.len;
        list.segments()
            .iter()
            .take_while(|s| {
                let more = left > 0;
                left = left.saturating_sub(s.len());
                more
            })
            .count()
    }

    /// Calls `f` with the prefix as a list: the borrowed list itself when the prefix is all of
    /// it (the usual case), a list cut from it otherwise.
    pub fn with_list<R>(&self, f: impl FnOnce(&SgList<'a>) -> R) -> R {
        match self.list {
            Some(list) if list.len() == self.len => f(list),
            Some(list) => f(&list.range(0, self.len)),
            None => f(&SgList::new()),
        }
    }
}

/// Device-to-guest data buffer (the writable part of the chain after the response header).
pub type DataIn<'a> = SgList<'a>;
/// Guest-to-device data buffer (the readable part of the chain after the request header).
pub type DataOut<'a> = SgList<'a>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_and_copy_span_segments() {
        let mut a = vec![0u8; 3];
        let mut b = vec![0u8; 5];
        let mut sg = SgList::new();
        sg.push(VolatileSlice::from(a.as_mut_slice()));
        sg.push(VolatileSlice::from(&mut [][..]));
        sg.push(VolatileSlice::from(b.as_mut_slice()));
        assert_eq!(sg.len(), 8);
        assert_eq!(sg.segments().len(), 2);
        assert_eq!(sg.copy_from(&[1, 2, 3, 4, 5, 6, 7, 8, 9]), 8);
        let r = sg.range(2, 4);
        assert_eq!(r.len(), 4);
        let mut out = [0u8; 6];
        assert_eq!(r.copy_to(&mut out), 4);
        assert_eq!(&out[..4], &[3, 4, 5, 6]);
        assert_eq!(sg.range(7, 10).len(), 1);
        assert_eq!(sg.range(9, 1).len(), 0);
        drop(sg);
        drop(r);
        assert_eq!(a, [1, 2, 3]);
        assert_eq!(b, [4, 5, 6, 7, 8]);
    }

    #[test]
    fn prefixes_cut_the_last_segment() {
        let mut a = vec![1u8; 3];
        let mut b = vec![2u8; 5];
        let mut sg = SgList::new();
        sg.push(VolatileSlice::from(a.as_mut_slice()));
        sg.push(VolatileSlice::from(b.as_mut_slice()));
        let lens = |p: SgPrefix<'_>| p.segments().map(|s| s.len()).collect::<Vec<_>>();
        for (len, want) in [
            (0, vec![]),
            (2, vec![2]),
            (3, vec![3]),
            (4, vec![3, 1]),
            (8, vec![3, 5]),
            (100, vec![3, 5]),
        ] {
            let p = SgPrefix::new(&sg, len);
            assert_eq!(p.len(), len.min(8));
            assert_eq!(lens(p), want, "prefix of {len}");
            assert_eq!(p.segment_count(), want.len(), "prefix of {len}");
            p.with_list(|l| {
                assert_eq!(l.len(), p.len());
                assert_eq!(l.segments().len(), want.len());
            });
        }
        let empty = SgPrefix::default();
        assert_eq!((empty.len(), empty.segment_count()), (0, 0));
        assert_eq!(empty.segments().count(), 0);
        assert_eq!(empty.with_list(|l| l.len()), 0);
    }

    #[test]
    fn long_lists_spill_to_the_heap() {
        let mut bufs: Vec<Vec<u8>> = (0..SG_INLINE as u8 + 3).map(|i| vec![i; 2]).collect();
        let mut sg = SgList::new();
        for b in &mut bufs {
            sg.push(VolatileSlice::from(b.as_mut_slice()));
        }
        assert_eq!(sg.segments().len(), SG_INLINE + 3);
        assert_eq!(sg.len(), 2 * (SG_INLINE + 3));
        let mut out = vec![0u8; sg.len()];
        assert_eq!(sg.copy_to(&mut out), out.len());
        let expected: Vec<u8> = (0..SG_INLINE as u8 + 3).flat_map(|i| [i, i]).collect();
        assert_eq!(out, expected);
        let r = sg.range(2 * SG_INLINE - 1, 4);
        assert_eq!(r.segments().len(), 3);
        let mut out = [0u8; 4];
        r.copy_to(&mut out);
        let last = SG_INLINE as u8 - 1;
        assert_eq!(out, [last, last + 1, last + 1, last + 2]);
    }
}
