//! Large buffers. A 500 MB parameter buffer in 4 KiB pages costs 120K page faults on first
//! touch, and as many TLB entries while it is used; in 2 MiB pages, 250.

/// A zeroed buffer of `len` floats whose pages (beyond a few MiB) the kernel backs with
/// transparent huge pages where it offers them (`madvise` mode, as most distributions ship).
pub fn zeroed(len: usize) -> Vec<f32> {
    let buffer = vec![0.0f32; len];
    advise_huge_pages(&buffer);
    buffer
}

#[cfg(target_os = "linux")]
fn advise_huge_pages(buffer: &[f32]) {
    const HUGE: usize = 2 << 20;
    let (begin, end) = (buffer.as_ptr() as usize, buffer.as_ptr() as usize + std::mem::size_of_val(buffer));
    // Only whole huge pages inside the allocation.
    let (start, stop) = (begin.next_multiple_of(HUGE), end / HUGE * HUGE);
    if stop > start {
        // SAFETY: the range lies inside `buffer`'s allocation; MADV_HUGEPAGE changes how pages are
        // backed, never their contents. Failure (no THP support) leaves ordinary pages.
        unsafe { libc::madvise(start as *mut libc::c_void, stop - start, libc::MADV_HUGEPAGE) };
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_buffer: &[f32]) {}

#[cfg(test)]
mod tests {
    #[test]
    fn zeroed_is_zero_and_writable() {
        for len in [0, 1, 1000, 3 << 20] {
            let mut buffer = super::zeroed(len);
            assert_eq!(buffer.len(), len);
            assert!(buffer.iter().all(|&x| x == 0.0));
            buffer.iter_mut().for_each(|x| *x = 1.0);
            assert_eq!(buffer.iter().sum::<f32>(), len as f32);
        }
    }
}
