#!/usr/bin/env python3
"""Check that one segmenter run's output tree reads the same in DuckDB, pyarrow and pandas.

usage: check_outputs.py OUT_ROOT RUN_DATE [--no-exports]

OUT_ROOT is the pipeline's output.root on local disk (a plain path or file:// URL). The script
checks what CONTRACT.md promises readers:
  * _runs/RUN_DATE/manifest.json parses and has run_date, timings (stage -> seconds), inputs;
  * customer_segments and segment_summary (and segment_transitions when present) read with
    DuckDB read_parquet (hive glob and ** glob), pyarrow.dataset (hive), pyarrow.parquet.read_table
    and pandas.read_parquet with the same row counts, run_date as a partition column, and no
    run_date column inside the data files (Spark, pyarrow and pandas reject the duplicate);
  * customer_segments has the CONTRACT columns and logical types, no nulls in them, one row per
    customer_id per run_date, scores in range, vocabularies respected, segment <-> segment_id
    one to one; segment_summary has one row per segment;
  * every exports/run_date=RUN_DATE/*.csv parses in DuckDB read_csv_auto and pandas with the
    same row count and its customer_ids are a subset of customer_segments' ids for the run;
    a customer-match list (header exactly `Email`) instead holds distinct lower-case SHA-256
    hex digests only, read alike by both.
It prints one line per check and exits 1 at the first failure (2 on bad usage or a missing
Python package: run scripts/setup-python.sh and use the venv python it prints).
"""
import argparse
import datetime as dt
import glob
import json
import math
import os
import sys

try:
    import duckdb
    import pandas as pd
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq
except ImportError as e:  # pragma: no cover - depends on the environment
    sys.stderr.write(f"check_outputs: {e}; run scripts/setup-python.sh and use the python it prints\n")
    sys.exit(2)

STRING_COLUMNS = ["customer_id", "segment", "churn_risk", "value_segment", "lifecycle_stage", "loyalty_tier"]
# column -> (arrow type predicate, description, duckdb type, pandas dtype check)
REQUIRED = {
    **{c: (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)
           or getattr(pa.types, "is_string_view", lambda _: False)(t),
           "string (Utf8)", "VARCHAR", pd.api.types.is_string_dtype) for c in STRING_COLUMNS},
    "segment_id": (pa.types.is_int32, "int32", "INTEGER", lambda d: str(d).lower() == "int32"),
    "churn_risk_score": (pa.types.is_float64, "float64 (double)", "DOUBLE", lambda d: str(d).lower() == "float64"),
    "value_score": (pa.types.is_float64, "float64 (double)", "DOUBLE", lambda d: str(d).lower() == "float64"),
}
VOCABULARIES = {
    "churn_risk": ["low", "medium", "high"],
    "value_segment": ["high", "medium", "low"],
    "lifecycle_stage": ["potential", "development", "growth", "maturity", "decline", "termination"],
    "loyalty_tier": ["none", "habitual", "preference", "committed"],
}


class CheckFailed(Exception):
    """A check did not hold; the message says what, where and how much."""


class Checker:
    """Runs checks in order, printing one line each; stops at the first failure."""

    def __init__(self):
        self.passed = 0

    def ok(self, what):
        self.passed += 1
        print(f"ok    {what}", flush=True)

    def fail(self, what):
        raise CheckFailed(what)


def sql_str(s):
    """Quote a Python string as a SQL string literal."""
    return "'" + str(s).replace("'", "''") + "'"


def run_date_filter(col="run_date"):
    return f"CAST({col} AS VARCHAR) = $run_date"


def reader_call(c, reader, what, fn):
    """Call one reader; turn its exception into a failure that names the reader."""
    try:
        return fn()
    except CheckFailed:
        raise
    except Exception as e:  # noqa: BLE001 - any reader error is a finding
        c.fail(f"{what}: {reader} failed: {type(e).__name__}: {e}")


def check_manifest(c, root, run_date):
    path = os.path.join(root, "_runs", run_date, "manifest.json")
    if not os.path.isfile(path):
        c.fail(f"manifest: {path} does not exist (the run was not published)")
    try:
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
    except (OSError, ValueError) as e:
        c.fail(f"manifest: {path} is not valid JSON: {e}")
    if not isinstance(m, dict):
        c.fail(f"manifest: {path} holds a {type(m).__name__}, expected a JSON object")
    c.ok(f"manifest {path} parses as a JSON object")
    missing = [k for k in ("run_date", "timings", "inputs") if k not in m]
    if missing:
        c.fail(f"manifest: keys {missing} missing (has {sorted(m)})")
    if str(m["run_date"]) != run_date:
        c.fail(f"manifest: run_date is {m['run_date']!r}, expected {run_date!r}")
    t = m["timings"]
    if not isinstance(t, dict) or not t:
        c.fail(f"manifest: timings must be a non-empty object of stage -> seconds, got {t!r}")
    bad = {k: v for k, v in t.items()
           if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0}
    if bad:
        c.fail(f"manifest: timings must be seconds >= 0; bad entries {bad}")
    c.ok(f"manifest has run_date={run_date}, inputs, timings for {len(t)} stages ({', '.join(t)})")
    return m


def partition_files(c, root, table, run_date, required):
    part = os.path.join(root, table, f"run_date={run_date}")
    files = sorted(glob.glob(os.path.join(part, "*.parquet")))
    if not files:
        if required:
            c.fail(f"{table}: no *.parquet files in {part}")
        return files
    schemas = {}
    for f in files:
        try:
            s = pq.read_schema(f)
        except Exception as e:  # noqa: BLE001
            c.fail(f"{table}: {f} is not a readable Parquet file: {e}")
        if "run_date" in s.names:
            c.fail(f"{table}: {f} stores run_date inside the file; it must be only the hive "
                   "partition (Spark, pyarrow.parquet.read_table and pandas reject the duplicate)")
        schemas[f] = s
    first = schemas[files[0]]
    for f, s in schemas.items():
        if not s.equals(first, check_metadata=False):
            c.fail(f"{table}: schema of {f} differs from {files[0]}:\n{s}\nvs\n{first}")
    c.ok(f"{table}: {len(files)} Parquet file(s) for run_date={run_date}, one schema, no run_date inside")
    return files


def read_everywhere(c, root, table, run_date, allow_empty=False):
    """Read a table with every reader; return (total rows, rows for run_date) they agree on."""
    tdir = os.path.join(root, table)
    con = duckdb.connect()
    results = {}

    def duck(src):
        cols = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()]
        if "run_date" not in cols:
            c.fail(f"{table}: DuckDB {src} has no run_date column (columns {cols})")
        n, nd = con.execute(f"SELECT count(*), count(*) FILTER (WHERE {run_date_filter()}) FROM {src}",
                            {"run_date": run_date}).fetchone()
        return n, nd

    readers = {
        "duckdb read_parquet(*/*.parquet, hive_partitioning=true)":
            lambda: duck(f"read_parquet({sql_str(tdir + '/*/*.parquet')}, hive_partitioning=true)"),
        "duckdb read_parquet(**/*.parquet)":
            lambda: duck(f"read_parquet({sql_str(tdir + '/**/*.parquet')})"),
    }

    def arrow(t, how):
        if "run_date" not in t.column_names:
            c.fail(f"{table}: {how} has no run_date column (columns {t.column_names})")
        col = t.column("run_date").cast(pa.string())
        nd = sum(1 for v in col.to_pylist() if v == run_date)
        return t.num_rows, nd

    def pandas_read():
        df = pd.read_parquet(tdir)
        if "run_date" not in df.columns:
            c.fail(f"{table}: pandas.read_parquet has no run_date column (columns {list(df.columns)})")
        return len(df), int((df["run_date"].astype(str) == run_date).sum())

    readers["pyarrow.dataset.dataset(partitioning='hive')"] = \
        lambda: arrow(ds.dataset(tdir, partitioning="hive").to_table(), "pyarrow.dataset")
    readers["pyarrow.parquet.read_table()"] = lambda: arrow(pq.read_table(tdir), "pyarrow.parquet.read_table")
    readers["pandas.read_parquet()"] = pandas_read

    for name, fn in readers.items():
        results[name] = reader_call(c, name, table, fn)
        n, nd = results[name]
        c.ok(f"{table}: {name} -> {n} rows, {nd} for run_date={run_date}")
    if len(set(results.values())) != 1:
        listing = "; ".join(f"{k}: {v[0]} rows ({v[1]} for the run)" for k, v in results.items())
        c.fail(f"{table}: readers disagree on row counts: {listing}")
    n, nd = next(iter(results.values()))
    if nd == 0 and not allow_empty:
        c.fail(f"{table}: 0 rows for run_date={run_date}")
    c.ok(f"{table}: all {len(results)} readers agree: {n} rows, {nd} for run_date={run_date}")
    return n, nd


def check_segment_types(c, root, run_date):
    table = "customer_segments"
    tdir = os.path.join(root, table)
    schema = ds.dataset(tdir, partitioning="hive").schema
    for col, (pred, desc, _, _) in REQUIRED.items():
        if col not in schema.names:
            c.fail(f"{table}: required column {col!r} missing (columns {schema.names})")
        if not pred(schema.field(col).type):
            c.fail(f"{table}: column {col!r} is {schema.field(col).type}, expected {desc}")
    c.ok(f"{table}: arrow schema has {len(REQUIRED)} CONTRACT columns with the right types")

    con = duckdb.connect()
    src = f"read_parquet({sql_str(tdir + '/*/*.parquet')}, hive_partitioning=true)"
    duck_types = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()}
    for col, (_, _, dtype, _) in REQUIRED.items():
        if duck_types.get(col) != dtype:
            c.fail(f"{table}: DuckDB sees {col!r} as {duck_types.get(col)}, expected {dtype}")
    c.ok(f"{table}: DuckDB types match (VARCHAR / INTEGER / DOUBLE)")

    df = pd.read_parquet(tdir, columns=list(REQUIRED))
    for col, (_, desc, _, pcheck) in REQUIRED.items():
        if not pcheck(df[col].dtype):
            c.fail(f"{table}: pandas dtype of {col!r} is {df[col].dtype}, expected {desc}")
    c.ok(f"{table}: pandas dtypes match (string / int32 / float64)")


def check_segment_values(c, root, run_date):
    table = "customer_segments"
    con = duckdb.connect()
    tdir = os.path.join(root, table)
    con.execute(f"CREATE VIEW cs AS SELECT * FROM read_parquet({sql_str(tdir + '/*/*.parquet')}, "
                f"hive_partitioning=true)")
    p = {"run_date": run_date}
    run = f"FROM cs WHERE {run_date_filter()}"

    nulls = con.execute("SELECT " + ", ".join(f"count(*) FILTER (WHERE {col} IS NULL)" for col in REQUIRED)
                        + f" {run}", p).fetchone()
    bad = {col: n for col, n in zip(REQUIRED, nulls) if n}
    if bad:
        c.fail(f"{table}: null values (column: count) {bad} for run_date={run_date}")
    c.ok(f"{table}: no nulls in the CONTRACT columns")

    dup = con.execute("SELECT CAST(run_date AS VARCHAR), customer_id, count(*) FROM cs "
                      "GROUP BY ALL HAVING count(*) > 1 ORDER BY 3 DESC LIMIT 5").fetchall()
    if dup:
        ndup = con.execute("SELECT count(*) FROM (SELECT run_date, customer_id FROM cs "
                           "GROUP BY ALL HAVING count(*) > 1)").fetchone()[0]
        c.fail(f"{table}: {ndup} customer_id(s) occur more than once in a run_date, e.g. {dup}")
    c.ok(f"{table}: customer_id unique within each run_date")

    lo, hi, nan = con.execute(f"SELECT min(churn_risk_score), max(churn_risk_score), "
                              f"count(*) FILTER (WHERE isnan(churn_risk_score)) {run}", p).fetchone()
    if nan or lo < 0 or hi > 1:
        c.fail(f"{table}: churn_risk_score must be in [0,1]: min {lo}, max {hi}, NaN count {nan}")
    c.ok(f"{table}: churn_risk_score in [0,1] (min {lo:.4f}, max {hi:.4f})")

    nonfinite = con.execute(f"SELECT count(*) FILTER (WHERE NOT isfinite(value_score)), "
                            f"min(value_score), max(value_score) {run}", p).fetchone()
    if nonfinite[0]:
        c.fail(f"{table}: value_score has {nonfinite[0]} NaN/infinite values")
    c.ok(f"{table}: value_score finite (min {nonfinite[1]:.2f}, max {nonfinite[2]:.2f})")

    for col, vocab in VOCABULARIES.items():
        got = con.execute(f"SELECT {col}, count(*) {run} GROUP BY ALL ORDER BY 2 DESC", p).fetchall()
        outside = [(v, n) for v, n in got if v not in vocab]
        if outside:
            c.fail(f"{table}: {col} has values outside {vocab}: {outside[:10]}")
        c.ok(f"{table}: {col} within {{{', '.join(vocab)}}} (" + ", ".join(f"{v} {n}" for v, n in got) + ")")

    pairs = con.execute(f"SELECT DISTINCT segment_id, segment {run} ORDER BY 1, 2", p).fetchall()
    ids = [i for i, _ in pairs]
    names = [s for _, s in pairs]
    if len(set(ids)) != len(pairs) or len(set(names)) != len(pairs):
        c.fail(f"{table}: segment and segment_id are not one to one: {pairs}")
    c.ok(f"{table}: {len(pairs)} segments, segment <-> segment_id one to one")
    return {i for i, _ in pairs}, set(names)


def check_summary(c, root, run_date, seg_ids, seg_names, n_rows_run):
    table = "segment_summary"
    if n_rows_run != len(seg_ids):
        c.fail(f"{table}: {n_rows_run} rows for run_date={run_date}, but customer_segments has "
               f"{len(seg_ids)} segments (expected one row per segment)")
    df = pd.read_parquet(os.path.join(root, table))
    df = df[df["run_date"].astype(str) == run_date]
    for col, want in (("segment_id", seg_ids), ("segment", seg_names)):
        if col in df.columns and set(df[col].tolist()) != want:
            c.fail(f"{table}: {col} values {sorted(df[col].tolist())} differ from customer_segments' "
                   f"{sorted(want)}")
    c.ok(f"{table}: one row per segment ({n_rows_run})")


def check_exports(c, root, run_date):
    part = os.path.join(root, "exports", f"run_date={run_date}")
    files = sorted(glob.glob(os.path.join(part, "*.csv")))
    if not files:
        c.fail(f"exports: no *.csv files in {part} (use --no-exports for runs without exports)")
    con = duckdb.connect()
    ids_run = {r[0] for r in con.execute(
        f"SELECT customer_id FROM read_parquet({sql_str(os.path.join(root, 'customer_segments') + '/*/*.parquet')}, "
        f"hive_partitioning=true) WHERE {run_date_filter()}", {"run_date": run_date}).fetchall()}
    union_duck, union_pd, total = set(), set(), 0
    for f in files:
        with open(f, encoding="utf-8") as fh:
            header = fh.readline().rstrip("\r\n")
        if header == "Email":
            total += check_customer_match(c, con, f)
            continue
        src = f"read_csv_auto({sql_str(f)})"
        cols = reader_call(c, "duckdb read_csv_auto", f"exports: {f}",
                           lambda src=src: [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()])
        if "customer_id" not in cols:
            c.fail(f"exports: {f}: DuckDB read_csv_auto finds no customer_id column (columns {cols})")
        duck_ids = [r[0] for r in con.execute(f"SELECT CAST(customer_id AS VARCHAR) FROM {src}").fetchall()]
        df = reader_call(c, "pandas.read_csv", f"exports: {f}",
                         lambda f=f: pd.read_csv(f, dtype={"customer_id": str}, keep_default_na=False))
        if "customer_id" not in df.columns:
            c.fail(f"exports: {f}: pandas finds no customer_id column (columns {list(df.columns)})")
        # DuckDB adds the hive partition column (run_date) of the path to CSVs too.
        duck_cols = [x for x in cols if x != "run_date" or "run_date" in df.columns]
        if len(df) != len(duck_ids) or duck_cols != list(df.columns):
            c.fail(f"exports: {f}: DuckDB reads {len(duck_ids)} rows, columns {duck_cols}; "
                   f"pandas {len(df)} rows, columns {list(df.columns)}")
        union_duck.update(duck_ids)
        union_pd.update(df["customer_id"].tolist())
        total += len(df)
    c.ok(f"exports: {len(files)} CSV file(s), {total} rows, same shape in DuckDB and pandas")
    for reader, ids in (("DuckDB", union_duck), ("pandas", union_pd)):
        extra = ids - ids_run
        if extra:
            c.fail(f"exports: {len(extra)} customer_id(s) read by {reader} are not in customer_segments "
                   f"for run_date={run_date}, e.g. {sorted(extra, key=str)[:5]}")
    c.ok(f"exports: {len(union_pd)} distinct customer_ids, all in customer_segments")


def check_customer_match(c, con, f):
    """A customer-match list: one column Email of distinct SHA-256 hex digests; returns rows."""
    duck = [r[0] for r in con.execute(
        f"SELECT CAST(Email AS VARCHAR) FROM read_csv({sql_str(f)}, header=true, all_varchar=true, "
        f"hive_partitioning=false)").fetchall()]
    df = reader_call(c, "pandas.read_csv", f"exports: {f}",
                     lambda: pd.read_csv(f, dtype=str, keep_default_na=False))
    if list(df.columns) != ["Email"] or df["Email"].tolist() != duck:
        c.fail(f"exports: {f}: customer-match list reads differently: DuckDB {len(duck)} rows, "
               f"pandas columns {list(df.columns)}, {len(df)} rows")
    bad = [v for v in duck if len(v) != 64 or any(ch not in "0123456789abcdef" for ch in v)]
    if bad:
        c.fail(f"exports: {f}: {len(bad)} value(s) are not lower-case SHA-256 hex, e.g. {bad[:3]}")
    if len(set(duck)) != len(duck):
        c.fail(f"exports: {f}: {len(duck) - len(set(duck))} repeated hash(es)")
    return len(duck)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_root", help="output.root of the pipeline (local path or file:// URL)")
    ap.add_argument("run_date", help="the run's logical date, YYYY-MM-DD")
    ap.add_argument("--no-exports", action="store_true", help="do not require exports/run_date=D/*.csv")
    a = ap.parse_args(argv)
    root = os.path.abspath(a.out_root.removeprefix("file://"))
    try:
        dt.date.fromisoformat(a.run_date)
    except ValueError:
        ap.error(f"RUN_DATE must be YYYY-MM-DD, got {a.run_date!r}")
    if not os.path.isdir(root):
        ap.error(f"OUT_ROOT {root} is not a directory")

    c = Checker()
    try:
        check_manifest(c, root, a.run_date)
        partition_files(c, root, "customer_segments", a.run_date, required=True)
        read_everywhere(c, root, "customer_segments", a.run_date)
        check_segment_types(c, root, a.run_date)
        seg_ids, seg_names = check_segment_values(c, root, a.run_date)
        partition_files(c, root, "segment_summary", a.run_date, required=True)
        _, n_sum = read_everywhere(c, root, "segment_summary", a.run_date)
        check_summary(c, root, a.run_date, seg_ids, seg_names, n_sum)
        if partition_files(c, root, "segment_transitions", a.run_date, required=False):
            read_everywhere(c, root, "segment_transitions", a.run_date, allow_empty=True)
        else:
            print(f"skip  segment_transitions: no files for run_date={a.run_date}")
        if a.no_exports:
            print("skip  exports (--no-exports)")
        else:
            check_exports(c, root, a.run_date)
    except CheckFailed as e:
        print(f"FAIL  {e}", flush=True)
        print(f"check_outputs: {root} run_date={a.run_date}: FAILED after {c.passed} passed checks",
              file=sys.stderr)
        return 1
    print(f"check_outputs: {root} run_date={a.run_date}: all {c.passed} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
