"""The inference part of the worker: engine, batching, tokenization, device and precision, model
loading and conversion. It knows nothing of Kafka.

`engine.Engine` is composed of one piece per concern: the pair encoder (`tokenize.py`), a batch
layout that plans and lays out batches (`layouts.py`: padded, or packed with `packed.py`), the
model call (`layouts.ClassifierCall`, or what a caller injects), the device half that runs
batches with out-of-memory retries (`executor.py`), a runner that says on which threads they
run (`runners.py`: inline, or lanes on a CPU) and the accelerator every device call goes
through (`accelerator.py`).

Torch's CPU threads keep OpenMP's default wait policy (they spin a while between operators,
then sleep). On the 2-core CI machine, with the broker and the load on the same cores, that
default answered 600 requests/s with the demonstration model at p50 43-46 ms and p99 94-99 ms;
a short spin (`GOMP_SPINCOUNT=10000`) at p50 87-94 and p99 216-292; no spin at all
(`GOMP_SPINCOUNT=0`) at p50 47-54 and p99 132-142. Set `OMP_WAIT_POLICY` or `GOMP_SPINCOUNT`
in the environment to choose otherwise.
"""
