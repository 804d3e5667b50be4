//! Splitting a kernel's work into tasks (run by the `thread-team` crate).

pub(crate) use thread_team::for_each_task;

/// The `task`-th of `tasks` near-equal contiguous ranges of `0..len`, boundaries on multiples
/// of `align`.
pub(crate) fn split(len: usize, tasks: usize, task: usize, align: usize) -> std::ops::Range<usize> {
    let units = len.div_ceil(align);
    let bound = |t: usize| (units * t / tasks * align).min(len);
    bound(task)..bound(task + 1)
}

/// A raw pointer that may cross threads: each task touches only its own disjoint range of the
/// buffer (the callers' invariant, stated where they make slices from it).
#[derive(Clone, Copy)]
pub(crate) struct Shared<T>(pub(crate) *mut T);
// SAFETY: the pointer is only turned into slices over ranges that no other task touches.
unsafe impl<T> Send for Shared<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for Shared<T> {}

impl<T> Shared<T> {
    /// # Safety
    /// `start..start + len` must lie inside the live buffer the pointer came from, and no other
    /// reference to those elements may exist while the slice lives.
    pub(crate) unsafe fn slice<'a>(self, start: usize, len: usize) -> &'a mut [T] {
        // SAFETY: guaranteed by the caller (see above).
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn split_covers_the_range_in_aligned_pieces() {
        for (len, tasks, align) in [(100, 3, 32), (7, 4, 1), (5, 8, 2), (33_278, 2, 32)] {
            let mut next = 0;
            for t in 0..tasks {
                let r = split(len, tasks, t, align);
                assert_eq!(r.start, next);
                assert!(r.start.is_multiple_of(align) || r.start == len);
                next = r.end;
            }
            assert_eq!(next, len);
        }
    }
}
