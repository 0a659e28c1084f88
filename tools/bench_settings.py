"""The options of `mgeo bench`, beside the bench (tools/bench.py and the modes it runs).

Like every settings module it imports no torch: `mgeo bench --help` and a config file's check
need only pydantic. The engine's options come from `EngineSettings`, the groups of --help from
mgeo.settings.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from mgeo.settings import BENCHMARK, EngineSettings, metavar, split_commas

# `--json` is the flag people expect; the field it needs shadows BaseModel.json (deprecated).
warnings.filterwarnings("ignore", message='Field name "json"', category=UserWarning)


Share = Annotated[float, Field(gt=0, le=1)]


class BenchSettings(EngineSettings):
    """`mgeo bench`: the reference loop against the engine, same pairs, same model."""

    cli_group: ClassVar[str] = BENCHMARK

    pairs: int = Field(2000, ge=32, description="Pairs to score in each configuration.")
    seed: int = Field(0, description="Seed of the synthetic pairs and random model.")
    pairs_from: Literal["traffic", "synth"] = Field(
        "traffic",
        description="Where the pairs come from: traffic, unlabelled pairs with real traffic's "
                    "lengths that every install ships (mgeo.traffic); synth, the labelled "
                    "training generator (needs the training extra).")
    json: bool = Field(False, description="Print one JSON object instead of a table.")
    plot: Path | None = Field(
        Path("bench.png"), description="Where the PNG plot goes (empty to skip).")
    ref_batch: int = Field(32, ge=1, description="Batch size of the reference loop.")
    rounds: int = Field(
        1, ge=1, le=20,
        description="Timed passes of each configuration; the fastest counts (a shared machine "
                    "only ever slows a pass down).")
    profile: Path | None = Field(
        None,
        description="Also run the engine once more under torch.profiler: write a Chrome/Perfetto "
                    "trace to this file (open it at ui.perfetto.dev) and add to the report what "
                    "limits the run: device busy share, time per stage, top operators.")
    host_path: bool = Field(
        False,
        description="Instead, measure the host path: with a nearly free model (or --model), the "
                    "raw Rust tokenizer, the transformers call, the engine alone, and `mgeo "
                    "worker` end to end through the embedded broker (pre-filled topic, rate "
                    "from the answers' record timestamps) with 1 and more processes.")
    latency: bool = Field(
        False,
        description="Instead, measure latency: capacity from a drained backlog, then a steady "
                    "producer at 1/10, 1/3 and 2/3 of it; p50/p90/p99 from the client and from "
                    "the worker's own histogram (default model, or --model).")
    # NoDecode: the environment's MGEO_...=1 is a list of one, not the JSON number 1.
    processes_list: Annotated[list[int] | None, NoDecode] = Field(
        None, json_schema_extra=metavar("N,..."),
        description="--host-path: worker process counts to run end to end (default: 1, 2 and "
                    "4, as far as the cores go).")
    e2e_pairs: int | None = Field(
        None, ge=100, json_schema_extra=metavar("N"),
        description="--host-path: pairs through each end-to-end worker run; --latency: the "
                    "backlog that measures capacity (default: --pairs).")
    phase_seconds: float = Field(
        20.0, gt=0, json_schema_extra=metavar("SECONDS"),
        description="--latency: how long each steady-load phase runs.")
    latency_shares: Annotated[list[Share] | None, NoDecode] = Field(
        None, json_schema_extra=metavar("SHARE,..."),
        description="--latency: the steady loads, as shares of the measured capacity, each on "
                    "fresh topics with a fresh worker (default: 0.1, 1/3 and 2/3).")
    max_batch_pairs: int = Field(
        4096, ge=1, json_schema_extra=metavar("N"),
        description="--host-path: pairs per engine call, as the worker hands them over.")
    memory_pressure: bool = Field(
        False,
        description="Instead, drill the adaptive token budget on real GPU memory: start from an "
                    "oversized budget (--token-budget, default 4x the start-up one) with the "
                    "GPU nearly full, so that batches run out of memory; every pair must still "
                    "be scored as without pressure, the budget must shrink, then regrow once "
                    "the memory is back.")
    simulate_gpu: bool = Field(
        False,
        description="Run on a GPU simulated on the CPU (CUDA's rules, fp16, 256 MiB of memory "
                    "with the caching allocator's bookkeeping) instead of --device: what "
                    "bench/gpu-run --cpu uses to rehearse the GPU steps. Slow: fp16 on a CPU.")

    _split_processes = field_validator("processes_list", mode="before")(split_commas)
    _split_shares = field_validator("latency_shares", mode="before")(split_commas)
