"""What every `mgeo bench` mode runs on, and how two runs' scores compare: the pairs, the model,
a GPU simulated on the CPU. Shared by tools/bench.py, hostpath.py, latency.py and pressure.py,
which import it and never each other."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mgeo import traffic
from mgeo.tools.models import bert_base

if TYPE_CHECKING:
    from mgeo.tools.bench_settings import BenchSettings
    from mgeo.worker.inference.accelerator import Accelerator

SIMULATED_GPU_BYTES = 256 * 2**20  # small: the start-up probe runs a batch that fills it


def make_pairs(n: int, seed: int, source: str = "traffic") -> tuple[list[dict], str]:
    """`n` pairs with real traffic's lengths and where they came from: `mgeo.traffic`, which
    every install ships, or (source "synth") the labelled training generator, which needs the
    `training` extra."""
    if source == "synth":
        try:
            from mgeo.training.synth import generate_pairs

            return generate_pairs(n, seed), f"mgeo.training.synth.generate_pairs(seed={seed})"
        except ImportError as exc:  # the module, or the data package it loads when called
            raise ValueError(f"--pairs-from synth needs the training generator ({exc.name} is "
                             "not installed): pip install 'mgeo-stream[training]', or leave "
                             "--pairs-from at traffic") from None
    return traffic.pairs(n, seed), f"{traffic.DESCRIPTION}, seed {seed}"


def bench_model(s: "BenchSettings") -> tuple[Path, str]:
    """--model, else a cached random BERT-base (MGeo's shape); and a description of it."""
    if s.model:
        return Path(s.model), str(s.model)
    return bert_base(s.seed)


def simulated_gpu(s: "BenchSettings") -> "Accelerator | None":
    """With --simulate-gpu, the accelerator of a GPU simulated on the CPU, else None."""
    from mgeo.worker.inference.accelerator import Simulated, SimulatedGpu

    return Simulated(SimulatedGpu(SIMULATED_GPU_BYTES)) if s.simulate_gpu else None


def agreement(probs: np.ndarray, other: np.ndarray, positive: list[int]) -> dict:
    """How far two runs' probabilities (pairs x labels, same label order) are apart."""
    same = probs.argmax(1) == other.argmax(1)
    return {"max_abs_score_diff": float(np.abs(probs[:, positive].sum(1)
                                               - other[:, positive].sum(1)).max()),
            "max_abs_prob_diff": float(np.abs(probs - other).max()),
            "label_agreement": float(same.mean()),
            "label_disagreements": int((~same).sum())}
