//! An allocator for the key index's table: allocations of 2 MiB and more get their own mapping,
//! aligned to 2 MiB and marked for transparent huge pages; smaller ones go to the global
//! allocator.
//!
//! Every replica looks up every written key, and over ~100,000 keys the table is tens of MB:
//! with 4 KiB pages nearly every lookup also missed the TLB and walked the page tables (in a VM,
//! a two-level walk). With 2 MiB pages the whole table fits in a few TLB entries. Only the
//! table is placed this way: it is allocated once per resize, so the page-fault cost of a huge
//! page (zeroing 2 MiB) is paid rarely, unlike the log's and the values' memory, which grows
//! steadily (all heap memory on huge pages doubled put p99 here: results/anatomy.md).
//! Where transparent huge pages are off (`never`) the advice is ignored and nothing changes.

use std::alloc::Layout;
use std::ptr::NonNull;

use allocator_api2::alloc::{AllocError, Allocator, Global};

const HUGE_PAGE: usize = 2 << 20;

#[derive(Clone, Copy, Debug, Default)]
pub struct HugePageAlloc;

fn mapped_len(layout: Layout) -> usize {
    layout.size().div_ceil(HUGE_PAGE) * HUGE_PAGE
}

// SAFETY: small layouts are the global allocator's; large ones are whole private mappings of
// at least `layout.size()` bytes aligned to 2 MiB (≥ any alignment a layout of that size asks
// for in practice; larger alignments go to the global allocator), unmapped with the same
// length they were mapped with (`mapped_len` of the same layout).
unsafe impl Allocator for HugePageAlloc {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        if layout.size() < HUGE_PAGE || layout.align() > HUGE_PAGE {
            return Global.allocate(layout);
        }
        let len = mapped_len(layout);
        // Map one huge page more than needed, then cut the ends off at 2 MiB boundaries.
        let over = len + HUGE_PAGE;
        // SAFETY: an anonymous private mapping; no existing memory is touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                over,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(AllocError);
        }
        let start = p as usize;
        let aligned = start.next_multiple_of(HUGE_PAGE);
        // SAFETY: both ranges lie inside the mapping just made and are not handed out.
        unsafe {
            if aligned > start {
                libc::munmap(p, aligned - start);
            }
            let tail = start + over - (aligned + len);
            if tail > 0 {
                libc::munmap((aligned + len) as *mut libc::c_void, tail);
            }
            // Advice only: refused (THP off, old kernel) it changes nothing.
            libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
        }
        let ptr = NonNull::new(aligned as *mut u8).ok_or(AllocError)?;
        Ok(NonNull::slice_from_raw_parts(ptr, layout.size()))
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if layout.size() < HUGE_PAGE || layout.align() > HUGE_PAGE {
            // SAFETY: the caller passes what `allocate` returned for this layout.
            unsafe { Global.deallocate(ptr, layout) };
            return;
        }
        // SAFETY: a mapping `allocate` made for this layout, of this length.
        unsafe {
            libc::munmap(ptr.as_ptr().cast(), mapped_len(layout));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_allocations_are_aligned_mappings_and_small_ones_are_not() {
        for size in [64, HUGE_PAGE - 1, HUGE_PAGE, 3 * HUGE_PAGE + 5] {
            let layout = Layout::from_size_align(size, 16).unwrap();
            let block = HugePageAlloc.allocate(layout).expect("allocates");
            let p = block.cast::<u8>();
            assert!(block.len() >= size);
            if size >= HUGE_PAGE {
                assert_eq!(p.as_ptr() as usize % HUGE_PAGE, 0, "{size}");
            }
            // The whole block is usable.
            // SAFETY: `block` is ours and `size` bytes long at least.
            unsafe {
                std::ptr::write_bytes(p.as_ptr(), 0xAB, size);
                assert_eq!(*p.as_ptr().add(size - 1), 0xAB);
                HugePageAlloc.deallocate(p, layout);
            }
        }
    }

    #[test]
    fn a_map_on_it_grows_past_huge_pages_and_keeps_its_entries() {
        let mut m: hashbrown::HashMap<u64, [u64; 4], hashbrown::DefaultHashBuilder, HugePageAlloc> =
            hashbrown::HashMap::with_hasher_in(Default::default(), HugePageAlloc);
        for i in 0..200_000u64 {
            m.insert(i, [i; 4]);
        }
        assert!((0..200_000u64).all(|i| m[&i] == [i; 4]));
        let c = m.clone();
        drop(m);
        assert_eq!(c.len(), 200_000);
    }
}
