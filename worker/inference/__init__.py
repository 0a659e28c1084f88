"""The inference part of the worker: engine, batching, tokenization, device and precision, model
loading and conversion. It knows nothing of Kafka.

Importing it before torch makes torch's CPU threads wait for work without spinning
(`OMP_WAIT_POLICY=PASSIVE`, unless the environment says otherwise). A spinning thread keeps its
core busy between operators, and the worker's own threads (tokenizing, Kafka, encoding) need
those cores: on the 2-core CI machine the engine scored ~800 pairs/s with spinning threads and
~23,000 without, under the same load.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
