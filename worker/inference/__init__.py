"""The inference part of the worker: engine, batching, tokenization, device and precision, model
loading and conversion. It knows nothing of Kafka.

Torch's CPU threads keep OpenMP's default wait policy (they spin a while between operators,
then sleep). On the 2-core CI machine, with the broker and the load on the same cores, that
default answered 600 requests/s with the demonstration model at p50 43-46 ms and p99 94-99 ms;
a short spin (`GOMP_SPINCOUNT=10000`) at p50 87-94 and p99 216-292; no spin at all
(`GOMP_SPINCOUNT=0`) at p50 47-54 and p99 132-142. Set `OMP_WAIT_POLICY` or `GOMP_SPINCOUNT`
in the environment to choose otherwise.
"""
