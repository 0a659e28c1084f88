"""Small engines for tests of the stream part: the engine protocol, no torch."""

from __future__ import annotations

import threading
from dataclasses import dataclass


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
