"""mgeo-stream: a Kafka worker fleet that scores Chinese address pairs with MGeo.

The import package `mgeo` is the shared base, in the repository folder `core/`: the wire format
(`mgeo.wire`), every command's settings (`mgeo.settings`), logging (`mgeo.logs`), Kafka client
helpers (`mgeo.kafka`), reading pair files (`mgeo.readers`), writing files whole and readable
(`mgeo.writers`) and plots (`mgeo.plots`). It imports none of the parts above it, which live in
their own folders:

    producer/  mgeo.producer   publishing requests, reading results (ETL hosts; no torch)
    worker/    mgeo.worker     the runtime: stream/ (Kafka, no torch), inference/ (no Kafka)
    training/  mgeo.training   synthetic pairs, training, the default model's build
    tools/     mgeo.tools      the `mgeo` command, benchmarks, the demo, the embedded broker
"""
