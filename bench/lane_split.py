"""What cutting a small call across the CPU lanes costs (bench/RESULTS.md, 2026-12-08): the
engine (two lanes of one thread) scoring calls of 4 to 400 pairs, each call cut into lanes
(as before: `LANE_TOKENS` 1) or only where every share holds `LANE_TOKENS` tokens (now); CPU
milliseconds a pair (this process, all threads) and wall milliseconds a call, the two policies
alternated. Usage: python bench/lane_split.py [MODEL_DIR or ''] [PAIRS_PER_SIZE]"""

import sys
import time

from mgeo.tools.workload import make_pairs
from mgeo.worker.inference import layouts
from mgeo.worker.inference.engine import Engine
from mgeo.worker.inference.model import default_model_dir, load_serving

SIZES = (4, 8, 16, 32, 400)


def main() -> None:
    model = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else default_model_dir()
    per_size = int(sys.argv[2]) if len(sys.argv) > 2 else 2400
    rows, _ = make_pairs(min(20_000, max(2_000, 10 * per_size)), 0)  # calls cycle through them
    pairs = [(r["addr1"], r["addr2"]) for r in rows]
    engine = Engine(*load_serving(model), device="cpu", batch_layout="packed", lanes=2,
                    threads=2)
    engine.score(pairs[:64])  # warm up
    now = layouts.LANE_TOKENS
    sums: dict[tuple[int, int], list[float]] = {}
    at = 0
    for rnd in range(4):
        for policy in ((1, now) if rnd % 2 == 0 else (now, 1)):  # neither always first
            layouts.LANE_TOKENS = policy
            for n in SIZES:
                calls = max(3, per_size // n)
                cpu, wall = time.process_time(), time.perf_counter()
                for _ in range(calls):
                    # Pairs not scored before (the engine caches answers).
                    engine.score([(a + str(rnd), b) for a, b in pairs[at:at + n]])
                    at = (at + n) % (len(pairs) - n)
                got = sums.setdefault((policy, n), [0.0, 0.0, 0])
                got[0] += time.process_time() - cpu
                got[1] += time.perf_counter() - wall
                got[2] += calls
    layouts.LANE_TOKENS = now
    engine.close()
    print("pairs a call | every call cut: CPU ms/pair, wall ms/call | "
          f"cut from {now} tokens: CPU ms/pair, wall ms/call")
    for n in SIZES:
        cells = []
        for policy in (1, now):
            cpu, wall, calls = sums[(policy, n)]
            cells.append(f"{1e3 * cpu / (calls * n):.2f}, {1e3 * wall / calls:.1f}")
        print(f"{n} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
