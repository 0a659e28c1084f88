"""The engine on the worker's own BERT against the same engine on `transformers`' model, in one
process (bench/RESULTS.md, 2026-12-07): pairs/s of each layout, best of four rounds, and what
loading the model costs each way. Usage: python bench/own_bert.py [MODEL_DIR] [PAIRS]"""

import sys
import time

from mgeo.tools.workload import make_pairs
from mgeo.worker.inference.engine import Engine
from mgeo.worker.inference.model import default_model_dir, load_model, load_serving


def main() -> None:
    model = sys.argv[1] if len(sys.argv) > 1 else default_model_dir()
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    rows, _ = make_pairs(n, 0)
    pairs = [(r["addr1"], r["addr2"]) for r in rows]
    loaders = {"transformers": load_model, "own": load_serving}
    load_model(model)  # transformers imported once, so both loads below time the load alone
    for name, load in loaders.items():
        started = time.process_time()
        load(model)
        print(f"load, {name}: {time.process_time() - started:.2f} CPU-s")
    for layout in ("padded", "packed"):
        engines = {name: Engine(*load(model), device="cpu", batch_layout=layout)
                   for name, load in loaders.items()}
        best = dict.fromkeys(engines, 0.0)
        for rnd in range(4):
            names = list(engines) if rnd % 2 == 0 else list(engines)[::-1]  # neither always first
            for name in names:
                engine = engines[name]
                # Other pairs each round (the engine caches answers), the same for both.
                batch = [(a + str(rnd), b) for a, b in pairs]
                started = time.perf_counter()
                engine.score(batch)
                best[name] = max(best[name], len(batch) / (time.perf_counter() - started))
        print(f"{layout}: " + ", ".join(f"{k} {v:,.0f} pairs/s" for k, v in best.items()))


if __name__ == "__main__":
    main()
