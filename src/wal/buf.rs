//! Sector-aligned byte buffers for O_DIRECT I/O.
//!
//! Owns: one heap allocation aligned to [`SECTOR_BYTES`] whose capacity is a whole number of
//! sectors. Buffers are allocated once (at start-up) and passed to a backend and back, so the
//! hot path never allocates.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

use super::format::SECTOR_BYTES;

/// A zero-initialised, sector-aligned buffer with a fixed capacity and a length.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    capacity_bytes: usize,
    len: usize,
}

// SAFETY: the buffer is a plain owned heap allocation; moving it between threads is sound.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `capacity_bytes` (rounded up to whole sectors, at least one sector).
    pub fn new(capacity_bytes: usize) -> AlignedBuf {
        let sectors = capacity_bytes.div_ceil(SECTOR_BYTES).max(1);
        let capacity_bytes = sectors * SECTOR_BYTES;
        let layout = Layout::from_size_align(capacity_bytes, SECTOR_BYTES).expect("valid layout");
        // SAFETY: layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf {
            ptr,
            capacity_bytes,
            len: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity_bytes
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// The bytes written so far.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `len <= capacity_bytes` and the allocation is initialised (zeroed at alloc).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The whole capacity, for writers that fill the buffer in place.
    pub fn as_full_mut(&mut self) -> &mut [u8] {
        // SAFETY: the allocation is `capacity_bytes` long and initialised.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.capacity_bytes) }
    }

    /// Sets the length; the bytes up to it must already hold what should be written.
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.capacity_bytes,
            "AlignedBuf::set_len past capacity"
        );
        self.len = len;
    }

    /// Zeroes the bytes in use and resets the length to zero, ready for the next batch.
    pub fn clear(&mut self) {
        let len = self.len;
        self.as_full_mut()[..len].fill(0);
        self.len = 0;
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout =
            Layout::from_size_align(self.capacity_bytes, SECTOR_BYTES).expect("valid layout");
        // SAFETY: allocated in `new` with this exact layout.
        unsafe { dealloc(self.ptr.as_ptr(), layout) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("capacity", &self.capacity_bytes)
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        let mut b = AlignedBuf::new(100);
        assert_eq!(b.capacity(), SECTOR_BYTES);
        assert_eq!(b.as_ptr() as usize % SECTOR_BYTES, 0);
        assert!(b.as_full_mut().iter().all(|&x| x == 0));
        b.as_full_mut()[..3].copy_from_slice(b"abc");
        b.set_len(3);
        assert_eq!(b.as_slice(), b"abc");
        b.clear();
        assert!(b.is_empty());
        assert_eq!(b.as_full_mut()[0], 0);
    }
}
