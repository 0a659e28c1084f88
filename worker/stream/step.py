"""The one contract of the worker's steps, as Arroyo's processing strategies have it.

A step takes work by `submit` and hands it to the next step it was given; what it hands on is
immutable. The Kafka loop calls `poll` each tick, `close` when nothing more will come and
`join` to wait for the end. How the steps are wired: compose.py.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Step(Protocol):
    def submit(self, item: Any) -> None:
        """Take one piece of work; never waits for the work to be done."""

    def poll(self) -> None:
        """(Kafka loop, every tick) Do what is due on the loop's thread."""

    def close(self) -> None:
        """Nothing more will be submitted: finish what was, then stop."""

    def join(self, timeout: float) -> bool:
        """Wait at most `timeout` seconds for the step to end; whether it did."""
