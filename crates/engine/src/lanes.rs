//! Eight f32 lanes for the few kernels whose register tiles LLVM does not vectorise on its own
//! (it kept [`crate::matmul::skinny_nt`]'s accumulators in memory: 1 GFMA/s). On x86-64 with AVX2
//! and FMA (the workspace's target CPU) the lanes are one `__m256`; elsewhere an array that the
//! kernels use the same way.

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
mod imp {
    use std::arch::x86_64::*;

    #[derive(Clone, Copy)]
    pub struct F8(__m256);

    // The intrinsics are safe to call where the target features are enabled (Rust 1.87+); the
    // `unsafe` blocks serve older compilers.
    #[allow(unused_unsafe)]
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

        #[inline(always)]
        pub fn add(self, a: F8) -> Self {
            F8(unsafe { _mm256_add_ps(self.0, a.0) })
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

        pub fn add(self, a: F8) -> Self {
            F8(std::array::from_fn(|l| self.0[l] + a.0[l]))
        }

        /// The sum of the lanes, as `((0 + 4) + (1 + 5)) + ((2 + 6) + (3 + 7))`.
        pub fn sum(self) -> f32 {
            let a = self.0;
            ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))
        }
    }
}

pub use imp::F8;
