//! What a saved model is used for: validation loss and perplexity, and streamed text.

mod common;

use common::{config, data, train};
use truthgpt_data::TokenStream;
use truthgpt_engine::close::assert_close;
use truthgpt_model::{FinishReason, Mode, Sampling};
use truthgpt_train::{evaluate, load_model, Request, SavedModel, TextStream};

/// A model trained for the config's 8 steps, as `generate` and `eval` load it.
fn trained() -> SavedModel {
    let config = config();
    let run = tempfile::tempdir().unwrap();
    train(&config, &data(&config), run.path(), None);
    load_model(run.path()).unwrap()
}

#[test]
fn evaluation_is_the_mean_loss_per_token_and_its_perplexity() {
    let config = config();
    let data = data(&config);
    let mut saved = trained();
    let (seq, val) = (config.train.seq_len, &data.dataset.val);

    let evaluation = evaluate(&mut saved.model, val, seq, 4, 6).unwrap();
    assert_eq!(evaluation.tokens, 6 * seq as u64);
    assert!(evaluation.loss.is_finite() && evaluation.loss > 0.0, "{evaluation:?}");
    assert_close("perplexity", &[evaluation.perplexity()], &[evaluation.loss.exp()], 1e-12);
    // The batch size changes the shapes, not the windows or their mean.
    let one_at_a_time = evaluate(&mut saved.model, val, seq, 1, 6).unwrap();
    assert_eq!(one_at_a_time.tokens, evaluation.tokens);
    assert_close("loss by batch size", &[one_at_a_time.loss], &[evaluation.loss], 1e-5);

    // One window is the model's own loss on it.
    let mut window = vec![0u32; seq + 1];
    val.copy_to(0, &mut window);
    let single = evaluate(&mut saved.model, &TokenStream::from_tokens(window.clone()), seq, 4, 6).unwrap();
    assert_eq!(single.tokens, seq as u64);
    saved.model.forward(&window[..seq], 1, seq, Mode::Eval).unwrap();
    let direct = saved.model.loss(&window[1..]).unwrap();
    assert_close("one window", &[single.loss], &[direct as f64], 1e-6);

    // A stream shorter than a window is measured in one shorter window.
    let short =
        evaluate(&mut saved.model, &TokenStream::from_tokens(window[..5].to_vec()), seq, 4, 6).unwrap();
    assert_eq!(short.tokens, 4);
    assert!(short.loss.is_finite(), "{short:?}");
}

#[test]
fn evaluation_refuses_input_it_cannot_measure() {
    let mut saved = trained();
    let err = evaluate(&mut saved.model, &TokenStream::from_tokens(vec![1]), 16, 4, 6).unwrap_err();
    assert!(err.to_string().contains("validation split has 1 tokens"), "{err}");
    // Issue 16: zero windows measured nothing and reported a NaN loss as if it were one.
    let err = evaluate(&mut saved.model, &TokenStream::from_tokens(vec![1; 100]), 16, 4, 0).unwrap_err();
    assert!(err.to_string().contains("max_windows"), "{err}");
}

fn request(max_tokens: usize, stop: &[&str]) -> Request {
    Request {
        prompt: "The fox".into(),
        max_tokens,
        sampling: Sampling::greedy(),
        stop: stop.iter().map(|s| s.to_string()).collect(),
    }
}

/// The streamed pieces, joined, and why the stream ended.
fn generate(saved: &mut SavedModel, request: &Request) -> (String, usize, Option<FinishReason>) {
    let tokenizer = saved.tokenizer.as_ref().unwrap();
    let mut stream = TextStream::new(&mut saved.model, tokenizer, request).unwrap();
    let text = stream.by_ref().collect::<Result<String, _>>().unwrap();
    (text, stream.completion_tokens(), stream.finish_reason())
}

#[test]
fn text_streams_until_the_limit_or_before_a_stop_string() {
    let mut saved = trained();
    let prompt_tokens = saved.tokenizer().unwrap().encode("The fox").unwrap().len();
    let (text, tokens, finish) = generate(&mut saved, &request(10, &[]));
    assert_eq!((tokens, finish), (10, Some(FinishReason::Length)), "{text:?}");
    assert!(text.chars().count() >= 2, "{text:?}");
    assert_eq!(generate(&mut saved, &request(10, &[])).0, text, "greedy decoding is deterministic");
    let tokenizer = saved.tokenizer.as_ref().unwrap();
    let stream = TextStream::new(&mut saved.model, tokenizer, &request(10, &[])).unwrap();
    assert_eq!(stream.prompt_tokens(), prompt_tokens);

    // A stop string from the middle of that text ends the stream before its first occurrence.
    let stop: String = text.chars().skip(text.chars().count() / 2).take(2).collect();
    let (cut, _, finish) = generate(&mut saved, &request(10, &[&stop]));
    assert_eq!(cut, text[..text.find(&stop).unwrap()]);
    assert_eq!(finish, Some(FinishReason::Stop));

    // The context (max_seq_len 32) ends a stream asked for more.
    let (_, tokens, finish) = generate(&mut saved, &request(1000, &[]));
    assert_eq!((tokens, finish), (32 - prompt_tokens, Some(FinishReason::Length)));
}

#[test]
fn text_requests_are_checked_before_any_work() {
    let mut saved = trained();
    let tokenizer = saved.tokenizer.as_ref().unwrap();
    let long = Request { prompt: "The fox jumps over the lazy dog ".repeat(20), ..request(4, &[]) };
    let err = TextStream::new(&mut saved.model, tokenizer, &long).err().unwrap().to_string();
    assert!(err.contains("starting generation") && err.contains("prompt"), "{err}");
    let bad = Request { sampling: Sampling { top_p: 0.0, ..Sampling::default() }, ..request(4, &[]) };
    let err = TextStream::new(&mut saved.model, tokenizer, &bad).err().unwrap().to_string();
    assert!(err.contains("top_p"), "{err}");
}
