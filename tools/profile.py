"""`mgeo bench --profile`: one more engine pass under torch.profiler, a trace file, and what
limits the run."""

from __future__ import annotations

import time
from operator import attrgetter
from pathlib import Path

import torch

from mgeo.worker.inference.engine import Engine
from mgeo.worker.inference.runners import Inline

# Stages the engine marks with torch.profiler.record_function.
_STAGES = ("mgeo.to_device", "mgeo.forward", "mgeo.to_host")


def profile_engine(engine: Engine, pairs: list[tuple[str, str]], trace: Path) -> dict:
    """One more engine pass under torch.profiler: a trace file and what limits the run.

    On CUDA the question is whether the GPU is kept busy: kernel time over wall time. Below
    about 80% the host is the limit (kernel launches in `mgeo.forward`, tokenization); above,
    the kernels are, and the top operators say which. On a CPU the operators share the cores,
    and their self time says where the cycles go."""
    from torch.profiler import ProfilerActivity, profile

    cuda = engine.device == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    before = engine.stats()["tokenize_seconds"]
    # The profiler follows the thread that starts it: the batches run on it, as on one lane.
    one_lane = Inline(engine.lane_threads, scoped=True)
    with profile(activities=activities) as prof:
        started = time.perf_counter()
        engine.forward(engine.prepare(pairs), runner=one_lane)
        engine.accel.synchronize()
        wall = time.perf_counter() - started
    # Preparing (tokenizing, padding) is timed by the engine itself.
    tokenize = engine.stats()["tokenize_seconds"] - before
    trace.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(trace))

    return summarize(prof.key_averages(), engine, trace, len(pairs), wall, tokenize)


def summarize(averages, engine: Engine, trace: Path, pairs: int, wall: float,
              tokenize: float) -> dict:
    """What limits the run, from the profiler's per-operator averages (`key_averages()`)."""
    cuda = engine.device == "cuda"
    stages = {e.key: e.cpu_time_total / 1e6 for e in averages if e.key in _STAGES}
    # Self time, in microseconds. On CUDA only the kernels' own rows count: a CPU operator's
    # self_device_time_total holds the kernels it launched, which are rows of their own too,
    # so summing every row counts device time twice.
    if cuda:
        kernel = torch.autograd.DeviceType.CUDA
        events = [e for e in averages if getattr(e, "device_type", None) == kernel]
    else:
        events = [e for e in averages if e.key not in _STAGES]
    time_of = attrgetter("self_device_time_total" if cuda else "self_cpu_time_total")
    total = sum(time_of(e) for e in events) or 1.0
    top = sorted(events, key=time_of, reverse=True)[:8]
    out = {
        "trace": str(trace),
        "pairs": pairs,
        "wall_seconds": round(wall, 4),
        "pairs_per_s": round(pairs / wall, 2),
        "stage_seconds": {"tokenize": round(tokenize, 4),
                          **{k.removeprefix("mgeo."): round(stages.get(k, 0.0), 4)
                             for k in _STAGES}},
        "top_ops": [{"op": e.key, "calls": e.count,
                     # the profiler counts microseconds: keep them, so a short op is not 0
                     "seconds": round(time_of(e) / 1e6, 6),
                     "share": round(time_of(e) / total, 4)} for e in top],
    }
    tokenize /= wall
    if cuda:
        busy = total / 1e6 / wall
        out["device_busy"] = round(busy, 4)
        if busy >= 0.8:
            out["limit"] = (f"GPU kernels: the device is busy {busy:.0%} of the wall time; "
                            f"{top[0].key} takes {time_of(top[0]) / total:.0%} of kernel time")
        else:
            launch = out["stage_seconds"]["forward"] / wall
            out["limit"] = (f"the host: the GPU idles {1 - busy:.0%} of the wall time; "
                            f"launching kernels takes {launch:.0%} of it and tokenization "
                            f"(preparing batches) {tokenize:.0%}")
    else:
        out["limit"] = (f"CPU compute on one lane of {engine.lane_threads} thread(s) "
                        f"({engine.lanes} in the worker): {top[0].key} takes "
                        f"{time_of(top[0]) / total:.0%} of operator time; tokenization "
                        f"(preparing batches) {tokenize:.0%} of the wall time")
    return out
