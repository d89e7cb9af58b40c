//! Deterministic tokenizer training for CI: a BERT-style WordPiece and a LLaMA-style byte-level
//! BPE `tokenizer.json`, trained with the `tokenizers` trainers. Same texts → byte-identical
//! JSON (the trainers break count ties by token order, and serialisation orders by id).

use super::TokenizeError;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    Tokenizer, TokenizerBuilder, TokenizerImpl,
};

type Impl<M> =
    TokenizerImpl<M, NormalizerWrapper, PreTokenizerWrapper, PostProcessorWrapper, DecoderWrapper>;

fn err(e: impl std::fmt::Display) -> TokenizeError {
    TokenizeError::Train(e.to_string())
}

/// Trains a BERT-style WordPiece tokenizer (`[PAD]`=0, `[UNK]`, `[CLS]`, `[SEP]`, `[MASK]`;
/// lowercasing BertNormalizer, BertPreTokenizer, `[CLS] $A [SEP] $B:1 [SEP]:1` post-processor)
/// with at most `vocab_size` entries.
///
/// `tokenizers`' own `WordPieceTrainer` is not deterministic: it numbers the `##` pieces in
/// hash-map order and merge-count ties are broken by those numbers, so equal texts can give
/// different vocabularies. We therefore train its BPE core without the prefix (pieces numbered
/// by character, ties broken deterministically) and build the WordPiece vocabulary from the
/// learned pieces: each piece `t` in id order contributes `t` (word start) and `##t`
/// (continuation) until `vocab_size` is reached.
pub fn train_wordpiece(texts: &[&str], vocab_size: usize) -> Result<Tokenizer, TokenizeError> {
    let specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(0)
        .show_progress(false)
        .special_tokens(
            specials
                .iter()
                .map(|s| AddedToken::from(*s, true))
                .collect(),
        )
        .build();
    let mut bpe_tok: Impl<BPE> = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(Some(BertNormalizer::new(true, true, None, true).into()))
        .with_pre_tokenizer(Some(BertPreTokenizer.into()))
        .with_decoder(None)
        .build()
        .map_err(err)?;
    bpe_tok.train(&mut trainer, texts.iter()).map_err(err)?;
    let mut learned: Vec<(String, u32)> = bpe_tok.get_model().get_vocab().into_iter().collect();
    learned.sort_by_key(|(_, id)| *id);
    let mut vocab: Vec<String> = specials.iter().map(|s| s.to_string()).collect();
    let mut seen: std::collections::HashSet<String> = vocab.iter().cloned().collect();
    'fill: for (piece, _) in learned {
        for candidate in [piece.clone(), format!("##{piece}")] {
            if vocab.len() >= vocab_size {
                break 'fill;
            }
            if seen.insert(candidate.clone()) {
                vocab.push(candidate);
            }
        }
    }
    let map: tokenizers::models::bpe::Vocab = vocab
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, i as u32))
        .collect();
    let model = WordPiece::builder()
        .vocab(map)
        .unk_token("[UNK]".into())
        .continuing_subword_prefix("##".into())
        .build()
        .map_err(err)?;
    let mut tok: Impl<WordPiece> = TokenizerBuilder::new()
        .with_model(model)
        .with_normalizer(Some(BertNormalizer::new(true, true, None, true).into()))
        .with_pre_tokenizer(Some(BertPreTokenizer.into()))
        .with_decoder(Some(WordPieceDecoder::default().into()))
        .build()
        .map_err(err)?;
    tok.add_special_tokens(
        specials
            .iter()
            .map(|s| AddedToken::from(*s, true))
            .collect::<Vec<_>>(),
    )
    .map_err(err)?;
    let id = |t: &str| {
        tok.token_to_id(t)
            .ok_or_else(|| err(format!("trained vocabulary lacks {t}")))
    };
    let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
    let post = TemplateProcessing::builder()
        .try_single("[CLS] $A [SEP]")
        .map_err(err)?
        .try_pair("[CLS] $A [SEP] $B:1 [SEP]:1")
        .map_err(err)?
        .special_tokens(vec![("[CLS]", cls), ("[SEP]", sep)])
        .build()
        .map_err(err)?;
    tok.with_post_processor(Some(PostProcessorWrapper::from(post)));
    Ok(Tokenizer::from(tok))
}

/// Special tokens of a LLaMA-style tokenizer; `bos` is prepended to every encoding.
#[derive(Debug, Clone)]
pub struct BpeSpecials {
    pub bos: String,
    pub eos: String,
    pub pad: String,
    /// Further special tokens (chat markers such as `<|eot_id|>`).
    pub extra: Vec<String>,
}

impl Default for BpeSpecials {
    fn default() -> Self {
        Self {
            bos: "<s>".into(),
            eos: "</s>".into(),
            pad: "<pad>".into(),
            extra: Vec::new(),
        }
    }
}

/// Trains a byte-level BPE tokenizer like LLaMA-3's (GPT-2 byte alphabet, ByteLevel
/// pre-tokenizer without prefix space, BOS-prepending post-processor). Special tokens come first
/// (ids 0..), then the 256 byte symbols, then merges, up to `vocab_size`.
pub fn train_byte_level_bpe(
    texts: &[&str],
    vocab_size: usize,
    specials: &BpeSpecials,
) -> Result<Tokenizer, TokenizeError> {
    let mut names = vec![
        specials.bos.clone(),
        specials.eos.clone(),
        specials.pad.clone(),
    ];
    names.extend(specials.extra.iter().cloned());
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(0)
        .show_progress(false)
        .special_tokens(
            names
                .iter()
                .map(|s| AddedToken::from(s.clone(), true))
                .collect(),
        )
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tok: Impl<BPE> = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(None)
        .with_pre_tokenizer(Some(ByteLevel::new(false, true, true).into()))
        .with_decoder(Some(ByteLevelDecoder::default().into()))
        .build()
        .map_err(err)?;
    tok.train(&mut trainer, texts.iter()).map_err(err)?;
    let bos = tok
        .token_to_id(&specials.bos)
        .ok_or_else(|| err("trained vocabulary lacks the BOS token"))?;
    let post = TemplateProcessing::builder()
        .try_single(format!("{} $A", specials.bos))
        .map_err(err)?
        .try_pair(format!("{} $A {} $B:1", specials.bos, specials.bos))
        .map_err(err)?
        .special_tokens(vec![(specials.bos.clone(), bos)])
        .build()
        .map_err(err)?;
    tok.with_post_processor(Some(PostProcessorWrapper::from(post)));
    Ok(Tokenizer::from(tok))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXTS: &[&str] = &[
        "The quick brown fox jumps over the lazy dog.",
        "Le renard brun saute par-dessus le chien paresseux.",
        "El zorro marrón salta sobre el perro perezoso.",
        "The dog sleeps; the fox runs away quickly.",
    ];

    #[test]
    fn wordpiece_is_deterministic_and_bert_shaped() {
        let a = train_wordpiece(TEXTS, 120)
            .unwrap()
            .to_string(false)
            .unwrap();
        let b = train_wordpiece(TEXTS, 120)
            .unwrap()
            .to_string(false)
            .unwrap();
        assert_eq!(a, b);
        let tok = train_wordpiece(TEXTS, 120).unwrap();
        assert_eq!(tok.token_to_id("[PAD]"), Some(0));
        assert_eq!(tok.get_vocab_size(true), 120);
        // Continuation pieces exist and are used inside words.
        let enc = tok.encode("quickly", false).unwrap();
        assert!(
            enc.get_tokens().iter().skip(1).all(|t| t.starts_with("##")),
            "{:?}",
            enc.get_tokens()
        );
        assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), "quickly");
        let enc = tok.encode(("the fox", "le chien"), true).unwrap();
        let ids = enc.get_ids();
        assert_eq!(ids[0], tok.token_to_id("[CLS]").unwrap());
        assert_eq!(*ids.last().unwrap(), tok.token_to_id("[SEP]").unwrap());
        let types = enc.get_type_ids();
        assert_eq!(types[0], 0);
        assert_eq!(*types.last().unwrap(), 1);
    }

    #[test]
    fn bpe_is_deterministic_and_round_trips() {
        let specials = BpeSpecials::default();
        let a = train_byte_level_bpe(TEXTS, 300, &specials)
            .unwrap()
            .to_string(false)
            .unwrap();
        let b = train_byte_level_bpe(TEXTS, 300, &specials)
            .unwrap()
            .to_string(false)
            .unwrap();
        assert_eq!(a, b);
        let tok = train_byte_level_bpe(TEXTS, 300, &specials).unwrap();
        assert_eq!(tok.token_to_id("<s>"), Some(0));
        let text = "The lazy fox — ünïcode 狐";
        let enc = tok.encode(text, true).unwrap();
        assert_eq!(enc.get_ids()[0], 0);
        assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), text);
    }
}
