#!/usr/bin/env python3
"""Whether two published runs of one date have the same outputs, byte for byte.

usage: same_outputs.py ROOT_A ROOT_B DATE

Compares customer_segments, segment_summary, segment_transitions and the exports named by each
root's manifest for DATE, by file name with the run id taken out. Prints "identical (N files)"
and exits 0, or names the first difference and exits 1.
"""
import json
import os
import sys


def published(root, date):
    with open(os.path.join(root, "_runs", date, "manifest.json"), encoding="utf-8") as f:
        m = json.load(f)
    files = {}
    for table in ("customer_segments", "segment_summary", "segment_transitions", "exports"):
        for url in m["outputs"].get(table, []):
            path = url[len("file://"):] if url.startswith("file://") else url
            name = os.path.basename(path).replace(m["run_id"], "RUN")
            with open(path, "rb") as f:
                files[f"{table}/{name}"] = f.read()
    return files


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    a, b = published(sys.argv[1], sys.argv[3]), published(sys.argv[2], sys.argv[3])
    if sorted(a) != sorted(b):
        print(f"different files: {sorted(set(a) ^ set(b))}")
        sys.exit(1)
    for name in sorted(a):
        if a[name] != b[name]:
            print(f"{name} differs")
            sys.exit(1)
    print(f"identical ({len(a)} files)")


if __name__ == "__main__":
    main()
