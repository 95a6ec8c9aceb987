"""The retrain benchmarks of one run: model training speed, then query latency.

    python bench/retrain.py

Runs ``bench/retrain_models.py`` (LightGCN vs PyG's stock LightGCN on ``edge_index`` on a
1M-interaction synthetic graph, PinSage epoch time and walk throughput) and then
``bench/query_latency.py`` (recommend/similar p50/p99 at 100k items), each with its defaults;
run either script alone for its options.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import query_latency  # noqa: E402
import retrain_models  # noqa: E402

if __name__ == "__main__":
    sys.argv = sys.argv[:1]
    retrain_models.main()
    query_latency.main()
