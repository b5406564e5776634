use truthgpt_data::sampler::{eval_windows, WindowSampler};
use truthgpt_data::TokenStream;

#[test]
fn batches_hold_windows_and_their_shifted_targets() {
    // Each token is its own position, so a row shows which window it came from.
    let stream = TokenStream::from_tokens((0..1000).collect());
    let (b, t) = (4, 8);
    let mut sampler = WindowSampler::new(stream.len(), t, 11).unwrap();
    let (mut tokens, mut targets) = (vec![0; b * t], vec![0; b * t]);
    for step in 0..50u64 {
        sampler.fill_batch(&stream, step * b as u64, b, &mut tokens, &mut targets);
        for row in 0..b {
            let start = sampler.window_start(step * b as u64 + row as u64) as u32;
            let expected: Vec<u32> = (start..start + t as u32).collect();
            assert_eq!(tokens[row * t..(row + 1) * t], expected);
            assert_eq!(targets[row * t..(row + 1) * t], expected.iter().map(|x| x + 1).collect::<Vec<_>>());
        }
    }
}

#[test]
fn eval_windows_spread_over_the_stream() {
    let starts = eval_windows(10_001, 100, 10);
    assert_eq!(starts, (0..10).map(|i| i * 1000).collect::<Vec<_>>());
    assert_eq!(eval_windows(10_001, 100, 1000).len(), 100);
    assert!(eval_windows(100, 100, 10).is_empty());
}
