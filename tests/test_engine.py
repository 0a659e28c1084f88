"""The engine on a tiny random BERT: order, dedup, cache, OOM retry, truncation, precisions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engines import random_pairs

torch = pytest.importorskip("torch")

from mgeo.settings import ModelSettings  # noqa: E402
from mgeo.worker.inference import device as device_mod  # noqa: E402
from mgeo.worker.inference import model as model_mod  # noqa: E402
from mgeo.worker.inference.device import resolve_positive, resolve_precision  # noqa: E402
from mgeo.worker.inference.engine import Engine  # noqa: E402
from mgeo.worker.inference.packed import Packed  # noqa: E402
from mgeo.tools.models import build_random_model  # noqa: E402
from mgeo.worker.inference.model import load_model  # noqa: E402

WAIT_S = 30  # a bound on waits for the engine's threads, never a duration a test depends on


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_random_model(tmp_path_factory.mktemp("tiny"), layers=2, hidden=64, heads=2,
                              intermediate=128, seed=1)


def _engine(path, model_call=None, **kw) -> Engine:
    kw.setdefault("device", "cpu")
    return Engine.from_settings(ModelSettings(model=path, **kw), model_call=model_call)


def _reference(path, pairs, max_length=128):
    """MGeo's pipeline, one pair at a time: tokenizer(a, b, truncation=True, max_length)."""
    tokenizer, model, id2label = load_model(path)
    out = []
    with torch.inference_mode():
        for a, b in pairs:
            enc = tokenizer(a, b, truncation=True, max_length=max_length, return_tensors="pt")
            probs = model(**enc).logits.float().softmax(-1)[0].tolist()
            out.append({id2label[i]: p for i, p in enumerate(probs)})
    return out


def _close(got, want, tol=1e-5):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.probs.keys() == w.keys()
        assert all(abs(g.probs[k] - w[k]) <= tol for k in w), (g.probs, w)


def test_scores_match_the_pipeline_in_input_order(tiny):
    pairs = random_pairs(60)
    engine = _engine(tiny, token_budget=256)  # several batches, sorted by length
    got = engine.score(pairs)
    _close(got, _reference(tiny, pairs))
    stats = engine.stats()
    assert stats["batches"] > 3
    assert stats["scored_pairs"] == 60 and stats["pairs"] == 60
    assert 0.8 < stats["padding_efficiency"] <= 1.0
    assert all(abs(sum(s.probs.values()) - 1) < 1e-5 for s in got)
    assert engine.score([]) == []
    engine.close()


def test_identical_pairs_are_scored_once(tiny):
    pairs = random_pairs(5)
    batch = [pairs[0], pairs[1], pairs[0], pairs[2], pairs[0], pairs[1]]
    engine = _engine(tiny)
    got = engine.score(batch)
    stats = engine.stats()
    assert stats["scored_pairs"] == 3 and stats["deduplicated"] == 3
    assert got[0] == got[2] == got[4] and got[1] == got[5]
    _close(got, _reference(tiny, batch))


def test_lru_cache_counts_hits_and_evicts_the_least_recent(tiny):
    p = random_pairs(4)
    engine = _engine(tiny, cache_size=2)
    engine.score([p[0], p[1]])
    engine.score([p[0], p[2]])  # p0 hit; p1 is now the least recent and is evicted
    s = engine.stats()
    assert (s["cache_hits"], s["cache_misses"], s["cache_entries"]) == (1, 3, 2)
    engine.score([p[1], p[2]])
    s = engine.stats()
    assert (s["cache_hits"], s["cache_misses"]) == (2, 4)
    assert s["scored_pairs"] == 4
    assert s["cache_hit_rate"] == pytest.approx(2 / 6)
    no_cache = _engine(tiny)
    no_cache.score([p[0]])
    no_cache.score([p[0]])
    assert no_cache.stats()["scored_pairs"] == 2 and no_cache.stats()["cache_hits"] == 0


class FlakyForward:
    """Wraps the engine's model call (given to the engine as `model_call=flaky.wrap`); raises
    the real CUDA OOM type on chosen calls."""

    def __init__(self, fail_when):
        self.inner = None
        self.fail_when = fail_when
        self.calls = 0
        self.scored_rows: list[tuple[int, ...]] = []

    def wrap(self, inner):
        self.inner = inner
        return self

    def __call__(self, inputs):
        self.calls += 1
        if self.calls > 100:  # a retry loop that never ends fails the test, not hangs it
            raise RuntimeError("the engine retried more than 100 times")
        if self.fail_when(self.calls, inputs):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        logits = self.inner(inputs)
        self.scored_rows += _sequences(inputs)
        return logits


def _sequences(inputs) -> list[tuple[int, ...]]:
    """The token ids of each pair a model batch holds, padding left out, in either layout."""
    if isinstance(inputs, Packed):
        ids = inputs.ids.tolist()
        ends = np.cumsum(inputs.lengths).tolist()
        return [tuple(ids[end - n:end]) for end, n in zip(ends, inputs.lengths.tolist())]
    return [tuple(r[r != 0].tolist()) for r in inputs.ids]  # 0 is [PAD]


def test_oom_retries_the_same_pairs_then_the_budget_recovers(tiny):
    pairs = random_pairs(80, seed=3)
    flaky = FlakyForward(lambda call, inputs: call in (1, 2))  # two OOMs in a row
    engine = Engine(*load_model(tiny), device="cpu", token_budget=2048, grow_after=2,
                    model_name="tiny", model_call=flaky.wrap)
    got = engine.score(pairs)

    _close(got, _reference(tiny, pairs))
    stats = engine.stats()
    assert stats["oom_retries"] == 2
    # Nothing dropped, nothing scored twice: each pair went through the model exactly once.
    tokenizer = engine.tokenizer
    want = sorted(tuple(tokenizer(a, b, truncation=True, max_length=128)["input_ids"])
                  for a, b in pairs)
    assert sorted(flaky.scored_rows) == want
    assert stats["scored_pairs"] == 80
    assert stats["token_budget_max"] == 2048
    shrunk = stats["token_budget"]
    assert shrunk < 2048
    # Enough good batches regrow the budget to, and never past, the start-up value.
    for seed in range(4, 30):
        engine.score(random_pairs(40, seed=seed))
        assert engine.token_budget <= 2048
    assert engine.token_budget == 2048 > shrunk


def test_oom_on_a_single_pair_is_a_systemic_failure(tiny):
    engine = _engine(tiny, model_call=FlakyForward(lambda call, inputs: True).wrap)
    with pytest.raises(RuntimeError, match="single pair"):
        engine.score(random_pairs(3))
    # Split once or twice (by the halved budget, then in halves), then a lone pair failed.
    assert engine.stats()["oom_retries"] in (2, 3)


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_oom_on_short_pairs_under_the_budget_floor_splits_them(tiny, layout):
    """Two short pairs fit the smallest budget (one max-length pair) together: a retry must
    still split them, not rerun the same batch for ever."""
    pairs = [("北京路1号", "北京路2号"), ("上海市", "上海")]
    flaky = FlakyForward(lambda call, inputs: len(_sequences(inputs)) > 1)
    engine = _engine(tiny, batch_layout=layout, model_call=flaky.wrap)
    got = engine.score(pairs)
    _close(got, _reference(tiny, pairs))
    assert engine.stats()["oom_retries"] == 1 and flaky.calls == 3


def test_truncation_flag(tiny):
    engine = _engine(tiny, max_length=16)
    exact = ("一二三四五六", "七八九十一二三")  # 6 + 7 + 3 = 16 tokens: fits exactly
    long = ("一二三四五六七八九十", "一二三四五六七八九十")
    short = ("北京", "上海")
    got = engine.score([exact, long, short])
    assert [s.truncated for s in got] == [False, True, False]
    assert engine.stats()["truncated"] == 1
    _close(got, _reference(tiny, [exact, long, short], max_length=16))


def test_positive_label_resolution(tiny):
    labels = ["not_match", "partial_match", "exact_match"]
    assert resolve_positive(labels, None) == ["exact_match"]
    assert resolve_positive(["neg", "pos"], None) == ["pos"]
    assert resolve_positive(labels, ["partial_match", "exact_match"]) == [
        "partial_match", "exact_match"]
    with pytest.raises(ValueError, match="not_match"):
        resolve_positive(labels, ["match"])
    engine = _engine(tiny, positive_labels="partial_match,exact_match")
    assert engine.positive == ["partial_match", "exact_match"]
    assert engine.labels == labels
    assert engine.model_name == tiny.name


def test_precision_rules():
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("auto", "cuda") == "fp16"
    with pytest.raises(ValueError, match="cuda only"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="cpu only"):
        resolve_precision("int8", "cuda")


def test_bf16_only_where_the_hardware_has_it(monkeypatch):
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(ValueError, match="no native bf16.*use fp32 or int8"):
        resolve_precision("bf16", "cpu")
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("bf16", "cpu") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(ValueError, match="Ampere"):
        resolve_precision("bf16", "cuda")



def test_native_bf16_detection_agrees_with_the_kernel():
    cpuinfo = Path("/proc/cpuinfo")
    flags = next((set(line.split(":", 1)[1].split()) for line in
                  (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
                  if line.startswith("flags")), None)
    if not flags:
        pytest.skip("no x86 CPU flags to compare with")
    assert device_mod.cpu_has_native_bf16() == bool({"avx512_bf16", "amx_bf16"} & flags)


def test_bf16_runs_in_bf16_and_stays_close_to_fp32(tiny, monkeypatch):
    # bf16 compute is the same wherever it runs; only its speed needs the hardware.
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: True)
    pairs = random_pairs(20, seed=3)
    engine = _engine(tiny, precision="bf16", token_budget=256)
    assert engine.precision == "bf16"
    assert next(engine.model.parameters()).dtype == torch.bfloat16
    got = engine.score(pairs)
    assert all(abs(sum(g.probs.values()) - 1) < 1e-4 for g in got)  # softmax in fp32
    _close(got, _reference(tiny, pairs), tol=0.03)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_gpu_is_a_clear_error(tiny):
    with pytest.raises(ValueError, match="no GPU"):
        _engine(tiny, device="cuda")


def test_int8_runs_and_stays_close_to_fp32(tiny):
    pairs = random_pairs(20, seed=7)
    engine = _engine(tiny, precision="int8")
    assert engine.precision == "int8"
    assert any("quantized" in type(m).__module__ for m in engine.model.modules())
    got = engine.score(pairs)
    _close(got, _reference(tiny, pairs), tol=0.05)


def test_the_bundled_model_loads_and_a_missing_one_is_a_clear_error(tmp_path, monkeypatch):
    bundled = model_mod.default_model_dir()
    _, _, id2label = load_model(bundled)
    assert sorted(id2label.values()) == ["exact_match", "not_match", "partial_match"]
    monkeypatch.setattr(model_mod, "__file__", str(tmp_path / "model.py"))
    with pytest.raises(ValueError, match="bundled model is missing.*--model DIR"):
        model_mod.default_model_dir()


def test_load_model_explains_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="mgeo convert"):
        load_model(tmp_path / "empty")


# ---- mgeo score: the engine on files ------------------------------------------------------

def _score_cli(tiny, src, dst, *extra):
    from mgeo.tools.cli import main

    return main(["score", "--in", str(src), "--out", str(dst), "--model", str(tiny),
                 "--device", "cpu", "--no-progress", "--chunk-pairs", "2", *extra])


def test_score_file_csv_round_trip_with_invalid_rows_and_meta(tiny, tmp_path):
    import csv
    import json

    src = tmp_path / "pairs.csv"
    src.write_text("id,addr1,addr2,city\n"
                   "a,紫萱路363号人力社保局,紫萱路363号市人社局,榆林\n"
                   "b,,栖霞区,南京\n"
                   "c,栖霞区仙林街道文枢东路2号商住楼4楼,栖霞区文枢东路2号书店,南京\n"
                   ",北京,上海,x\n"
                   "d,紫萱路363号人力社保局,紫萱路363号市人社局,\n", encoding="utf-8")
    dst = tmp_path / "out.csv"
    assert _score_cli(tiny, src, dst) == 0
    rows = list(csv.DictReader(dst.open(encoding="utf-8")))
    assert [r["id"] for r in rows] == ["a", "b", "c", "", "d"]
    assert [r["error_code"] for r in rows] == ["", "empty_address", "", "invalid_id", ""]
    assert [json.loads(r["meta"])["city"] for r in rows[:3]] == ["榆林", "南京", "南京"]
    want = _reference(tiny, [("紫萱路363号人力社保局", "紫萱路363号市人社局"),
                             ("栖霞区仙林街道文枢东路2号商住楼4楼", "栖霞区文枢东路2号书店")])
    for row, w in zip([rows[0], rows[2]], want):
        assert float(row["score"]) == pytest.approx(w["exact_match"], abs=1e-5)
        assert row["label"] == max(w, key=w.get)
        assert float(row["prob_not_match"]) == pytest.approx(w["not_match"], abs=1e-5)
        assert row["truncated"] == "false"
    assert rows[4]["score"] == rows[0]["score"]


def test_score_file_jsonl_round_trip_and_input_is_never_overwritten(tiny, tmp_path):
    import json

    src = tmp_path / "pairs.jsonl"
    lines = [{"id": 1, "addr1": "北京市海淀区中关村大街1号", "addr2": "海淀区中关村大街1号",
              "meta": {"k": [1, 2]}},
             {"id": "x", "addr1": 5, "addr2": "上海"},
             {"id": "y", "addr1": "一" * 200, "addr2": "二" * 200}]
    src.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines)
                   + "\nnot json\n\n", encoding="utf-8")
    before = src.read_bytes()
    dst = tmp_path / "out.jsonl"
    assert _score_cli(tiny, src, dst) == 0
    out = [json.loads(x) for x in dst.read_text(encoding="utf-8").splitlines()]
    assert [o["id"] for o in out] == ["1", "x", "y", None]
    assert out[0]["meta"] == {"k": [1, 2]} and set(out[0]["probs"]) == {
        "not_match", "partial_match", "exact_match"}
    assert out[0]["score"] == pytest.approx(out[0]["probs"]["exact_match"])
    assert out[1]["error"]["code"] == "invalid_type"
    assert out[2]["truncated"] is True and "error" not in out[2]
    assert out[3]["error"]["code"] == "not_json" and out[3]["line"] == 4
    assert _score_cli(tiny, src, src) == 2
    assert src.read_bytes() == before
    assert _score_cli(tiny, src, tmp_path / "out.txt") == 2
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_scores_equal_the_transformers_call_on_the_same_batches(layout):
    """What the engine computed before its own pair encoder, prepared masks and packed layout:
    per planned batch, `tokenizer(a, b, truncation=True, max_length=128, padding=True)` and the
    model. The scores must not move by more than 1e-6 (the bundled model, pairs of every
    length)."""
    from mgeo.worker.inference.model import default_model_dir

    tokenizer, model, id2label = load_model(default_model_dir())
    engine = Engine(tokenizer, model, id2label, device="cpu", token_budget=2048,
                    batch_layout=layout)
    assert engine.layout == layout
    pairs = random_pairs(150, seed=21) + [("北" * 100, "南" * 80), ("紫萱路363号 SOHO", "ＡＢＣ ３６３号")]
    prep = engine.prepare(pairs)
    got = engine.forward(prep)
    keys = prep.keys
    want = {}
    with torch.inference_mode():
        for batch in prep.batches:
            rows = [keys[prep.todo[r]] for r in batch.rows.tolist()]
            enc = tokenizer([a for a, _ in rows], [b for _, b in rows], truncation=True,
                            max_length=128, padding=True, return_tensors="pt")
            probs = engine.model(**enc).logits.float().softmax(-1).tolist()
            want.update(zip(rows, probs))
    diff = max(abs(x - y) for pair, row in zip(pairs, got.probs)
               for x, y in zip(row, want[pair]))
    assert diff <= 1e-6, diff


def test_packed_is_the_cpu_default_for_bert_and_other_models_run_padded(tiny):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    assert _engine(tiny).layout == "packed"
    assert _engine(tiny).stats()["batch_layout"] == "packed"
    tokenizer, _, id2label = load_model(tiny)
    config = RobertaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=64, num_labels=3,
                           type_vocab_size=2)
    roberta = RobertaForSequenceClassification(config)
    engine = Engine(tokenizer, roberta, id2label, device="cpu")
    assert engine.layout == "padded"
    assert len(engine.score(random_pairs(5))) == 5
    with pytest.raises(ValueError, match="batch-layout padded"):
        Engine(tokenizer, RobertaForSequenceClassification(config), id2label, device="cpu",
               batch_layout="packed")


@pytest.mark.slow
def test_packed_batches_keep_to_the_token_budget_and_score_every_pair_once(tiny):
    pairs = random_pairs(120, seed=8)
    engine = _engine(tiny, token_budget=300)
    prep = engine.prepare(pairs)
    lengths = prep.enc.lengths
    seen = np.concatenate([b.rows for b in prep.batches])
    assert sorted(seen.tolist()) == list(range(len(prep.keys)))
    for b in prep.batches:
        assert b.cost == lengths[b.rows].sum() and (b.cost <= 300 or len(b.rows) == 1)
        assert list(lengths[b.rows]) == sorted(lengths[b.rows], reverse=True)
    _close(engine.score(pairs), _reference(tiny, pairs))


def test_lane_rules():
    from mgeo.worker.inference.device import resolve_lanes

    assert [resolve_lanes(None, "cpu", t) for t in (1, 2, 4, 8, 16, 32)] == [1, 2, 2, 2, 4, 8]
    assert resolve_lanes(3, "cpu", 4) == 3
    assert resolve_lanes(None, "cuda", 16) == 1
    with pytest.raises(ValueError, match="lower --lanes or raise --threads"):
        resolve_lanes(5, "cpu", 4)
    with pytest.raises(ValueError, match="--processes"):
        resolve_lanes(2, "cuda", 16)


def test_lanes_score_a_job_in_parallel_batches_exactly_as_one_lane(tiny):
    pairs = random_pairs(200, seed=12)
    one = _engine(tiny, lanes=1, threads=2, token_budget=512)
    two = _engine(tiny, lanes=2, threads=2, token_budget=512)
    assert (one.lane_threads, two.lane_threads) == (2, 1)
    # Each lane runs with its own share of the threads.
    assert two.runner.submit(torch.get_num_threads).result(WAIT_S) == 1
    assert one.runner.submit(torch.get_num_threads).result(WAIT_S) == 2
    a, b = one.score(pairs), two.score(pairs)
    _close(a, [x.probs for x in b], tol=1e-6)
    stats = two.stats()
    assert stats["batches"] > 2 and stats["scored_pairs"] == 200 and stats["lanes"] == 2
    _close(b, _reference(tiny, pairs))
    # close() waits for the lanes to end: a torch thread still ending while the interpreter
    # exits aborted `mgeo score` ("terminate called without an active exception").
    two.close()
    assert two.runner.alive() == 0
