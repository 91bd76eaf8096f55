#!/usr/bin/env python3
"""Self-test of scripts/check_outputs.py: a well-formed output tree passes, broken ones fail.

usage: .venv/bin/python scripts/test_check_outputs.py [-v]

Builds small output trees with pyarrow in a temporary directory, following the CONTRACT layout,
and runs the checker on each. Ends with the line 'N passed, N failed'; exits 1 on any failure.
"""
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_outputs  # after the sys.path entry above

D = "2026-10-31"
SEGMENTS = ["Champions", "At risk", "Window shoppers"]
LIFECYCLE = ["potential", "development", "growth", "maturity", "decline", "termination"]
LOYALTY = ["none", "habitual", "preference", "committed"]


def segments_table(n=60, offset=0):
    ids = [f"C{offset + i:06d}" for i in range(n)]
    seg_id = [i % len(SEGMENTS) for i in range(n)]
    score = [((i * 37) % 100) / 100 for i in range(n)]
    return pa.table({
        "customer_id": pa.array(ids, pa.string()),
        "segment": pa.array([SEGMENTS[s] for s in seg_id], pa.string()),
        "segment_id": pa.array(seg_id, pa.int32()),
        "churn_risk_score": pa.array(score, pa.float64()),
        "churn_risk": pa.array(["high" if s >= 0.7 else "medium" if s >= 0.4 else "low" for s in score]),
        "value_score": pa.array([float(i * 3.5) for i in range(n)], pa.float64()),
        "value_segment": pa.array([["high", "medium", "low"][i % 3] for i in range(n)]),
        "lifecycle_stage": pa.array([LIFECYCLE[i % 6] for i in range(n)]),
        "loyalty_tier": pa.array([LOYALTY[i % 4] for i in range(n)]),
        "recency_days": pa.array([float(i) for i in range(n)]),
        "frequency": pa.array(list(range(n)), pa.int64()),
    })


def summary_table():
    return pa.table({
        "segment_id": pa.array(range(len(SEGMENTS)), pa.int32()),
        "segment": SEGMENTS,
        "size": pa.array([20, 20, 20], pa.int64()),
        "share": [1 / 3] * 3,
    })


def write_tree(root, run_date=D, segs=None, summary=None, manifest=None, exports=None):
    """Write one run in the CONTRACT layout; segments split over two files."""
    segs = segments_table() if segs is None else segs
    part = os.path.join(root, "customer_segments", f"run_date={run_date}")
    os.makedirs(part, exist_ok=True)
    half = segs.num_rows // 2
    pq.write_table(segs.slice(0, half), os.path.join(part, "part-0-abc.parquet"))
    pq.write_table(segs.slice(half), os.path.join(part, "part-1-abc.parquet"))
    part = os.path.join(root, "segment_summary", f"run_date={run_date}")
    os.makedirs(part, exist_ok=True)
    pq.write_table(summary_table() if summary is None else summary, os.path.join(part, "part-0-abc.parquet"))
    part = os.path.join(root, "exports", f"run_date={run_date}")
    os.makedirs(part, exist_ok=True)
    if exports is None:
        exports = {}
        for sid, name in enumerate(SEGMENTS):
            rows = [r for r in segs.to_pylist() if r["segment_id"] == sid]
            exports[f"{name.lower().replace(' ', '_')}.csv"] = "customer_id,email\n" + "".join(
                f"{r['customer_id']},{r['customer_id'].lower()}@example.com\n" for r in rows)
    for fname, text in exports.items():
        with open(os.path.join(part, fname), "w") as f:
            f.write(text)
    os.makedirs(os.path.join(root, "_runs", run_date), exist_ok=True)
    m = {"run_date": run_date, "timings": {"read": 0.5, "features": 1.25, "write": 0.1},
         "inputs": {"orders": {"files": 1, "rows": 100}}} if manifest is None else manifest
    with open(os.path.join(root, "_runs", run_date, "manifest.json"), "w") as f:
        f.write(m if isinstance(m, str) else json.dumps(m))


def write_file(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_transitions(root, n):
    part = os.path.join(root, "segment_transitions", f"run_date={D}")
    os.makedirs(part)
    pq.write_table(pa.table({"customer_id": pa.array([f"C{i:06d}" for i in range(n)], pa.string()),
                             "previous_segment_id": pa.array([0] * n, pa.int32()),
                             "segment_id": pa.array([1] * n, pa.int32())}), os.path.join(part, "part-0.parquet"))


def seg_part(root):
    return os.path.join(root, "customer_segments", f"run_date={D}")


def replace_segments(root, table):
    shutil.rmtree(seg_part(root))
    os.makedirs(seg_part(root))
    pq.write_table(table, os.path.join(seg_part(root), "part-0.parquet"))


def set_col(t, name, arr):
    return t.set_column(t.schema.get_field_index(name), name, arr)


# name -> (True if the tree must pass, else a substring of the expected FAIL line;
#          function mutating a fresh good tree at root, or None to pass the root as a file:// URL)
CASES = {
    "good tree": (True, lambda r: None),
    "good tree with an earlier run_date beside it": (
        True, lambda r: write_tree(r, run_date="2026-10-30", segs=segments_table(50, offset=5))),
    "good tree given as file:// URL": (True, None),
    "header-only export CSV (empty segment)": (
        True, lambda r: write_file(os.path.join(r, "exports", f"run_date={D}", "empty.csv"), "customer_id,email\n")),
    "empty segment_transitions partition": (True, lambda r: write_transitions(r, 0)),
    "segment_transitions with rows": (True, lambda r: write_transitions(r, 5)),
    "missing column loyalty_tier": ("required column 'loyalty_tier' missing", lambda r: replace_segments(r, segments_table().drop_columns(["loyalty_tier"]))),
    "segment_id stored as int64": (
        "'segment_id' is int64, expected int32", lambda r: replace_segments(r, set_col(segments_table(), "segment_id",
                                                     segments_table().column("segment_id").cast(pa.int64())))),
    "churn_risk_score as float32": (
        "'churn_risk_score' is float, expected float64", lambda r: replace_segments(r, set_col(segments_table(), "churn_risk_score",
                                                     segments_table().column("churn_risk_score").cast(pa.float32())))),
    "run_date stored inside the files": (
        "stores run_date inside the file", lambda r: replace_segments(r, segments_table().append_column("run_date", pa.array([D] * 60)))),
    "churn_risk_score above 1": (
        "churn_risk_score must be in [0,1]", lambda r: replace_segments(r, set_col(segments_table(), "churn_risk_score",
                                                     pa.array([1.5] + [0.1] * 59, pa.float64())))),
    "churn_risk_score NaN": (
        "NaN count 1", lambda r: replace_segments(r, set_col(segments_table(), "churn_risk_score",
                                                     pa.array([float("nan")] + [0.1] * 59, pa.float64())))),
    "null customer_id": (
        "null values (column: count) {'customer_id': 1}", lambda r: replace_segments(r, set_col(segments_table(), "customer_id",
                                                     pa.array([None] + [f"X{i}" for i in range(59)], pa.string())))),
    "duplicate customer_id": (
        "occur more than once", lambda r: replace_segments(r, set_col(segments_table(), "customer_id",
                                                     pa.array(["C000000"] * 2 + [f"X{i}" for i in range(58)])))),
    "churn_risk outside vocabulary": (
        "churn_risk has values outside", lambda r: replace_segments(r, set_col(segments_table(), "churn_risk", pa.array(["severe"] * 60)))),
    "lifecycle_stage outside vocabulary": (
        "lifecycle_stage has values outside", lambda r: replace_segments(r, set_col(segments_table(), "lifecycle_stage", pa.array(["loyal"] * 60)))),
    "segment names not one to one with ids": (
        "not one to one", lambda r: replace_segments(r, set_col(segments_table(), "segment", pa.array(["Champions"] * 60)))),
    "summary row count differs from segments": (
        "expected one row per segment", lambda r: pq.write_table(summary_table().slice(0, 2),
                                        os.path.join(r, "segment_summary", f"run_date={D}", "part-0-abc.parquet"))),
    "data file nested below the partition": (
        "readers disagree on row counts", lambda r: (os.makedirs(os.path.join(seg_part(r), "sub")),
                          os.rename(os.path.join(seg_part(r), "part-1-abc.parquet"),
                                    os.path.join(seg_part(r), "sub", "part-1-abc.parquet")))),
    "underscore-prefixed data file (hidden from pyarrow)": (
        "readers disagree on row counts", lambda r: os.rename(os.path.join(seg_part(r), "part-1-abc.parquet"),
                                   os.path.join(seg_part(r), "_part-1-abc.parquet"))),
    "export with an unknown customer_id": (
        "are not in customer_segments", lambda r: write_file(os.path.join(r, "exports", f"run_date={D}", "x.csv"),
            "customer_id,email\nNOPE,nope@example.com\n")),
    "export without customer_id column": (
        "finds no customer_id column", lambda r: write_file(os.path.join(r, "exports", f"run_date={D}", "x.csv"), "email\na@b\n")),
    "customer-match list of hashed addresses": (
        True, lambda r: write_file(os.path.join(r, "exports", f"run_date={D}", "customer_match-R.csv"),
            "Email\n" + "".join(f"{i:064x}\n" for i in range(3)))),
    "customer-match list with a plain address": (
        "not lower-case SHA-256 hex", lambda r: write_file(os.path.join(r, "exports", f"run_date={D}", "cm.csv"),
            "Email\na@example.com\n")),
    "no exports": ("no *.csv files", lambda r: shutil.rmtree(os.path.join(r, "exports"))),
    "manifest missing": ("does not exist (the run was not published)", lambda r: os.remove(os.path.join(r, "_runs", D, "manifest.json"))),
    "manifest not JSON": ("is not valid JSON", lambda r: write_file(os.path.join(r, "_runs", D, "manifest.json"), "{oops")),
    "manifest without timings": (
        "keys ['timings'] missing", lambda r: write_file(os.path.join(r, "_runs", D, "manifest.json"),
            json.dumps({"run_date": D, "inputs": {}}))),
    "manifest for another date": (
        "run_date is '2026-10-30', expected", lambda r: write_file(os.path.join(r, "_runs", D, "manifest.json"),
            json.dumps({"run_date": "2026-10-30", "timings": {"a": 1}, "inputs": {}}))),
}


def main():
    verbose = "-v" in sys.argv[1:]
    passed = failed = 0
    with tempfile.TemporaryDirectory(prefix="check_outputs_test_") as tmp:
        for i, (name, (expect, mutate)) in enumerate(CASES.items()):
            root = os.path.join(tmp, f"case{i}")
            write_tree(root)
            arg = root
            if mutate is None:
                arg = "file://" + root
            else:
                mutate(root)
            out = io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
                rc = check_outputs.main([arg, D])
            last = out.getvalue().strip().splitlines()[-1] if out.getvalue().strip() else ""
            if expect is True:
                good = rc == 0
            else:
                good = rc == 1 and last.startswith("FAIL") and expect in last
            print(f"{'PASS' if good else 'FAIL'}  {name}: exit {rc}" + ("" if rc == 0 else f" -- {last}"))
            if verbose or not good:
                print("      " + out.getvalue().replace("\n", "\n      "))
            passed += good
            failed += not good
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
