"""What ETL hosts and downstream services import: publishing requests and reading results.

Torch-free: `pip install mgeo-stream` is enough.

    from mgeo.producer import publish_pairs, ResultReader
"""

from mgeo.producer.publish import Publisher, PublishReport, publish_pairs
from mgeo.producer.results import ResultReader

__all__ = ["PublishReport", "Publisher", "ResultReader", "publish_pairs"]
