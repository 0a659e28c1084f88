"""The inference part of the worker: engine, batching, tokenization, device and precision, model
loading and conversion. It knows nothing of Kafka.

Importing it before torch makes torch's CPU threads (GNU OpenMP, as in torch's Linux wheels)
spin only briefly before they sleep between operators (`GOMP_SPINCOUNT=10000`, unless the
environment says otherwise). OpenMP's default spins for ~300,000 iterations, long enough to keep
a core busy between a forward's operators and beyond: the worker's own threads (tokenizing,
Kafka, encoding) need those cores, and on the 2-core CI machine, beside another busy process,
the engine scored ~800 pairs/s that way. Not spinning at all (`OMP_WAIT_POLICY=PASSIVE`) costs
a wake-up for every operator instead: on a quiet machine the demonstration model's batches of
10 pairs ran at 684 pairs/s passive, 944 with the short spin and 915 with the default; the
one-layer nearly free model then used by `mgeo bench --host-path` at 30,000, 40,000 and
38,000.
"""

import os

os.environ.setdefault("GOMP_SPINCOUNT", "10000")
