"""Tiny randomly initialised encoders of the common architectures, each with a tokenizer of its own kind trained
here on the synthetic corpus (no download): WordPiece for BERT, DistilBERT and ELECTRA, byte-level BPE for RoBERTa
and ModernBERT, Unigram (SentencePiece's model) for XLM-RoBERTa and DeBERTa-v3."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.conftest import COMMON_WORDS, synthetic_rows

ARCHITECTURES = ("bert", "distilbert", "roberta", "xlm-roberta", "deberta-v2", "electra", "modernbert")
"""The `model_type` of each tiny encoder, in the support matrix's order."""
WIDTH, LAYERS, HEADS, FFN, POSITIONS = 32, 2, 2, 64, 128


def corpus() -> Iterator[str]:
    """What the tokenizers are trained on: the synthetic sets' sentences and the common words."""
    for num_labels, seed in ((2, 11), (4, 12)):
        for text, _ in synthetic_rows(400, num_labels, seed):
            yield text
    words = COMMON_WORDS.split()
    for start in range(0, len(words), 12):
        yield " ".join(words[start : start + 12])


def _wordpiece() -> Any:
    from tests.conftest import bert_template, tiny_tokenizer

    tok = tiny_tokenizer()
    tok.post_processor = bert_template(tok)
    return tok


def _bpe(bos: str, eos: str, specials: list[str]) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus(), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, tok.token_to_id(bos)), (eos, tok.token_to_id(eos))],
    )
    return tok


def _unigram(specials: list[str], bos: str, eos: str, *, pair: str) -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=500, special_tokens=specials, unk_token="<unk>" if "<unk>" in specials else "[UNK]"
    )
    tok.train_from_iterator(corpus(), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=pair,
        special_tokens=[(bos, tok.token_to_id(bos)), (eos, tok.token_to_id(eos))],
    )
    return tok


_SHAPE = {"hidden_size": WIDTH, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "intermediate_size": FFN}
_BERT_TOKENS = {
    "unk_token": "[UNK]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}
_ROBERTA_TOKENS = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "sep_token": "</s>",
    "cls_token": "<s>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
    "mask_token": "<mask>",
}
_ROBERTA_IDS = {"pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}
"""The special tokens' ids in the order `_bpe` and `_unigram` are given them: <s>, <pad>, </s>, <unk>, <mask>."""


# long: one branch per architecture, each a config and a tokenizer, kept side by side to compare
def tiny_encoder(arch: str, out: Path) -> Path:
    """A tiny `arch` encoder (base model, no head) and its fast tokenizer, saved as a Hugging Face folder."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    positions = {"max_position_embeddings": POSITIONS}
    window = {"model_max_length": POSITIONS}
    roberta_specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    if arch in ("bert", "distilbert", "electra"):
        tok = _wordpiece()
        fast = {
            "bert": tf.BertTokenizerFast,
            "distilbert": tf.DistilBertTokenizerFast,
            "electra": tf.ElectraTokenizerFast,
        }
        tokenizer = fast[arch](tokenizer_object=tok, **_BERT_TOKENS, **window)
        vocab = {"vocab_size": tok.get_vocab_size()}
        if arch == "bert":
            model = tf.BertModel(tf.BertConfig(**vocab, **_SHAPE, **positions))
        elif arch == "distilbert":
            config = tf.DistilBertConfig(
                **vocab, dim=WIDTH, n_layers=LAYERS, n_heads=HEADS, hidden_dim=FFN, **positions
            )
            model = tf.DistilBertModel(config)
        else:
            model = tf.ElectraModel(tf.ElectraConfig(**vocab, embedding_size=WIDTH, **_SHAPE, **positions))
    elif arch in ("roberta", "modernbert"):
        tok = _bpe("<s>", "</s>", roberta_specials)
        vocab = {"vocab_size": tok.get_vocab_size()}
        if arch == "roberta":
            tokenizer = tf.RobertaTokenizerFast(tokenizer_object=tok, **_ROBERTA_TOKENS, **window)
            config = tf.RobertaConfig(**vocab, **_SHAPE, max_position_embeddings=POSITIONS + 2, **_ROBERTA_IDS)
            model = tf.RobertaModel(config)
        else:
            tokenizer = tf.PreTrainedTokenizerFast(tokenizer_object=tok, **_ROBERTA_TOKENS, **window)
            config = tf.ModernBertConfig(
                **vocab,
                **_SHAPE,
                **_ROBERTA_IDS,
                cls_token_id=0,
                sep_token_id=2,
                global_attn_every_n_layers=2,
                local_attention=16,
                **positions,
            )
            model = tf.ModernBertModel(config)
    elif arch == "xlm-roberta":
        tok = _unigram(roberta_specials, "<s>", "</s>", pair="<s> $A </s> </s> $B </s>")
        tokenizer = tf.XLMRobertaTokenizerFast(tokenizer_object=tok, **_ROBERTA_TOKENS, **window)
        config = tf.XLMRobertaConfig(
            vocab_size=tok.get_vocab_size(), **_SHAPE, max_position_embeddings=POSITIONS + 2, **_ROBERTA_IDS
        )
        model = tf.XLMRobertaModel(config)
    elif arch == "deberta-v2":
        specials = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
        tok = _unigram(specials, "[CLS]", "[SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1")
        tokenizer = tf.DebertaV2TokenizerFast(
            tokenizer_object=tok, bos_token="[CLS]", eos_token="[SEP]", **_BERT_TOKENS, **window
        )
        config = tf.DebertaV2Config(
            vocab_size=tok.get_vocab_size(),
            **_SHAPE,
            pad_token_id=0,
            relative_attention=True,
            position_biased_input=False,
            pos_att_type=["p2c", "c2p"],
            max_relative_positions=-1,
            position_buckets=16,
            norm_rel_ebd="layer_norm",
            share_att_key=True,
            **positions,
        )
        model = tf.DebertaV2Model(config)
    else:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
