"""Backlog capacity of this checkout's worker beside an older commit's, in one sitting.

    git worktree add /tmp/old 5240506        # the commit to compare with
    python bench/compare_capacity.py --old-tree /tmp/old --pairs 20000
    # or the older checkout's own environment (its mgeo installed there, editable or not):
    python bench/compare_capacity.py --old-tree /tmp/old --old-python /tmp/old/.venv/bin/python \
        --old-module mgeo.tools.cli

Each worker (old, new, then new with each --processes value) drains the same pre-filled topic
of generated pairs on its own embedded broker, with the same model (the bundled default unless
--model); the rate is read from the answers' record timestamps after the first 10%. Worker
settings are each commit's defaults. Before the layout change of 2026-11 the old tree's CLI is
the module `mgeo.cli`; --old-module names another.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mgeo.tools.bench import make_pairs
from mgeo.tools.broker import EmbeddedBroker
from mgeo.tools.harness import Answers, Topics, Worker, prefill, steady_rate
from mgeo.worker.inference.model import default_model_dir


def drain(pairs, model: Path, *, old_tree: Path | None, old_module: str, partitions: int,
          old_python: str = sys.executable, **settings) -> float:
    with EmbeddedBroker() as broker:
        topics = Topics.fresh(broker.bootstrap, partitions)
        prefill(broker.bootstrap, topics.input, pairs)
        if old_tree is not None:
            worker = Worker(broker.bootstrap, topics, model,
                            argv=[old_python, "-m", old_module, "worker"],
                            env_extra={"PYTHONPATH": str(old_tree)}, cwd=old_tree, **settings)
        else:
            worker = Worker(broker.bootstrap, topics, model, **settings)
        try:
            worker.wait_assigned()
            answers = Answers(broker.bootstrap, topics.output, partitions)
            stamps = answers.read(len(pairs), timeout=180)
            answers.close()
        finally:
            worker.stop()
    if len(stamps) < len(pairs):
        raise SystemExit(f"only {len(stamps)} of {len(pairs)} answers came back")
    return steady_rate(list(stamps.values()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old-tree", type=Path, required=True,
                    help="a checkout of the older commit (git worktree add DIR COMMIT)")
    ap.add_argument("--old-module", default="mgeo.cli", help="the older commit's CLI module")
    ap.add_argument("--old-python", default=sys.executable,
                    help="the Python that runs the older worker (default: this one, with "
                         "--old-tree first on PYTHONPATH)")
    ap.add_argument("--pairs", type=int, default=20_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--processes", default="2", help="extra runs of the new worker, N,...")
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=3)
    a = ap.parse_args()
    rows, _ = make_pairs(a.pairs, a.seed)
    pairs = [(r["addr1"], r["addr2"]) for r in rows]
    model = a.model or default_model_dir()
    common = dict(model=model, old_module=a.old_module, partitions=a.partitions)
    report = {"pairs": len(pairs), "model": str(model),
              "old": drain(pairs, old_tree=a.old_tree.resolve(), old_python=a.old_python,
                           **common),
              "new": drain(pairs, old_tree=None, **common)}
    for n in filter(None, a.processes.split(",")):
        report[f"new, {n} processes"] = drain(pairs, old_tree=None, processes=n, **common)
    for k, v in report.items():
        print(f"{k:>20}: {round(v, 1) if isinstance(v, float) else v}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
