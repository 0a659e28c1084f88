"""Parity of the engine's pair encoder with MGeo's `tokenizer(a, b, truncation=True,
max_length=L)`, over generated text of every kind an address field may hold."""

from __future__ import annotations

import string

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("transformers")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mgeo.worker.inference.tokenize import PairEncoder, truncate_longest_first  # noqa: E402


def _ranges(*spans):
    return st.one_of(*(st.characters(min_codepoint=a, max_codepoint=b) for a, b in spans))


CHARS = st.one_of(
    _ranges((0x4E00, 0x9FFF)),                      # CJK unified ideographs (the bulk)
    _ranges((0x3400, 0x4DBF), (0x20000, 0x2A6DF)),  # CJK extensions: not in the vocabulary
    _ranges((0xF900, 0xFAFF)),                      # CJK compatibility ideographs (NFD maps them)
    st.sampled_from(string.ascii_letters + string.digits + string.punctuation),
    _ranges((0xFF01, 0xFF5E)),                      # full-width forms
    st.sampled_from("，。、；：？！（）《》【】「」『』—…·￥％＃＠＆＊＋／－～"),
    st.sampled_from(" \t\n\r\u3000\xa0\u2003\u200b\u200d\ufeff"),  # whitespace, zero-width
    _ranges((0x1F300, 0x1FAFF), (0x2600, 0x27BF)),   # emoji and symbols
    st.sampled_from("\ufe0f\u20e3"),                # emoji variation selector, keycap
    _ranges((0xE000, 0xF8FF)),                      # private use: unknown to everyone
    _ranges((0x0300, 0x036F), (0x1D165, 0x1D169)),  # combining marks, incl. non-Mn with ccc
    _ranges((0x00, 0x1F), (0x7F, 0x9F)),            # control characters
    _ranges((0xC0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0xAC00, 0xAC40), (0x600, 0x6FF)),
    st.sampled_from(["[SEP]", "[CLS]", "[UNK]", "[MASK]", "[PAD]", "[sep]", "##", "363号",
                     "ⅫⅣ", "①②", "İ", "ǖ\u0323", "Σ", "ß"]),
)
TEXT = st.lists(CHARS, min_size=1, max_size=90).map("".join)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """The bundled model's tokenizer (one token per Chinese character, like MGeo's) and one
    whose vocabulary also has multi-character word pieces, as bert-base-chinese's has."""
    from transformers import AutoTokenizer, BertTokenizer

    from mgeo.training.vocab import char_vocab
    from mgeo.worker.inference.model import default_model_dir

    bundled = AutoTokenizer.from_pretrained(default_model_dir())
    path = tmp_path_factory.mktemp("wordpiece") / "vocab.txt"
    extra = ["hello", "##llo", "world", "##ing", "363", "##63", "##3号", "ab", "##cd", "co",
             "##mpany", "room", "ⅻ", "##ⅳ", "é", "中国"]
    path.write_text("\n".join(char_vocab() + extra) + "\n", encoding="utf-8")
    pieces = BertTokenizer(vocab_file=str(path), do_lower_case=True)
    return {"bundled": bundled, "word pieces": pieces}


def _assert_same(tok, pairs, max_length):
    enc = PairEncoder(tok, max_length)
    encoded = enc.encode(pairs)
    width = int(encoded.lengths.max())
    ids, types, mask = enc.pad(encoded, np.arange(len(pairs)), width)
    want = tok([a for a, _ in pairs], [b for _, b in pairs], truncation=True,
               max_length=max_length)
    for i, (a, b) in enumerate(pairs):
        n = int(encoded.lengths[i])
        assert ids[i, :n].tolist() == want["input_ids"][i], (a, b)
        assert types[i, :n].tolist() == want["token_type_ids"][i], (a, b)
        assert mask[i].tolist() == [1] * n + [0] * (width - n), (a, b)
        assert (ids[i, n:] == tok.pad_token_id).all()
        whole = tok(a, b, truncation=False)["input_ids"]
        assert bool(encoded.truncated[i]) == (len(whole) > max_length), (a, b)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pairs=st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=6),
       max_length=st.sampled_from([8, 11, 16, 32, 64, 128]),
       which=st.sampled_from(["bundled", "word pieces"]))
@pytest.mark.slow
def test_inputs_equal_the_transformers_call(tokenizers, pairs, max_length, which):
    _assert_same(tokenizers[which], pairs, max_length)


def test_realistic_addresses_and_repeats_in_one_call(tokenizers):
    query = "浙江省杭州市西湖区文三路478号华星时代广场A座1203室"
    pairs = [(query, "文三路478号华星时代广场A座"), (query, "杭州市 西湖区 文三路 四七八号"),
             ("紫萱路363号人力社保局", "紫萱路363号市人社局"), (query, query),
             ("北" * 130, "南" * 3), ("北" * 70, "南" * 70), ("(西南门)对面东北60米", "光明区光明区")]
    for tok in tokenizers.values():
        _assert_same(tok, pairs, 128)
        _assert_same(tok, pairs, 32)


def test_one_address_at_a_time_gives_the_same_ids(tokenizers):
    tok = tokenizers["bundled"]
    enc = PairEncoder(tok, 128)
    texts = [f"幸福路{i}号 Room {i}" for i in range(10)]
    flat, sizes = enc.encode_addresses(texts)
    assert sizes.tolist() == [len(enc.address_ids(t)) for t in texts]
    assert flat.tolist() == [i for t in texts for i in enc.address_ids(t)]
    assert enc.address_ids(texts[3]) == tok(texts[3], add_special_tokens=False)["input_ids"]


@given(st.integers(0, 300), st.integers(0, 300), st.integers(5, 200))
def test_longest_first_never_keeps_more_than_the_budget(n1, n2, budget):
    t1, t2 = truncate_longest_first(np.array([n1]), np.array([n2]), budget)
    t1, t2 = int(t1[0]), int(t2[0])
    assert t1 <= n1 and t2 <= n2
    assert t1 + t2 == min(n1 + n2, budget) or (t1 + t2 <= budget and min(n1, n2) > budget)


def test_an_unusual_tokenizer_goes_through_rust_whole(tokenizers):
    tok = tokenizers["bundled"]
    enc = PairEncoder(tok, 64)
    enc._table_ok = False  # as for any tokenizer that is not BERT WordPiece
    enc.encode([("紫萱路363号", "市人社局")])
    assert enc.fallbacks == 2
