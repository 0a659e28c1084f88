"""Shared by everything that draws or describes where it ran: a pyplot that is there or says
how to get it, one bar chart, and the machine's name. matplotlib and torch are imported only
when asked for."""

from __future__ import annotations

import logging
import platform
import sys
from pathlib import Path
from typing import Sequence

log = logging.getLogger("mgeo.plots")


def pyplot():
    """matplotlib.pyplot on the file-only backend, or None (logged) when it is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plot (pip install 'mgeo-stream[plot]')")
        return None
    return plt


def save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def bar_chart(path: Path, names: Sequence[str], values: Sequence[float], *, ylabel: str,
              title: str, reference: float | None = None, reference_label: str = "",
              fmt: str = "%.0f") -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(names)), 4.2))
    bars = ax.bar(names, values, color="#2a7ab9")
    ax.bar_label(bars, fmt=fmt)
    if reference is not None:
        ax.axhline(reference, color="#999999", linestyle="--", linewidth=1)
        ax.text(len(names) - 0.5, reference, f" {reference_label}", va="bottom", ha="right",
                color="#666666", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    return save(fig, path)


def machine_name(device: str = "cpu") -> str:
    """The GPU's name on cuda (torch already loaded), else the CPU's model name."""
    torch = sys.modules.get("torch")
    if device == "cuda" and torch is not None and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
