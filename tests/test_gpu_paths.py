"""Every branch that runs only on a GPU, run here on a CPU through the accelerator seam
(worker/inference/accelerator.py): `Simulated` is a GPU with CUDA's rules and the caching
allocator's bookkeeping, so the engine takes the very branches it takes on an H100. docs/gpu.md
lists the branches, which test covers each, and what no CPU can reach."""

from __future__ import annotations

import dataclasses
import threading
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mgeo import traffic  # noqa: E402
from mgeo.worker.inference import accelerator as accel_mod  # noqa: E402
from mgeo.worker.inference.accelerator import Cuda, Simulated, SimulatedGpu  # noqa: E402
from mgeo.worker.inference.device import resolve_device  # noqa: E402
from mgeo.worker.inference.engine import Engine  # noqa: E402
from mgeo.worker.inference.layouts import Padded  # noqa: E402
from mgeo.worker.inference.memory import GPU_TOKEN_BUDGET_CAP, probe_budget  # noqa: E402
from mgeo.worker.inference.model import load_model  # noqa: E402
from mgeo.worker.inference.packed import Packed  # noqa: E402
from mgeo.worker.inference.runners import Inline  # noqa: E402

GiB = 2**30
WAIT = 30  # a bound on waits for threads, never a duration a test depends on
WIDTH = 128  # max_length 128, rounded to a multiple of 8


def _pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    return [(r["addr1"], r["addr2"]) for r in traffic.pairs(n, seed)]


def _gpu_engine(model, gpu: SimulatedGpu | None = None, **kw) -> tuple[Engine, Simulated]:
    sim = Simulated(gpu or SimulatedGpu(GiB))
    return Engine(*load_model(model), accelerator=sim, **kw), sim


def _expected_budget(free: int, bytes_per_token: int, fraction: float = 0.8) -> int:
    return min(GPU_TOKEN_BUDGET_CAP, int(free * fraction / bytes_per_token) // WIDTH * WIDTH)


def test_an_engine_on_a_gpu_follows_the_gpu_rules(tiny_model):
    engine, sim = _gpu_engine(tiny_model)
    assert (engine.device, engine.precision, engine.layout) == ("cuda", "fp16", "padded")
    assert engine.lanes == 1 and isinstance(engine.runner, Inline)  # on the calling thread
    assert next(engine.model.parameters()).dtype == torch.float16
    assert engine.token_budget == _expected_budget(GiB, sim.gpu.bytes_per_token)
    prep = engine.prepare(_pairs(50))
    widths = [b.inputs.ids.shape[1] for b in prep.batches]
    assert widths and all(w % 8 == 0 for w in widths)  # tensor cores want multiples of 8


def test_fp16_scores_stay_close_to_fp32_with_softmax_in_fp32(tiny_model):
    pairs = _pairs(40, seed=1)
    gpu, _ = _gpu_engine(tiny_model)
    cpu = Engine(*load_model(tiny_model), device="cpu")
    half = np.array(gpu.score_rows(pairs).probs)
    full = np.array(cpu.score_rows(pairs).probs)
    assert np.abs(half.sum(1) - 1).max() < 1e-6  # softmax of fp32 logits, not of fp16 ones
    assert 0 < np.abs(half - full).max() < 1e-2  # fp16 really ran, and stayed close


def test_batches_are_pinned_while_prepared_and_copied_when_run(tiny_model):
    engine, sim = _gpu_engine(tiny_model, token_budget=512)
    prep = engine.prepare(_pairs(60, seed=2))
    assert len(prep.batches) > 1
    # Pinned on the preparing thread, so the device thread only starts a non-blocking copy.
    assert (sim.calls["pin"], sim.calls["upload"]) == (len(prep.batches), 0)
    engine.forward(prep)
    assert sim.calls["upload"] == len(prep.batches)
    syncs = sim.calls["synchronize"]
    from mgeo.tools.bench import model_seconds

    model_seconds(engine, _pairs(60, seed=2))  # the bench's model-only time waits for the device
    assert sim.calls["synchronize"] == syncs + 2


def test_a_copy_to_the_device_moves_every_tensor_of_a_batch(tiny_model, monkeypatch):
    """A tensor left behind would fail on a GPU with a device mismatch. The `meta` device
    stands in for cuda (a copy without data); pinning is recorded."""
    engine = Engine(*load_model(tiny_model), device="cpu", batch_layout="packed")
    enc = engine.encoder.encode(_pairs(30, seed=3))
    rows = np.argsort(-enc.lengths, kind="stable")
    packed = Packed.build(*engine.encoder.pack(enc, rows), enc.lengths[rows])
    ids, types, mask = engine.encoder.pad(enc, rows, int(enc.lengths.max()))
    padded = Padded(torch.from_numpy(ids), torch.from_numpy(types),
                    torch.from_numpy(mask.astype(bool)[:, None, None, :]))

    def tensors(batch) -> list:
        found = [getattr(batch, f.name) for f in dataclasses.fields(batch)]
        for group in getattr(batch, "groups", []):
            found += [group.slots, group.mask]
        return [t for t in found if isinstance(t, torch.Tensor)]

    for batch in (padded, packed):
        moved = batch.to("meta")
        assert tensors(moved) and all(t.device.type == "meta" for t in tensors(moved))
        assert len(tensors(moved)) == len(tensors(batch))
    pinned: list = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t: pinned.append(t) or t)
    for batch in (padded, packed):
        pinned.clear()
        batch.to("cuda", pin=True)
        assert len(pinned) == len(tensors(batch))


@pytest.mark.slow
def test_the_start_up_budget_comes_from_free_memory(tiny_model):
    gpu = SimulatedGpu(GiB)
    release = Simulated(gpu).occupy(GiB // 2)  # another tenant holds half the card
    engine, sim = _gpu_engine(tiny_model, gpu, memory_fraction=0.5)
    assert engine.token_budget == _expected_budget(GiB // 2, gpu.bytes_per_token, 0.5)
    release()
    big, _ = _gpu_engine(tiny_model, SimulatedGpu(1024 * GiB))
    assert big.token_budget == GPU_TOKEN_BUDGET_CAP  # larger batches gain nothing


def test_a_probe_that_never_fits_says_what_to_do():
    sim = Simulated(SimulatedGpu(GiB))
    calls = []

    def forward(rows: int, width: int) -> None:
        calls.append(rows)
        if len(calls) > 1:  # the measuring batch runs; every proving batch runs out
            raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(RuntimeError, match="lower --max-length"):
        probe_budget(sim, forward, 128, 0.8)
    assert calls[-1] == 1 and calls[1:] == sorted(calls[1:], reverse=True)
    assert sim.calls["empty_cache"] == len(calls)  # before probing, and after each failure


@pytest.mark.slow
def test_out_of_memory_shrinks_the_budget_retries_the_same_pairs_then_regrows(tiny_model):
    pairs = _pairs(200, seed=4)
    calm, _ = _gpu_engine(tiny_model, token_budget=4096)
    want = np.array(calm.score_rows(pairs).probs)
    engine, sim = _gpu_engine(tiny_model, token_budget=1_000_000, grow_after=2)
    # Leave room for batches of about 1,000 tokens: the oversized budget cannot fit.
    release = sim.occupy(sim.free_memory() - 1000 * sim.gpu.bytes_per_token)
    got = np.array(engine.score_rows(pairs).probs)
    stats = engine.stats()
    assert stats["oom_retries"] >= 1 and sim.calls["oom"] == stats["oom_retries"]
    assert sim.calls["empty_cache"] == stats["oom_retries"]  # the cache goes back each time
    assert stats["scored_pairs"] == len(pairs)  # nothing dropped, nothing scored twice
    assert np.abs(got - want).max() < 1e-3
    shrunk = engine.token_budget
    assert shrunk < 1000
    release()
    for seed in range(5, 12):
        engine.score_rows(_pairs(200, seed=seed))
    assert engine.token_budget > 4 * shrunk
    assert engine.stats()["token_budget_max"] == 1_000_000


def test_one_pair_that_does_not_fit_is_a_systemic_error(tiny_model):
    engine, sim = _gpu_engine(tiny_model, token_budget=4096)
    sim.occupy(sim.free_memory() - 10 * sim.gpu.bytes_per_token)
    with pytest.raises(RuntimeError, match="out of cuda memory scoring a single pair"):
        engine.score_rows(_pairs(3, seed=5))


def test_peak_memory_is_counted_per_batch(tiny_model):
    engine, sim = _gpu_engine(tiny_model, token_budget=1024)
    sim.reset_peak()
    prep = engine.prepare(_pairs(100, seed=6))
    engine.forward(prep)
    largest = max(b.inputs.ids.numel() for b in prep.batches)
    assert sim.peak_memory() == largest * sim.gpu.bytes_per_token
    assert sim.allocated() == 0  # activations are freed after each call; the cache stays
    assert sim.reserved >= sim.peak_memory()


@pytest.mark.slow
def test_processes_started_one_after_another_share_the_gpu(tiny_model):
    """`--processes 2` on one GPU: the second sees what the first's allocator holds."""
    gpu = SimulatedGpu(GiB)
    first, a = _gpu_engine(tiny_model, gpu)
    second, b = _gpu_engine(tiny_model, gpu)
    assert second.token_budget < first.token_budget
    assert (first.token_budget + second.token_budget) * gpu.bytes_per_token <= GiB
    _score_at_once([first, second], [_pairs(300, seed=7), _pairs(300, seed=8)])
    assert first.stats()["oom_retries"] == second.stats()["oom_retries"] == 0


@pytest.mark.slow
def test_processes_started_together_halve_until_both_fit(tiny_model):
    """Both read the whole card free before either proves its budget: the second proving
    batch runs out of memory and halves until it fits beside the first; neither crashes."""
    gpu = SimulatedGpu(GiB)
    both_read = threading.Barrier(2, timeout=WAIT)

    class Racing(Simulated):
        def free_memory(self) -> int:
            free = super().free_memory()
            both_read.wait()
            return free

    engines: list = []
    sims = [Racing(gpu), Racing(gpu)]
    threads = [threading.Thread(target=lambda s=s: engines.append(
        Engine(*load_model(tiny_model), accelerator=s))) for s in sims]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert len(engines) == 2
    assert sum(s.calls["oom"] for s in sims) >= 1
    assert sum(e.token_budget for e in engines) * gpu.bytes_per_token <= GiB
    _score_at_once(engines, [_pairs(300, seed=9), _pairs(300, seed=10)])


def _score_at_once(engines: list[Engine], work: list[list[tuple[str, str]]]) -> None:
    done: list = []
    threads = [threading.Thread(target=lambda e=e, p=p: done.append(len(e.score_rows(p).probs)))
               for e, p in zip(engines, work)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert sorted(done) == sorted(len(p) for p in work)


def test_a_gpu_worker_prepares_the_next_batch_while_the_device_runs_one(tiny_model):
    from test_processor import Harness, ids

    gate = threading.Event()

    def held(model_call):
        def call(inputs):
            gate.wait(WAIT)
            return model_call(inputs)
        return call

    engine, sim = _gpu_engine(tiny_model, token_budget=4096, model_call=held)
    h = Harness(engine=engine)
    h.assign()
    h.send(0, ids("a", 3), "上海市浦东新区世纪大道100号", "世纪大道100号")
    h.until(lambda: h.proc.stage._busy[("in", 0)] == 1 and sim.calls["upload"] == 1,
            "A on the device")
    h.send(1, ids("b", 3), "杭州市西湖区文三路90号", "文三路90号")
    h.until(lambda: h.proc.stage.depths()["prepared"] == 1, "B prepared while A runs")
    assert (sim.calls["pin"], sim.calls["upload"]) == (2, 1)  # B tokenized and pinned
    gate.set()
    h.until(lambda: len(h.broker.visible("out")) == 6, "every answer")
    assert h.stop() == 0


def test_cuda_calls_torch_cuda(monkeypatch):
    """The real accelerator's calls, each recorded: also fails if this torch renamed one."""
    seen: list = []
    for name, value in (("synchronize", None), ("empty_cache", None),
                        ("mem_get_info", (5, 9)), ("reset_peak_memory_stats", None),
                        ("memory_allocated", 3), ("max_memory_allocated", 4)):
        assert callable(getattr(torch.cuda, name))
        monkeypatch.setattr(torch.cuda, name,
                            lambda *a, name=name, value=value: seen.append(name) or value)
    cuda = Cuda()
    cuda.synchronize()
    cuda.empty_cache()
    cuda.reset_peak()
    assert (cuda.free_memory(), cuda.allocated(), cuda.peak_memory()) == (5, 3, 4)
    assert seen == ["synchronize", "empty_cache", "reset_peak_memory_stats", "mem_get_info",
                    "memory_allocated", "max_memory_allocated"]
    moves: list = []
    batch = SimpleNamespace(to=lambda *a, **k: moves.append((a, k)) or batch)
    cuda.pin(batch)
    cuda.upload(batch)
    assert moves == [(("cuda",), {"pin": True}), (("cuda",), {})]
    made: list = []
    monkeypatch.setattr(torch, "empty", lambda n, **k: made.append((n, k)) or object())
    cuda.occupy(1024)()
    assert made == [(1024, {"dtype": torch.uint8, "device": "cuda"})]
    assert seen[-1] == "empty_cache"  # giving the ballast back returns it to the device


def test_auto_picks_cuda_where_torch_sees_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == resolve_device("cuda") == "cuda"
    assert isinstance(accel_mod.accelerator_for("cuda"), Cuda)
    assert type(accel_mod.accelerator_for("cpu")) is accel_mod.Accelerator
    from mgeo.plots import machine_name

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    assert machine_name("cuda") == "NVIDIA H100 80GB HBM3"


def test_the_profile_counts_device_time_once():
    """On CUDA a CPU operator's self device time holds the kernels it launched, which are
    rows of their own: only the kernel rows count."""
    from pathlib import Path

    from mgeo.tools.profile import summarize

    kernel, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU

    def row(key, device_type, device_us, cpu_us=0.0):
        return SimpleNamespace(key=key, count=10, device_type=device_type,
                               self_device_time_total=device_us, self_cpu_time_total=cpu_us,
                               cpu_time_total=cpu_us)

    rows = [row("aten::addmm", cpu, 600, 50), row("sm90_xmma_gemm", kernel, 600),
            row("aten::softmax", cpu, 300, 20), row("softmax_kernel", kernel, 300),
            row("mgeo.forward", cpu, 0, 80_000), row("mgeo.to_device", cpu, 0, 1_000)]
    engine = SimpleNamespace(device="cuda", lanes=1, lane_threads=16)
    out = summarize(rows, engine, Path("t.json"), pairs=100, wall=0.01, tokenize=0.001)
    assert out["device_busy"] == pytest.approx(0.09)  # 900 us of kernels in 10 ms, not 1800
    assert [op["op"] for op in out["top_ops"]] == ["sm90_xmma_gemm", "softmax_kernel"]
    assert out["limit"].startswith("the host: the GPU idles 91%")
    assert out["stage_seconds"]["forward"] == 0.08


def test_the_memory_drill_takes_what_one_allocation_gets():
    """Free memory is rarely one block: the drill's ballast asks for less until it fits."""
    from mgeo.tools.pressure import _occupy

    sim = Simulated(SimulatedGpu(GiB))
    release, taken = _occupy(sim, GiB + 3 * 2**20, 2**20)
    assert taken == GiB and sim.free_memory() == 0
    release()
    assert sim.free_memory() == GiB
