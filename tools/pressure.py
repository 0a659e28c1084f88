"""`mgeo bench --memory-pressure`: the adaptive token budget against a real out-of-memory error.

1. calm: the engine as the worker starts it (budget from the start-up probe) scores the pairs;
   its scores are the reference and its peak is what a batch at that budget needs;
2. pressed: device memory is taken (a plain allocation, as another tenant of the card would)
   until only a quarter of that peak is free, and a second engine on the same model starts
   from an oversized budget (--token-budget, default 4x the calm one): its batches must run
   out of memory, the budget must shrink, and every pair must still be scored, as calm;
3. regrow: the memory is given back and the same engine scores the pairs again, a few times:
   its budget must grow back (it may run out again at the card's real limit, and shrink).

On a GPU the memory and the errors are real (`Accelerator.occupy`). With --simulate-gpu (what
`bench/gpu-run --cpu` rehearses) they come from `accelerator.Simulated`. The drill passes when
no call crashed, every pair was scored in both runs, the scores agree, and the budget shrank.
"""

from __future__ import annotations

import time

import numpy as np

from mgeo.tools.bench_settings import BenchSettings
from mgeo.tools.workload import agreement, bench_model, make_pairs, simulated_gpu

GROW_AFTER = 2      # good batches before the budget grows 10%: quick, for the drill
REGROW_PASSES = 12  # at most, and at most REGROW_SECONDS
REGROW_SECONDS = 60.0


def run_pressure(s: BenchSettings) -> dict:
    from mgeo.worker.inference.accelerator import accelerator_for
    from mgeo.worker.inference.device import resolve_device
    from mgeo.worker.inference.engine import Engine
    from mgeo.worker.inference.model import load_serving

    accel = simulated_gpu(s)
    if accel is None:
        device = resolve_device(s.device)
        if device != "cuda":
            raise ValueError("--memory-pressure needs a GPU: run it with --device cuda, or "
                             "rehearse it here with --simulate-gpu")
        accel = accelerator_for(device)
    rows, source = make_pairs(s.pairs, s.seed, s.pairs_from)
    pairs = [(r["addr1"], r["addr2"]) for r in rows]
    model_dir, model_desc = bench_model(s)
    tokenizer, model, id2label = load_serving(model_dir)

    def engine(budget: int | None, grow_after: int = 32) -> Engine:
        return Engine(tokenizer, model, id2label, precision=s.precision,
                      max_length=s.max_length, token_budget=budget,
                      memory_fraction=s.memory_fraction, grow_after=grow_after,
                      accelerator=accel)

    calm = engine(None)
    pos = [calm.labels.index(p) for p in calm.positive]
    base = accel.allocated()
    accel.reset_peak()
    want = np.array(calm.score_rows(pairs).probs)
    calm_peak = (accel.peak_memory() or base) - base
    accel.empty_cache()  # what calm's allocator cached goes back, for the ballast to take
    report: dict = {
        "device": accel.name, "simulated": accel.torch_device != accel.name,
        "model": model_desc, "pairs": len(pairs), "pair_source": source,
        "precision": calm.precision, "start_budget": calm.token_budget,
        "calm_peak_bytes": calm_peak, "ok": False}
    pressed = engine(s.token_budget or 4 * calm.token_budget, GROW_AFTER)
    report["oversized_budget"] = pressed.token_budget
    headroom = max(calm_peak // 4, 1)
    release, ballast = _occupy(accel, max(0, (accel.free_memory() or 0) - headroom), headroom)
    report.update(headroom_bytes=headroom, ballast_bytes=ballast)
    try:
        report["pressed"] = _pass(pressed, pairs, want, pos)
    finally:
        release()
    report["regrow"] = []
    started = time.monotonic()
    while (len(report["regrow"]) < REGROW_PASSES and time.monotonic() - started < REGROW_SECONDS
           and pressed.token_budget < pressed.stats()["token_budget_max"]):
        report["regrow"].append(_pass(pressed, pairs, want, pos))
        if "crashed" in report["regrow"][-1]:
            break
    passes = [report["pressed"], *report["regrow"]]
    report["budget_min"] = min(p["budget_after"] for p in passes)
    report["budget_final"] = pressed.token_budget
    report["shrank"] = report["pressed"].get("oom_retries", 0) > 0
    report["regrew"] = report["budget_final"] > report["budget_min"]
    report["ok"] = report["shrank"] and all(
        "crashed" not in p and p["complete"] and p["label_agreement"] >= 0.999 for p in passes)
    return report


def _occupy(accel, nbytes: int, step: int):
    """Take `nbytes` of device memory, or as much less (by `step`) as one allocation gets:
    free memory is rarely one block."""
    from mgeo.worker.inference.memory import OOM

    for _ in range(16):
        try:
            return accel.occupy(nbytes), nbytes
        except OOM:
            nbytes = max(0, nbytes - step)
    raise RuntimeError("could not take the GPU's free memory for the drill")


def _pass(engine, pairs, want: np.ndarray, pos: list[int]) -> dict:
    """One call of every pair: what happened to the budget, and how the scores compare."""
    before = engine.stats()
    budget = engine.token_budget
    started = time.perf_counter()
    try:
        got = np.array(engine.score_rows(pairs).probs)
    except Exception as exc:  # noqa: BLE001 - what the drill is there to catch, reported
        return {"crashed": f"{type(exc).__name__}: {exc}", "budget_before": budget,
                "budget_after": engine.token_budget, "complete": False}
    after = engine.stats()
    return {"budget_before": budget, "budget_after": engine.token_budget,
            "oom_retries": after["oom_retries"] - before["oom_retries"],
            "batches": after["batches"] - before["batches"],
            "seconds": round(time.perf_counter() - started, 3),
            "complete": len(got) == len(pairs)
            and after["scored_pairs"] - before["scored_pairs"] == len(pairs),
            **agreement(got, want, pos)}


def print_pressure(r: dict) -> None:
    where = "a GPU simulated on the CPU" if r["simulated"] else r["device"]
    print(f"mgeo bench --memory-pressure: {r['pairs']} pairs, {r['model']}, {r['precision']}, "
          f"on {where}")
    print(f"  calm: start-up budget {r['start_budget']} tokens, peak "
          f"{r['calm_peak_bytes'] / 2**20:.0f} MiB of activations")
    print(f"  pressed: {r['ballast_bytes'] / 2**30:.2f} GiB taken, "
          f"{r['headroom_bytes'] / 2**20:.0f} MiB left; budget from {r['oversized_budget']}")
    for name, p in [("pressed", r["pressed"])] + [(f"regrow {i + 1}", p)
                                                 for i, p in enumerate(r["regrow"])]:
        if "crashed" in p:
            print(f"  {name:<10} CRASHED: {p['crashed']}")
            continue
        print(f"  {name:<10} budget {p['budget_before']:>8} -> {p['budget_after']:>8}, "
              f"{p['oom_retries']} out-of-memory retries, {p['batches']} batches, "
              f"{'all' if p['complete'] else 'NOT all'} pairs, label agreement "
              f"{p['label_agreement']:.2%}, max |score diff| {p['max_abs_score_diff']:.1e}")
    print(f"  shrank: {r['shrank']}; regrew: {r['regrew']} (lowest {r['budget_min']}, final "
          f"{r['budget_final']}); {'PASSED' if r['ok'] else 'FAILED'}")
