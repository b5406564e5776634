//! Token (and learned or fixed position) embedding lookup.

/// `out (N, C) = wte[tokens[n]] (+ positions[n % T])`. Token ids must be checked by the caller.
pub fn forward(out: &mut [f32], tokens: &[u32], wte: &[f32], positions: Option<&[f32]>, t: usize, c: usize) {
    for (n, (row, &tok)) in out.chunks_exact_mut(c).zip(tokens).enumerate() {
        let tok = tok as usize;
        row.copy_from_slice(&wte[tok * c..(tok + 1) * c]);
        if let Some(pos) = positions {
            let p = n % t;
            for (o, w) in row.iter_mut().zip(&pos[p * c..(p + 1) * c]) {
                *o += w;
            }
        }
    }
}

/// Backward of [`forward`]: `dwte[tokens[n]] += dout[n]`, `dpositions[n % T] += dout[n]`.
pub fn backward(
    dwte: &mut [f32],
    dpositions: Option<&mut [f32]>,
    dout: &[f32],
    tokens: &[u32],
    t: usize,
    c: usize,
) {
    for (row, &tok) in dout.chunks_exact(c).zip(tokens) {
        let tok = tok as usize;
        for (d, g) in dwte[tok * c..(tok + 1) * c].iter_mut().zip(row) {
            *d += g;
        }
    }
    if let Some(dpos) = dpositions {
        for (n, row) in dout.chunks_exact(c).enumerate() {
            let p = n % t;
            for (d, g) in dpos[p * c..(p + 1) * c].iter_mut().zip(row) {
                *d += g;
            }
        }
    }
}

/// The fixed sinusoidal table (Vaswani et al. 2017), (T, C): `sin(p / 10000^(2i/C))` in even
/// channels and `cos` in odd ones.
pub fn sinusoidal_table(out: &mut [f32], t: usize, c: usize) {
    for p in 0..t {
        for i in 0..c / 2 {
            let angle = p as f64 / 10_000f64.powf(2.0 * i as f64 / c as f64);
            out[p * c + 2 * i] = angle.sin() as f32;
            out[p * c + 2 * i + 1] = angle.cos() as f32;
        }
    }
}
