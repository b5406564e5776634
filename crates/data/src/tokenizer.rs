//! Tokenizers through the `tokenizers` crate: any `tokenizer.json` loads, and [`Tokenizer::train_bpe`]
//! fits a GPT-2-style byte-level BPE (every byte is in the base alphabet, so any text encodes).

use std::path::Path;

use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{
    AddedToken, DecodeStream, DecoderWrapper, ModelWrapper, NormalizerWrapper, PostProcessorWrapper,
    PreTokenizerWrapper, TokenizerBuilder,
};

use crate::{corpus, fsio, DataError};

/// The end-of-text token of tokenizers trained here (GPT-2's name for it).
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// Other names of the end-of-sequence token in tokenizers people bring.
const EOS_NAMES: &[&str] = &[END_OF_TEXT, "</s>", "<eos>", "<|end_of_text|>"];

/// Tokenizer training reads at most this much text: merges stabilise long before.
const MAX_TRAINING_BYTES: u64 = 256 << 20;

#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    eos: Option<u32>,
    /// Largest id plus one: a tokenizer.json may leave gaps in its ids, so this can exceed the
    /// token count, and it is what an embedding table must cover.
    vocab_size: usize,
}

/// Turns generated ids into text as they arrive; see [`Tokenizer::text_decoder`].
pub struct TextDecoder<'a> {
    stream: DecodeStream<
        'a,
        ModelWrapper,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >,
}

impl TextDecoder<'_> {
    /// The text completed by `id`, if any: a byte-level token can end mid-character, and then its
    /// text comes with a later token.
    pub fn push(&mut self, id: u32) -> Result<Option<String>, DataError> {
        self.stream.step(id).map_err(|e| tokenizer_error("decoder", e))
    }
}

fn tokenizer_error(source_name: &str, e: impl std::fmt::Display) -> DataError {
    DataError::Tokenizer { source_name: source_name.into(), problem: e.to_string() }
}

impl Tokenizer {
    /// Smallest vocabulary a byte-level BPE can have: the 256 bytes and the end-of-text token.
    pub const MIN_BPE_VOCAB: usize = 257;

    /// Fits a byte-level BPE of `vocab_size` tokens (end-of-text included) on the documents
    /// under `path` (see [`corpus`]), reading at most the first 256 MiB of text.
    pub fn train_bpe(path: &Path, jsonl_field: &str, vocab_size: usize) -> Result<Self, DataError> {
        let mut texts = Vec::new();
        let mut bytes = 0u64;
        corpus::for_each_document(path, jsonl_field, |doc| {
            if bytes < MAX_TRAINING_BYTES {
                bytes += doc.len() as u64;
                texts.push(doc.to_string());
            }
            Ok(())
        })?;
        Self::train(texts.iter().map(String::as_str), vocab_size)
    }

    /// As [`Tokenizer::train_bpe`], on texts in memory.
    pub fn train_bpe_from_texts(texts: &[&str], vocab_size: usize) -> Result<Self, DataError> {
        Self::train(texts.iter().copied(), vocab_size)
    }

    fn train<'t>(texts: impl Iterator<Item = &'t str> + Send, vocab_size: usize) -> Result<Self, DataError> {
        if vocab_size < Self::MIN_BPE_VOCAB {
            return Err(DataError::VocabTooSmall { vocab_size, min: Self::MIN_BPE_VOCAB });
        }
        let mut trainer = BpeTrainerBuilder::new()
            .show_progress(false)
            .vocab_size(vocab_size)
            .min_frequency(2)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .special_tokens(vec![AddedToken::from(END_OF_TEXT, true)])
            .build();
        // GPT-2's byte-level scheme, without a space prepended to the text.
        let byte_level = ByteLevel::new(false, true, true);
        let mut builder = TokenizerBuilder::<
            BPE,
            NormalizerWrapper,
            PreTokenizerWrapper,
            PostProcessorWrapper,
            DecoderWrapper,
        >::new()
        .with_model(BPE::default())
        .with_normalizer(None)
        .with_pre_tokenizer(Some(byte_level.into()))
        .with_post_processor(None)
        .with_decoder(Some(byte_level.into()))
        .build()
        .map_err(|e| tokenizer_error("training", e))?;
        builder.train(&mut trainer, texts).map_err(|e| tokenizer_error("training", e))?;
        let json = builder.to_string(false).map_err(|e| tokenizer_error("training", e))?;
        Self::from_json(&json)
    }

    pub fn from_file(path: &Path) -> Result<Self, DataError> {
        let json = std::fs::read_to_string(path).map_err(DataError::io(path))?;
        Self::parse(&json, &path.display().to_string())
    }

    pub fn from_json(json: &str) -> Result<Self, DataError> {
        Self::parse(json, "tokenizer.json")
    }

    fn parse(json: &str, source_name: &str) -> Result<Self, DataError> {
        let inner: tokenizers::Tokenizer = json.parse().map_err(|e| tokenizer_error(source_name, e))?;
        let eos = EOS_NAMES.iter().find_map(|name| inner.token_to_id(name));
        let vocab_size = inner.get_vocab(true).values().max().map_or(0, |&id| id as usize + 1);
        Ok(Tokenizer { inner, eos, vocab_size })
    }

    pub fn to_json(&self) -> String {
        self.inner.to_string(false).expect("a loaded tokenizer serialises")
    }

    pub fn save(&self, path: &Path) -> Result<(), DataError> {
        fsio::write_atomic(path, self.to_json().as_bytes()).map_err(DataError::io(path))
    }

    /// Number of ids (the largest id plus one), added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The end-of-text (end-of-sequence) id, if the vocabulary has one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// The end-of-sequence token's text.
    pub fn eos_token(&self) -> Option<String> {
        self.inner.id_to_token(self.eos?)
    }

    /// Makes `token` the end-of-sequence token, as a model's `tokenizer_config.json` names it.
    pub fn set_eos_token(&mut self, token: &str) -> Result<(), DataError> {
        let id = self
            .inner
            .token_to_id(token)
            .ok_or_else(|| tokenizer_error("tokenizer.json", format!("has no token `{token}`")))?;
        self.eos = Some(id);
        Ok(())
    }

    /// The same tokenizer without its word cache (BPE and Unigram keep up to 10,000 words).
    /// For very large texts: their words would fill the cache in one go, scattered across the
    /// heap among the encoding's scratch, and pin those pages after the scratch is freed (a
    /// 1 MiB prompt left the server 36 MB larger). The ids are the same.
    pub fn without_cache(&self) -> Tokenizer {
        let mut tokenizer = self.clone();
        let mut model = tokenizer.inner.get_model().clone();
        model.resize_cache(0);
        tokenizer.inner.with_model(model);
        tokenizer
    }

    /// Ids of `text`, without special tokens added around it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        // encode_fast skips the offsets, which nothing here reads.
        let encoding = self.inner.encode_fast(text, false).map_err(|e| tokenizer_error("encode", e))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`, skipping special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String, DataError> {
        self.inner.decode(ids, true).map_err(|e| tokenizer_error("decode", e))
    }

    pub fn text_decoder(&self) -> TextDecoder<'_> {
        TextDecoder { stream: self.inner.decode_stream(true) }
    }

    /// Every id this tokenizer produces must be a row of the model's embedding.
    pub fn check_fits(&self, model_vocab: usize) -> Result<(), DataError> {
        if self.vocab_size() > model_vocab {
            return Err(DataError::TokenizerTooLarge { tokenizer: self.vocab_size(), model: model_vocab });
        }
        Ok(())
    }
}
