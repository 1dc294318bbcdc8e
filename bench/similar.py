"""Similar-item lists (the score step's ``similar`` table): seconds and peak memory. Prints JSON.

    .venv/bin/python bench/similar.py [--items 20000,200000] [--neighbours 100] [--n 100]

For each catalogue size, in a fresh process: a random sparse similarity with ``--neighbours``
entries per item (as CooccurrenceKNN keeps), 50 categories and 5% unavailable items, then
``jobs.score.similar_item_blocks`` written by ``serving.publish.write_list_blocks`` (what the
score step runs), and, for comparison, the same lists as one Python row per item written by
``write_list_table``. Reports seconds, items per second and the process's peak RSS growth.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def one(items: int, neighbours: int, n: int, how: str) -> dict:
    import numpy as np
    import scipy.sparse as sp
    from freshrec.jobs.score import similar_item_blocks, similar_items
    from freshrec.models.data import Catalogue

    from freshrec.serving.publish import write_list_blocks, write_list_table

    rng = np.random.default_rng(0)
    rows = np.repeat(np.arange(items), neighbours)
    sim = sp.csr_matrix((rng.random(len(rows)).astype(np.float32), (rows, rng.integers(0, items, len(rows)))), shape=(items, items))
    catalogue = Catalogue(item_ids=np.array([f"i{k}" for k in range(items)], dtype=object),
                          category=np.array([f"c{k % 50}" for k in range(items)], dtype=object), price=np.ones(items))
    popularity = rng.random(items)
    unavailable = rng.choice(items, items // 20, replace=False)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if how == "blocks":
            write_list_blocks(Path(tmp), "item_id", similar_item_blocks(sim, catalogue, popularity, n, unavailable))
        else:
            write_list_table(Path(tmp), "item_id", list(similar_items(sim, catalogue, popularity, n, unavailable)))
    seconds = time.perf_counter() - started
    return {"items": items, "how": how, "seconds": round(seconds, 2), "items_per_second": round(items / seconds),
            "peak_rss_growth_mb": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", default="20000,200000")
    parser.add_argument("--neighbours", type=int, default=100)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--one", nargs=2, metavar=("ITEMS", "HOW"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(int(args.one[0]), args.neighbours, args.n, args.one[1])))
        return
    runs = []
    for items in (int(x) for x in args.items.split(",")):
        for how in ("blocks", "rows"):  # each in its own process: peak RSS is per process
            out = subprocess.run([sys.executable, __file__, "--one", str(items), how, "--neighbours", str(args.neighbours),
                                  "--n", str(args.n)], capture_output=True, text=True, check=True)
            runs.append(json.loads(out.stdout))
    print(json.dumps({"benchmark": "similar_items", "neighbours": args.neighbours, "n": args.n, "runs": runs,
                      "cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()]}, indent=2))


if __name__ == "__main__":
    main()
