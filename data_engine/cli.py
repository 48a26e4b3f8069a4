"""`hv schema` and `hv shards` (the data contract), `hv curate` when the curation DAG is installed.

hv schema                      # human summary: keypoint groups, subsets, class vocabularies
hv schema --format json        # the whole schema as one JSON object
hv shards inspect 'out/shards/*.tar'
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections import Counter


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("schema", help="print the keypoint and class schema")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=_schema)

    shards = subparsers.add_parser("shards", help="work with WebDataset shards")
    shards_sub = shards.add_subparsers(dest="shards_command", metavar="COMMAND", required=True)
    inspect = shards_sub.add_parser("inspect", help="count, describe and validate every sample of shards")
    inspect.add_argument("paths", nargs="+", metavar="PATH_OR_GLOB")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")
    inspect.set_defaults(func=_inspect)

    from data_engine import coco_cli

    coco_cli.register(subparsers)

    if importlib.util.find_spec("data_engine.curate_cli") is not None:
        from data_engine import curate_cli

        curate_cli.register(subparsers)


def _schema(args: argparse.Namespace) -> int:
    from data_engine import schema

    if args.format == "json":
        print(json.dumps(schema.schema_dict()))
    else:
        print(schema.summary_text())
    return 0


def inspect_shards(paths: list[str]) -> dict:
    """Per-shard sample counts, member types and sizes, and every bad sample (key + reason), duplicate keys
    across the whole set included (each copy after the first is a bad sample)."""
    from data_engine import shards
    from data_engine.sample import SampleError, decode

    report: dict = {"shards": [], "bad": [], "samples": 0, "duplicate_keys": 0}
    first_shard: dict[str, str] = {}
    try:
        files = shards.expand(paths)
    except FileNotFoundError as e:
        report["bad"].append({"shard": None, "key": None, "reason": str(e)})
        return report
    for path in files:
        members_count: Counter[str] = Counter()
        members_bytes: Counter[str] = Counter()
        count = 0
        entry = {"path": path}
        try:
            for members in shards.iter_members(path):
                count += 1
                key = members["__key__"]
                if key in first_shard:
                    reason = f"{key}: duplicate key (first in {first_shard[key]})"
                    report["bad"].append({"shard": path, "key": key, "reason": reason})
                    report["duplicate_keys"] += 1
                first_shard.setdefault(key, path)
                for name, data in members.items():
                    if not name.startswith("__"):
                        members_count[name] += 1
                        members_bytes[name] += len(data)
                try:
                    decode(members)
                except SampleError as e:
                    report["bad"].append({"shard": path, "key": key, "reason": str(e)})
        except shards.ShardError as e:
            report["bad"].append({"shard": path, "key": None, "reason": str(e)})
            entry["error"] = str(e)
        entry.update(
            samples=count,
            members={k: {"count": members_count[k], "bytes": members_bytes[k]} for k in sorted(members_count)},
        )
        report["shards"].append(entry)
        report["samples"] += count
    return report


def _inspect(args: argparse.Namespace) -> int:
    report = inspect_shards(args.paths)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for entry in report["shards"]:
            members = ", ".join(f"{k} x{v['count']} ({v['bytes'] / 1e6:.2f} MB)" for k, v in entry["members"].items())
            status = f"  BROKEN: {entry['error']}" if "error" in entry else ""
            print(f"{entry['path']}: {entry['samples']} samples; {members}{status}")
        print(
            f"total: {report['samples']} samples in {len(report['shards'])} shards, {len(report['bad'])} bad "
            f"({report['duplicate_keys']} duplicate keys)"
        )
    for bad in report["bad"]:
        where = bad["shard"] or "-"
        print(f"BAD {where} key={bad['key'] or '-'}: {bad['reason']}", file=sys.stderr)
    return 1 if report["bad"] else 0
