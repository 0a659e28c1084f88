"""A BERT WordPiece tokenizer with a Chinese character vocabulary, built offline.

bert-base-chinese's vocab cannot be downloaded here, so small models made by this project (the
bundled default, test and benchmark models) use this one: the BERT special tokens, ASCII and
full-width letters, digits and punctuation (plus their `##` continuations), common CJK
punctuation and every CJK Unified Ideograph (U+4E00-U+9FFF). It tokenizes like
bert-base-chinese: one token a Chinese character, WordPiece for the rest; 21,209 entries, close
to MGeo's 21,128.
"""

from __future__ import annotations

import string
from pathlib import Path

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_CJK_PUNCT = "，。、；：？！（）《》〈〉【】「」『』“”‘’·—…－～￥％＃＠＆＊＋／"


def char_vocab() -> list[str]:
    ascii_words = string.digits + string.ascii_lowercase
    fullwidth = "".join(chr(c) for c in range(0xFF10, 0xFF1A)) + "".join(
        chr(c) for c in range(0xFF41, 0xFF5B))
    vocab = list(SPECIALS)
    vocab += [c for c in string.punctuation]
    vocab += list(ascii_words) + ["##" + c for c in ascii_words]
    vocab += list(fullwidth) + ["##" + c for c in fullwidth]
    vocab += [c for c in _CJK_PUNCT if c not in vocab]
    vocab += [chr(c) for c in range(0x4E00, 0xA000)]
    return vocab


def build_char_tokenizer(out_dir: str | Path, max_length: int = 128):
    """Write the tokenizer files into `out_dir` and return the loaded fast tokenizer."""
    import json

    from transformers import AutoTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("\n".join(char_vocab()) + "\n", encoding="utf-8")
    # A vocab.txt and this config load the same way in transformers 4.x and 5.x.
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "BertTokenizer", "do_lower_case": True,
        "tokenize_chinese_chars": True, "model_max_length": max_length,
    }), encoding="utf-8")
    tok = AutoTokenizer.from_pretrained(str(out))
    tok.save_pretrained(str(out))
    return tok


def char_bert(out_dir: str | Path, *, layers: int, hidden: int, heads: int,
              intermediate: int | None = None, labels=None, dropout: float = 0.1,
              max_length: int = 128, max_position: int = 512):
    """(tokenizer, config) of a fresh BERT sequence classifier over the character vocabulary:
    the tokenizer files are written into `out_dir`. What `mgeo train` starts from and what the
    tests' and benchmarks' random models are."""
    from transformers import BertConfig

    from mgeo.wire import MGEO_LABELS

    labels = list(labels or MGEO_LABELS)
    if hidden % heads:
        raise ValueError(f"--hidden {hidden} must be a multiple of --heads {heads}")
    tokenizer = build_char_tokenizer(out_dir, max_length=max_length)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, intermediate_size=intermediate or 4 * hidden,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
        max_position_embeddings=max_position, type_vocab_size=2, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={lab: i for i, lab in enumerate(labels)},
        pad_token_id=tokenizer.pad_token_id)
    return tokenizer, config
