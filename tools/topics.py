"""`mgeo topics create`: the three topics a fleet reads and writes.

`mgeo produce` refuses to publish into a topic that does not exist, and many brokers (the
embedded one included) never create one by themselves, so a first run starts here. Topics that
exist are left as they are; what each has is printed, so a topic made earlier with another
partition count shows.
"""

from __future__ import annotations

from mgeo.kafka import check_reachable, create_topics, partitions_of
from mgeo.settings import TopicsSettings


def run(s: TopicsSettings) -> int:
    conf = s.client_config("admin")
    wanted = {s.input_topic: s.partitions, s.output_topic: s.partitions, s.dlq_topic: 1}
    check_reachable(conf)  # one line after 10 s, where creating would wait 30 and time out
    create_topics(conf, wanted, replication_factor=s.replication_factor)
    for name in wanted:
        print(f"{name}: {len(partitions_of(conf, name))} partitions", flush=True)
    return 0
