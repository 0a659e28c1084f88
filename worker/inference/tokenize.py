"""MGeo's model inputs for many pairs at once, equal to the `transformers` call, at a fraction of
its cost.

The model expects what `tokenizer(addr1, addr2, truncation=True, max_length=L)` gives:
`[CLS] a [SEP] b [SEP]`, token type ids 0 then 1, truncation "longest first". Calling that per
batch spends most of its time outside tokenization proper: BERT's Rust pipeline tracks offsets
and alignments for every character (about 40 µs of CPU a Chinese pair), and the wrapper turns
the encodings into padded tensors in Python. Here:

- each distinct address of a batch is encoded once (ETL sends one query against many
  candidates);
- a BERT WordPiece tokenizer (BertNormalizer + BertPreTokenizer + WordPiece, MGeo's) is run as
  the table it amounts to. Every character is classified once, by asking the tokenizer's own
  normalizer and pre-tokenizer about it: a word character, a piece of its own (a Chinese
  character, a punctuation mark), a separator (whitespace) or nothing (a control character).
  The batch's addresses are then looked up in that table all at once, as arrays of code points
  (numpy); only words (runs of word characters: numbers, Latin) go through the tokenizer's own
  WordPiece model, once per distinct word. Anything the table cannot vouch for (an added token
  such as "[SEP]" in the text, a character whose normalization depends on its neighbours) goes
  through the Rust tokenizer whole;
- the pairs are assembled, truncated exactly as the `tokenizers` library truncates
  ("longest_first"), and padded with numpy, not per token in Python.

Any other tokenizer kind goes through the Rust tokenizer for every address. Parity with the
`transformers` call is proven by a property-based test over generated text.
"""

from __future__ import annotations

import copy
import json
import re
import unicodedata
from dataclasses import dataclass

import numpy as np

# Character classes of the table.
_UNSEEN, _WORD, _PIECE, _PIECES, _SPACE, _DROP, _COMPLEX = range(7)
_PROBE = "x"
_SEPARATOR = " "  # joins a batch's addresses: a separator class character, never a word part
_CODE_POINTS = 0x110000


@dataclass(slots=True)
class Encoded:
    """Token ids of `n` pairs, before padding: pair i is `[CLS] a [SEP] b [SEP]` with a and b
    cut to `first[i]` and `second[i]` tokens."""

    flat: np.ndarray        # every distinct address's full token ids, one after another
    start_a: np.ndarray     # where pair i's first address starts in `flat`
    start_b: np.ndarray
    first: np.ndarray       # tokens of the first address after truncation
    second: np.ndarray
    truncated: np.ndarray   # bool: the pair lost tokens to max_length

    @property
    def lengths(self) -> np.ndarray:
        return self.first + self.second + 3


class PairEncoder:
    """Encodes address pairs into padded model inputs; see the module docstring."""

    def __init__(self, tokenizer, max_length: int):
        backend = tokenizer.backend_tokenizer if hasattr(tokenizer, "backend_tokenizer") \
            else tokenizer
        self.max_length = max_length
        self._rust = copy.deepcopy(backend)
        self._rust.no_truncation()
        self._rust.no_padding()
        self.cls_id = self._special_id(tokenizer, "cls")
        self.sep_id = self._special_id(tokenizer, "sep")
        self.pad_id = self._special_id(tokenizer, "pad")
        self._table_ok = _is_bert_wordpiece(backend)
        added = [t.content for t in backend.get_added_tokens_decoder().values()]
        self._added = re.compile("|".join(re.escape(t) for t in added)) if added else None
        # The table, by code point: its class, the token id of a one-token piece, and (as
        # dicts, rarer) a multi-token piece's ids and a word character's normalized text.
        self._kind = np.zeros(_CODE_POINTS, dtype=np.int8)
        self._id = np.zeros(_CODE_POINTS, dtype=np.int64)
        self._pieces: dict[int, list[int]] = {}
        self._normal: dict[int, str] = {}
        self._words: dict[str, list[int]] = {}
        self.fallbacks = 0  # addresses the table could not vouch for (sent to Rust whole)
        if self._table_ok:
            self._classify(np.arange(0x20, 0x7F, dtype=np.uint32))  # ASCII, up front

    @staticmethod
    def _special_id(tokenizer, name: str) -> int:
        value = getattr(tokenizer, f"{name}_token_id", None)
        if value is None:
            raise ValueError(f"the tokenizer has no {name.upper()} token; MGeo-style pair "
                             "inputs need [CLS], [SEP] and [PAD]")
        return int(value)

    # ---- addresses ------------------------------------------------------------------------

    def address_ids(self, text: str) -> list[int]:
        """The full token ids of one address (no special tokens, no truncation)."""
        flat, sizes = self.encode_addresses([text])
        return flat[:sizes[0]].tolist()

    def encode_addresses(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The full token ids of every text, one after another, and how many each has."""
        n = len(texts)
        rust = [i for i, t in enumerate(texts) if not self._table_ok
                or (self._added is not None and self._added.search(t))]
        if len(rust) == n:
            return self._by_rust(texts, rust, n)
        flat, sizes, complex_ = self._by_table(texts)
        rust = sorted(set(rust) | complex_)
        if not rust:
            return flat, sizes
        # Splice in what the table left to Rust (rare): rebuild address by address.
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1])) if n else sizes
        parts = [flat[starts[i]:starts[i] + sizes[i]] for i in range(n)]
        more_flat, more_sizes = self._by_rust(texts, rust, n)
        more_starts = np.concatenate(([0], np.cumsum(more_sizes)[:-1]))
        for i in rust:
            parts[i] = more_flat[more_starts[i]:more_starts[i] + more_sizes[i]]
            sizes[i] = more_sizes[i]
        return (np.concatenate(parts) if parts else flat), sizes

    def _by_rust(self, texts: list[str], which: list[int], n: int
                 ) -> tuple[np.ndarray, np.ndarray]:
        """The Rust tokenizer's ids for texts `which` (the others get none)."""
        self.fallbacks += len(which)
        done = self._rust.encode_batch([texts[i] for i in which], add_special_tokens=False)
        sizes = np.zeros(n, dtype=np.int64)
        ids: list[int] = []
        for i, enc in zip(which, done):
            sizes[i] = len(enc.ids)
            ids += enc.ids
        return np.asarray(ids, dtype=np.int64), sizes

    def _by_table(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, set[int]]:
        n = len(texts)
        lengths = np.fromiter(map(len, texts), dtype=np.int64, count=n)
        joined = _SEPARATOR.join(texts)
        cps = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
        owner = np.repeat(np.arange(n), lengths + 1)[:len(cps)]  # separators: next owner
        kind = self._kind[cps]
        if (kind == _UNSEEN).any():
            self._classify(np.unique(cps[kind == _UNSEEN]))
            kind = self._kind[cps]
        complex_ = set(np.unique(owner[kind == _COMPLEX]).tolist())
        keep = (kind != _DROP) & (kind != _COMPLEX)  # dropped characters join their neighbours
        pos = np.flatnonzero(keep)
        cps, kind, owner = cps[pos], kind[pos], owner[pos]
        word = kind == _WORD
        # A word starts at a word character whose kept neighbour before it is not one (or
        # belongs to another address).
        before = np.concatenate(([False], word[:-1] & (owner[1:] == owner[:-1])))
        starts = np.flatnonzero(word & ~before)
        counts = np.where(kind == _PIECE, 1, 0)
        many = np.flatnonzero(kind == _PIECES).tolist()  # (rare) pieces of several tokens
        many_ids = [self._pieces[int(cps[p])] for p in many]
        for p, ids in zip(many, many_ids):
            counts[p] = len(ids)
        word_ids: list[list[int]] = []
        if len(starts):
            last = word & ~np.concatenate((word[1:] & (owner[1:] == owner[:-1]), [False]))
            ends = pos[np.flatnonzero(last)] + 1
            words = self._words
            raws = [joined[a:b] for a, b in zip(pos[starts].tolist(), ends.tolist())]
            word_ids = [words.get(raw) or self._word_ids(raw) for raw in raws]
            counts[starts] = np.fromiter(map(len, word_ids), dtype=np.int64,
                                         count=len(word_ids))
        offsets = np.cumsum(counts) - counts
        flat = np.empty(int(counts.sum()), dtype=np.int64)
        one = kind == _PIECE
        flat[offsets[one]] = self._id[cps[one]]
        if word_ids:
            _scatter(flat, offsets[starts], counts[starts], word_ids)
        for p, ids in zip(many, many_ids):
            flat[offsets[p]:offsets[p] + len(ids)] = ids
        sizes = np.bincount(owner, weights=counts, minlength=n).astype(np.int64)
        return flat, sizes, complex_

    def _word_ids(self, raw: str) -> list[int]:
        """WordPiece ids of a word as written (dropped characters inside it are skipped)."""
        text = "".join(self._normal.get(ord(c), "") for c in raw)
        ids = [t.id for t in self._rust.model.tokenize(text)]
        if len(self._words) < 1_000_000:
            self._words[raw] = ids
        return ids

    def _classify(self, code_points: np.ndarray) -> None:
        """Ask the tokenizer's own normalizer and pre-tokenizer what each character is
        between two word characters; anything but the plain answers sends its address to
        Rust."""
        norm, pre, model = self._rust.normalizer, self._rust.pre_tokenizer, self._rust.model
        for cp in code_points.tolist():
            c = chr(cp)
            pieces = [p for p, _ in pre.pre_tokenize_str(norm.normalize_str(_PROBE + c + _PROBE))]
            alone = norm.normalize_str(c)
            kind = _COMPLEX
            if pieces == [_PROBE + _PROBE]:
                kind = _DROP
            elif pieces == [_PROBE, _PROBE]:
                kind = _SPACE
            elif len(pieces) == 3 and pieces[0] == pieces[2] == _PROBE and pieces[1].strip():
                ids = [t.id for t in model.tokenize(pieces[1])]
                kind = _PIECE if len(ids) == 1 else _PIECES
                self._id[cp] = ids[0] if ids else 0
                self._pieces[cp] = ids
            elif pieces == [_PROBE + alone + _PROBE] and alone and not alone.isspace():
                kind = _WORD
                self._normal[cp] = alone
            # Canonical reordering makes a combining mark's normalization depend on its
            # neighbours; the ones normalization removes are harmless, the rest go to Rust.
            if kind != _DROP and any(unicodedata.combining(x) for x in c + alone):
                kind = _COMPLEX
            if kind == _PIECES and not self._pieces[cp]:
                kind = _COMPLEX
            self._kind[cp] = kind

    # ---- pairs ----------------------------------------------------------------------------

    def encode(self, pairs) -> Encoded:
        """Token ids of `pairs` (a sequence of (addr1, addr2)), truncated, not yet padded."""
        index: dict[str, int] = {}
        slot_a = [index.setdefault(a, len(index)) for a, _ in pairs]
        slot_b = [index.setdefault(b, len(index)) for _, b in pairs]
        flat, sizes = self.encode_addresses(list(index))
        starts = np.zeros(len(sizes), dtype=np.int64)
        if len(sizes) > 1:
            np.cumsum(sizes[:-1], out=starts[1:])
        a = np.asarray(slot_a, dtype=np.int64)
        b = np.asarray(slot_b, dtype=np.int64)
        n1, n2 = sizes[a], sizes[b]
        t1, t2 = truncate_longest_first(n1, n2, self.max_length - 3)
        return Encoded(flat, starts[a], starts[b], t1, t2, (t1 < n1) | (t2 < n2))

    def pad(self, enc: Encoded, rows: np.ndarray, width: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """input_ids, token_type_ids, attention_mask (int64, `len(rows)` x `width`) of the
        pairs `rows` of `enc`, padded on the right as the tokenizer pads."""
        j = np.arange(width, dtype=np.int64)[None, :]
        ids, types, real = self._assemble(enc, rows[:, None], j)
        return ids, types, real.astype(np.int64)

    def pack(self, enc: Encoded, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """input_ids, token_type_ids and position ids (int64, one dimension) of the pairs `rows`
        of `enc` laid end to end, without padding: pair k's tokens follow pair k-1's."""
        lengths = enc.lengths[rows]
        offsets = np.cumsum(lengths) - lengths
        row = np.repeat(rows, lengths)
        j = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(offsets, lengths)
        ids, types, _ = self._assemble(enc, row, j)
        return ids, types, j

    def _assemble(self, enc: Encoded, row: np.ndarray, j: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Token id, token type and realness of position `j` of pair `row` (broadcast
        together): `[CLS] a [SEP] b [SEP]`, then padding."""
        t1 = enc.first[row]
        t2 = enc.second[row]
        in_a = (j >= 1) & (j <= t1)
        b_from = t1 + 2
        in_b = (j >= b_from) & (j < b_from + t2)
        src = np.where(in_a, enc.start_a[row] + j - 1, enc.start_b[row] + j - b_from)
        flat = enc.flat if len(enc.flat) else np.zeros(1, dtype=np.int64)
        ids = np.where(in_a | in_b, flat[np.where(in_a | in_b, src, 0)], self.pad_id)
        ids[np.broadcast_to(j == 0, ids.shape)] = self.cls_id
        ids[(j == t1 + 1) | (j == b_from + t2)] = self.sep_id
        types = ((j >= b_from) & (j <= b_from + t2)).astype(np.int64)
        return ids, types, j <= b_from + t2


def _scatter(flat: np.ndarray, at: np.ndarray, sizes: np.ndarray,
             values: list[list[int]]) -> None:
    """Write each `values[i]` into `flat` from `at[i]` on (`sizes[i]` long), in one step."""
    total = int(sizes.sum())
    if not total:
        return
    within = np.arange(total) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    flat[np.repeat(at, sizes) + within] = np.fromiter(
        (v for ids in values for v in ids), dtype=np.int64, count=total)


def truncate_longest_first(n1: np.ndarray, n2: np.ndarray, budget: int
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Token counts kept of each side of a pair whose sides have n1 and n2 tokens, when at
    most `budget` may stay (max_length less the 3 special tokens): the `tokenizers` library's
    "longest_first" rule. Cut only the longer side while the shorter fits in half; else cut
    both to half the budget, the second side taking the odd token."""
    lo = np.minimum(n1, n2)
    new_hi = np.where(lo > budget, lo, np.maximum(lo, budget - lo))
    new_lo = lo.copy()
    both = new_lo + new_hi > budget
    new_lo = np.where(both, budget // 2, new_lo)
    new_hi = np.where(both, budget // 2 + budget % 2, new_hi)
    swap = n1 > n2
    k1 = np.where(swap, new_hi, new_lo)
    k2 = np.where(swap, new_lo, new_hi)
    fits = n1 + n2 <= budget
    return (np.where(fits, n1, np.minimum(n1, k1)), np.where(fits, n2, np.minimum(n2, k2)))


def _is_bert_wordpiece(backend) -> bool:
    """Whether the tokenizer is the plain BERT pipeline the character table models."""
    try:
        spec = json.loads(backend.to_str())
    except (ValueError, AttributeError):
        return False
    normalizer = spec.get("normalizer") or {}
    return (normalizer.get("type") == "BertNormalizer"
            and (spec.get("pre_tokenizer") or {}).get("type") == "BertPreTokenizer"
            and (spec.get("model") or {}).get("type") == "WordPiece")
