"""Small engines for tests of the stream part: the engine protocol, no torch."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

CHARS = "北京上海市区路街道号楼栋单元室紫萱栖霞仙林文枢东西南北中山人民解放建设0123456789"


@dataclass
class Rows:
    probs: list
    truncated: list


class RuleEngine:
    """Scores by a rule (equal addresses match); fails on pairs holding `poison`; can be made
    to fail on everything (`broken`). The engine protocol the stream part drives."""

    labels = ["not_match", "partial_match", "exact_match"]
    positive = ["exact_match"]
    model_name = "rule"
    device = "cpu"
    lanes = 1

    def __init__(self, poison: str = "毒", broken: bool = False):
        self.poison, self.broken, self.calls = poison, broken, 0
        self.gate = threading.Event()
        self.gate.set()

    def prepare(self, pairs):
        return list(pairs)

    def forward(self, pairs):
        return self.score_rows(pairs)

    def score_rows(self, pairs):
        self.calls += 1
        self.gate.wait(60)
        if self.broken or any(self.poison in a or self.poison in b for a, b in pairs):
            raise RuntimeError("cannot score")
        return Rows([[0.0, 0.0, 1.0] if a == b else [1.0, 0.0, 0.0] for a, b in pairs],
                    [False] * len(pairs))


def random_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """`n` pairs of random addresses of 3 to 40 characters (the same for the same seed)."""
    rng = random.Random(seed)

    def addr() -> str:
        return "".join(rng.choice(CHARS) for _ in range(rng.randint(3, 40)))

    return [(addr(), addr()) for _ in range(n)]
