//! Eight f32 lanes for the few kernels whose register tiles LLVM does not vectorise on its own
//! (it kept [`crate::matmul::skinny_nt`]'s accumulators in memory: 1 GFMA/s). On x86-64 with AVX2
//! and FMA (the workspace's target CPU) the lanes are one `__m256`; elsewhere an array that the
//! kernels use the same way.

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
mod imp {
    use std::arch::x86_64::*;

    #[derive(Clone, Copy)]
    pub struct F8(__m256);

    // Even the intrinsics without pointers need `unsafe` here: the build enables AVX2 and FMA,
    // but a safe call needs `#[target_feature]` on the caller, which `#[inline(always)]` excludes.
    impl F8 {
        #[inline(always)]
        pub fn zero() -> Self {
            F8(unsafe { _mm256_setzero_ps() })
        }

        #[inline(always)]
        pub fn splat(x: f32) -> Self {
            F8(unsafe { _mm256_set1_ps(x) })
        }

        /// # Safety
        /// `x..x + 8` must be readable.
        #[inline(always)]
        pub unsafe fn load(x: *const f32) -> Self {
            F8(unsafe { _mm256_loadu_ps(x) })
        }

        /// # Safety
        /// `x..x + 8` must be writable.
        #[inline(always)]
        pub unsafe fn store(self, x: *mut f32) {
            unsafe { _mm256_storeu_ps(x, self.0) }
        }

        /// `self + a * b`, lane by lane.
        #[inline(always)]
        pub fn mul_add(self, a: F8, b: F8) -> Self {
            F8(unsafe { _mm256_fmadd_ps(a.0, b.0, self.0) })
        }

        /// The lane sums of eight vectors, as one vector: lane `i` is the sum of `a[i]`, added as
        /// `((0 + 1) + (2 + 3)) + ((4 + 5) + (6 + 7))`. A transpose of adds: far fewer
        /// instructions than eight separate [`F8::sum`]s.
        #[inline(always)]
        pub fn sums(a: [F8; 8]) -> Self {
            unsafe {
                let t0 = _mm256_hadd_ps(a[0].0, a[1].0);
                let t1 = _mm256_hadd_ps(a[2].0, a[3].0);
                let t2 = _mm256_hadd_ps(a[4].0, a[5].0);
                let t3 = _mm256_hadd_ps(a[6].0, a[7].0);
                // Lanes 0-3 hold the sums of lanes 0-3 of a[0..4], lanes 4-7 those of lanes 4-7.
                let (u0, u1) = (_mm256_hadd_ps(t0, t1), _mm256_hadd_ps(t2, t3));
                let low = _mm256_permute2f128_ps::<0x20>(u0, u1);
                let high = _mm256_permute2f128_ps::<0x31>(u0, u1);
                F8(_mm256_add_ps(low, high))
            }
        }

        /// Asks for the cache lines of `x` to be brought into L1 (a hint: never faults).
        #[inline(always)]
        pub fn prefetch(x: &[f32]) {
            for line in x.chunks(16) {
                // SAFETY: a prefetch reads nothing architecturally; the address is in bounds.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
            }
        }

        /// The sum of the lanes, as `((0 + 4) + (1 + 5)) + ((2 + 6) + (3 + 7))`.
        #[inline(always)]
        pub fn sum(self) -> f32 {
            unsafe {
                let quad = _mm_add_ps(_mm256_castps256_ps128(self.0), _mm256_extractf128_ps(self.0, 1));
                let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
                _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)))
            }
        }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
mod imp {
    #[derive(Clone, Copy)]
    pub struct F8([f32; 8]);

    impl F8 {
        pub fn zero() -> Self {
            F8([0.0; 8])
        }

        pub fn splat(x: f32) -> Self {
            F8([x; 8])
        }

        /// # Safety
        /// `x..x + 8` must be readable.
        pub unsafe fn load(x: *const f32) -> Self {
            F8(std::array::from_fn(|l| unsafe { *x.add(l) }))
        }

        /// # Safety
        /// `x..x + 8` must be writable.
        pub unsafe fn store(self, x: *mut f32) {
            for (l, v) in self.0.into_iter().enumerate() {
                unsafe { *x.add(l) = v };
            }
        }

        pub fn mul_add(self, a: F8, b: F8) -> Self {
            F8(std::array::from_fn(|l| a.0[l].mul_add(b.0[l], self.0[l])))
        }

        /// The lane sums of eight vectors, as one vector, added as the x86 version adds them.
        pub fn sums(a: [F8; 8]) -> Self {
            F8(std::array::from_fn(|i| {
                let x = a[i].0;
                ((x[0] + x[1]) + (x[2] + x[3])) + ((x[4] + x[5]) + (x[6] + x[7]))
            }))
        }

        /// A cache hint where there is one; here, nothing.
        pub fn prefetch(_x: &[f32]) {}

        /// The sum of the lanes, as `((0 + 4) + (1 + 5)) + ((2 + 6) + (3 + 7))`.
        pub fn sum(self) -> f32 {
            let a = self.0;
            ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))
        }
    }
}

pub use imp::F8;
