"""The engine's seams: the model call it is given (a fake here, no model run), each batch layout
on each runner, and the runners' own promises."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engines import random_pairs

torch = pytest.importorskip("torch")

from mgeo.worker.inference.engine import Engine  # noqa: E402
from mgeo.worker.inference.layouts import (  # noqa: E402
    LANE_TOKENS, ClassifierCall, PackedLayout, Padded, PaddedLayout)
from mgeo.worker.inference.model import load_model  # noqa: E402
from mgeo.worker.inference.packed import Packed  # noqa: E402
from mgeo.worker.inference.runners import Inline, Lanes  # noqa: E402

WAIT_S = 30  # a bound on waits for threads, never a duration a test depends on


def _lengths(inputs) -> list[int]:
    """Tokens of each pair of a batch, in either layout."""
    if isinstance(inputs, Packed):
        return inputs.lengths.tolist()
    if inputs.mask is None:
        return [inputs.ids.shape[1]] * inputs.ids.shape[0]
    return inputs.mask[:, 0, 0, :].sum(1).tolist()


class FakeModel:
    """A model call that runs no model: each pair's logits say how many tokens it has, and
    which thread ran it is recorded. The engine's real call must never be reached."""

    def __init__(self):
        self.threads: set[str] = set()
        self.batches = 0

    def wrap(self, real):
        return self

    def __call__(self, inputs) -> torch.Tensor:
        self.threads.add(threading.current_thread().name)
        self.batches += 1
        n = torch.tensor(_lengths(inputs), dtype=torch.float32)
        return torch.stack([torch.zeros_like(n), torch.zeros_like(n), n / 10], dim=1)


def _want(engine: Engine, pairs) -> np.ndarray:
    """What FakeModel's logits give each pair after the engine's softmax."""
    n = engine.encoder.encode(pairs).lengths.astype(np.float32) / 10
    logits = torch.from_numpy(np.stack([np.zeros_like(n), np.zeros_like(n), n], axis=1))
    return logits.softmax(-1).numpy()


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_a_fake_model_call_gets_every_pair_and_its_answers_go_back_in_order(tiny_model,
                                                                            layout):
    fake = FakeModel()
    engine = Engine(*load_model(tiny_model), device="cpu", batch_layout=layout,
                    token_budget=256, cache_size=16, model_call=fake.wrap)
    try:
        pairs = random_pairs(60, seed=1)
        batch = pairs + pairs[:7]  # duplicates: scored once, answered each time
        got = np.array(engine.score_rows(batch).probs)
        assert np.abs(got - _want(engine, batch)).max() < 1e-6
        stats = engine.stats()
        assert stats["scored_pairs"] == 60 and stats["batches"] == fake.batches > 3
        before = fake.batches
        again = np.array(engine.score_rows(pairs[-16:]).probs)  # the 16 the cache holds
        assert fake.batches == before and np.abs(again - got[44:60]).max() == 0
    finally:
        engine.close()


@pytest.mark.parametrize("layout", ["packed", "padded"])
@pytest.mark.parametrize("runner", ["inline", "lanes"])
def test_each_layout_on_each_runner_scores_as_the_transformers_call(tiny_model, layout,
                                                                    runner):
    tokenizer, model, id2label = load_model(tiny_model)
    pairs = random_pairs(80, seed=2)
    with torch.inference_mode():
        enc = tokenizer([a for a, _ in pairs], [b for _, b in pairs], truncation=True,
                        max_length=128, padding=True, return_tensors="pt")
        want = model(**enc).logits.float().softmax(-1).numpy()
    fake = FakeModel()
    seen = []

    def watch(real):
        def call(inputs):
            fake(inputs)  # records the thread
            seen.append(type(inputs))
            return real(inputs)
        return call

    engine = Engine(tokenizer, model, id2label, device="cpu", batch_layout=layout,
                    token_budget=300, lanes=2, threads=2, model_call=watch)
    chosen = Inline(1, scoped=True) if runner == "inline" else Lanes(2, 1)
    try:
        prep = engine.prepare(pairs)
        got = np.array(engine.forward(prep, runner=chosen).probs)
    finally:
        chosen.close()
        engine.close()
    assert np.abs(got - want).max() < 1e-5
    assert set(seen) == {Packed if layout == "packed" else Padded}
    assert len(seen) == len(prep.batches) > 2
    on = {"inline": {threading.current_thread().name}, "lanes": {"mgeo-lane-0", "mgeo-lane-1"}}
    assert fake.threads <= on[runner] and fake.threads


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(3, 128), min_size=1, max_size=200), st.integers(128, 4096),
       st.integers(1, 4))
def test_packed_plans_cover_every_row_once_within_the_budget_cut_for_the_lanes(raw, budget,
                                                                             lanes):
    lengths = np.array(raw)
    parts = PackedLayout(None, lanes).plan(lengths, np.arange(len(raw)), budget)  # type: ignore[arg-type]
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(raw)))
    for part in parts:
        assert lengths[part].sum() <= budget or len(part) == 1
        assert list(lengths[part]) == sorted(lengths[part], reverse=True)
    if lengths.sum() >= lanes * LANE_TOKENS and lengths.max() * 2 <= budget:
        assert len(parts) >= lanes  # every lane gets a share of a call that has enough
    if lengths.sum() < 2 * LANE_TOKENS and lengths.sum() <= budget:
        assert len(parts) == 1  # a small call is not cut: each batch has a fixed cost
    elif lengths.sum() <= budget and lanes > 1:  # cut into lanes, shares of LANE_TOKENS+
        assert 2 <= len(parts) <= max(1, lengths.sum() // LANE_TOKENS)


def test_padded_batches_are_laid_out_as_the_tokenizer_pads(tiny_model):
    tokenizer, _, _ = load_model(tiny_model)
    from mgeo.worker.inference.tokenize import PairEncoder

    encoder = PairEncoder(tokenizer, 128)
    pairs = random_pairs(30, seed=3)
    enc = encoder.encode(pairs)
    layout = PaddedLayout(encoder, multiple=8)
    for rows in layout.plan(enc.lengths, np.arange(30), 512):
        batch = layout.build(enc, rows)
        ids = batch.inputs.ids
        assert ids.shape[1] % 8 == 0 and batch.cost == ids.numel() <= max(512, ids.shape[1])
        chunk = [pairs[r] for r in rows.tolist()]
        want = tokenizer([a for a, _ in chunk], [b for _, b in chunk], truncation=True,
                         max_length=128, padding="longest", pad_to_multiple_of=8,
                         return_tensors="pt")
        assert torch.equal(ids, want["input_ids"])
        assert torch.equal(batch.inputs.types, want["token_type_ids"])
        assert torch.equal(batch.inputs.mask[:, 0, 0, :], want["attention_mask"].bool())


def test_a_call_built_for_padded_batches_refuses_a_packed_one(tiny_model):
    _, model, _ = load_model(tiny_model)
    batch = Packed.build(np.array([2, 5, 3]), np.zeros(3, dtype=np.int64), np.arange(3),
                         np.array([3]))
    with pytest.raises(ValueError, match="packed=True"):
        ClassifierCall(model)(batch)
    assert ClassifierCall(model, packed=True)(batch).shape == (1, 3)


def test_lanes_return_results_in_order_and_raise_only_when_every_item_is_done():
    lanes = Lanes(2, 1)
    try:
        assert lanes.map(lambda x: x * x, range(10)) == [x * x for x in range(10)]
        failed, running, release = threading.Event(), threading.Event(), threading.Event()
        finished = []

        def work(x):
            if x == 0:
                failed.set()
                raise ValueError("first item fails")
            running.set()
            release.wait(WAIT_S)
            finished.append(x)

        errors = []
        caller = threading.Thread(target=lambda: errors.append(
            pytest.raises(ValueError, lanes.map, work, range(3))))
        caller.start()
        assert failed.wait(WAIT_S) and running.wait(WAIT_S)
        assert caller.is_alive()  # the failure waits for the items still running
        release.set()
        caller.join(WAIT_S)
        assert sorted(finished) == [1, 2] and errors
    finally:
        lanes.close()
    assert lanes.alive() == 0


def test_a_scoped_inline_runner_gives_the_thread_its_torch_threads_back():
    before = torch.get_num_threads()
    scoped = Inline(before + 1, scoped=True)
    assert scoped.map(lambda _: torch.get_num_threads(), [None, None]) == [before + 1] * 2
    assert torch.get_num_threads() == before
    with pytest.raises(KeyError):
        scoped.map(lambda _: {}["x"], [None])
    assert torch.get_num_threads() == before
    assert Inline(before + 1).map(lambda _: torch.get_num_threads(), [None]) == [before]


@pytest.mark.slow
def test_the_lane_split_script_runs(tiny_model):
    """bench/lane_split.py, whose figures bench/RESULTS.md and docs/performance.md quote, on
    the tiny model: a row for each call size, both policies measured."""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "bench" / "lane_split.py"),
                          str(tiny_model), "40"],
                         capture_output=True, text=True, timeout=240, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = out.stdout.splitlines()[1:]
    assert [row.split(" | ")[0] for row in rows] == ["4", "8", "16", "32", "400"]
    for row in rows:
        for cell in row.split(" | ")[1:]:
            cpu, wall = map(float, cell.split(", "))
            assert cpu > 0 and wall > 0
