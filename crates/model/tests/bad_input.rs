//! Token ids and shapes from outside (tokenizers, HTTP bodies) get an error, never a panic.

use proptest::prelude::*;
use truthgpt_config::Config;
use truthgpt_model::{Mode, Model, ModelError};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_tokens_and_shape_give_logits_or_an_error(
        tokens in prop::collection::vec(0u32..300, 0..200),
        b in 0usize..4,
        t in 0usize..100,
    ) {
        let config = Config::preset("tiny").unwrap();
        let mut model = Model::new(&config.model, 0);
        match model.forward(&tokens, b, t, Mode::Eval) {
            Ok(logits) => {
                prop_assert_eq!(logits.len(), b * t * 256);
                prop_assert!(tokens.iter().all(|&id| id < 256) && t <= 64 && tokens.len() == b * t && b * t > 0);
            }
            Err(ModelError::EmptyBatch { .. }) => prop_assert_eq!(b * t, 0),
            Err(ModelError::TokenOutOfRange { id, .. }) => prop_assert!(id >= 256),
            Err(ModelError::SequenceTooLong { t: got, max }) => prop_assert!(got > max),
            Err(ModelError::BatchShape { expected, got, .. }) => prop_assert_ne!(expected, got),
            Err(other) => prop_assert!(false, "unexpected error {}", other),
        }
    }
}

#[test]
fn backward_before_forward_is_an_error() {
    let config = Config::preset("tiny").unwrap();
    let mut model = Model::new(&config.model, 0);
    assert!(matches!(model.backward(1.0), Err(ModelError::NoForward)));
    assert!(matches!(model.loss(&[1, 2]), Err(ModelError::NoForward)));
}

#[test]
fn targets_are_checked_like_tokens() {
    let config = Config::preset("tiny").unwrap();
    let mut model = Model::new(&config.model, 0);
    model.forward(&[1, 2, 3, 4], 1, 4, Mode::Eval).unwrap();
    let err = model.loss_and_grad(&[1, 2, 3, 999], 1.0).unwrap_err();
    assert!(err.to_string().contains("token id 999 at position 3"), "{err}");
    assert!(matches!(model.loss_and_grad(&[1, 2], 1.0), Err(ModelError::BatchShape { .. })));
}
