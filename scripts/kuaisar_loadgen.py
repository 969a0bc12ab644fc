#!/usr/bin/env python3
"""Write a KuaiSAR-shaped raw log of a chosen size: a seeded load generator, not data.

    python scripts/kuaisar_loadgen.py --interactions 1000000 --out /tmp/kuaisar-1m
    gensr data prepare kuaisar --raw /tmp/kuaisar-1m --out /tmp/kuaisar-1m-data

The files have the documented KuaiSAR columns (rec_inter.csv, src_inter.csv,
item_features.csv, and user_features.csv with --user-features) and KuaiSAR's counts scaled
to --interactions rows (rec + src; 19,665,161 is the full paper size), long-tailed item
popularity, search sessions of several clicks, four category levels and word-id captions and
keywords. The users, items and clicks are random: use it to measure time and memory, never
to judge a model (see gensr.data.loadgen and docs/scale.md).
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interactions", type=int, required=True,
                        help="raw rows to write, rec + src (e.g. 20000000)")
    parser.add_argument("--out", required=True, help="directory to write the CSVs into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--days", type=int, default=19, help="days the log spans")
    parser.add_argument("--zipf", type=float, default=0.8,
                        help="exponent of the item popularity (rank^-zipf)")
    parser.add_argument("--users", type=int, default=None, help="override the scaled count")
    parser.add_argument("--items", type=int, default=None, help="override the scaled count")
    parser.add_argument("--queries", type=int, default=None, help="override the scaled count")
    parser.add_argument("--user-features", action="store_true",
                        help="also write user_features.csv")
    parser.add_argument("--chunk-rows", type=int, default=1_000_000,
                        help="rows made and written at a time (bounds memory)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    args = parser.parse_args(argv)

    from gensr.data.loadgen import generate_kuaisar
    from gensr.errors import GensrError

    try:
        summary = generate_kuaisar(
            args.out, args.interactions, seed=args.seed, days=args.days, zipf=args.zipf,
            users=args.users, items=args.items, queries=args.queries,
            user_features=args.user_features, chunk_rows=args.chunk_rows,
            overwrite=args.overwrite)
    except GensrError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
