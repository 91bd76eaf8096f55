#!/usr/bin/env python3
"""Format one bench/compare.sh result: wall time, CPU time and peak RSS of segmenter and the peer.

usage: report.py --n N --date D --as-of D1 --threads T --data DIR --seg-time FILE --peer-time FILE
                 --seg-out DIR --peer-out FILE --peer-log FILE [--check TEXT]
                 [--night-of D0 --first-time FILE --full-time FILE --full-out DIR --identical TEXT]

With --night-of, the segmenter run is the incremental night D after D0 published (in --seg-out),
and the table adds D0's run (a refit reading everything) and `--full` of D (--full-out), with
their stages side by side.

The time files are the `-o` output of GNU `/usr/bin/time -v`. Prints the table to stdout.
"""
import argparse
import glob
import json
import os
import platform
import re
import sys

import pyarrow.parquet as pq


def parse_time_v(path):
    """Wall seconds, CPU seconds (user + sys) and max RSS in MiB from `/usr/bin/time -v` output."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()

    def field(label):
        m = re.search(r"^\s*" + re.escape(label) + r".*?:\s*(\S+)\s*$", text, re.MULTILINE)
        if not m:
            sys.exit(f"report: no '{label}' line in {path}; is /usr/bin/time GNU time?")
        return m.group(1)

    wall = 0.0
    for part in field("Elapsed (wall clock) time").split(":"):  # [h:]m:s.ss
        wall = wall * 60 + float(part)
    cpu = float(field("User time (seconds)")) + float(field("System time (seconds)"))
    rss_mib = int(field("Maximum resident set size (kbytes)")) / 1024
    return {"wall": wall, "cpu": cpu, "rss": rss_mib}


def parquet_rows(pattern):
    files = glob.glob(pattern, recursive=True)
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files), files


def flatten(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def ratio(a, b):
    return f"{a / b:.2f}x" if b else "n/a"


def manifest_of(root, date):
    with open(os.path.join(root, "_runs", date, "manifest.json"), encoding="utf-8") as f:
        return json.load(f)


def night_manifest(a):
    """The reported night's manifest: the median run's when the night was repeated."""
    if a.night_manifest:
        with open(a.night_manifest, encoding="utf-8") as f:
            return json.load(f)
    return manifest_of(a.seg_out, a.date)


def median_index(paths):
    """1-based index of the run with the median wall time (the lower median of an even count)."""
    walls = [parse_time_v(path)["wall"] for path in paths]
    order = sorted(range(len(walls)), key=lambda i: walls[i])
    return order[(len(order) - 1) // 2] + 1


def nights(a, seg, peer, p):
    """The incremental night beside the refit before it and a --full run of the same night."""
    first, full = parse_time_v(a.first_time), parse_time_v(a.full_time)
    runs = [
        (f"{a.night_of} refit", first, manifest_of(a.seg_out, a.night_of)),
        (f"{a.date} incremental", seg, night_manifest(a)),
        (f"{a.date} --full", full, manifest_of(a.full_out, a.date)),
    ]
    p(f"{'segmenter run':<26}{'wall s':>9}{'x peer':>8}{'peak MiB':>10}  state")
    for name, t, m in runs:
        st = m.get("state", {})
        p(f"{name:<26}{t['wall']:>9.2f}{ratio(t['wall'], peer['wall']):>8}{t['rss']:>10.0f}  "
          f"{st.get('mode')}: {st.get('reused_files', 0)} files reused "
          f"({st.get('reused_rows', 0):,} rows), {st.get('read_files', 0)} read "
          f"({st.get('read_rows', 0):,} rows); models refitted: {m['models']['refit']['refitted']}")
    stages = ["inputs", "features", "models", "clustering", "segments", "write"]
    p("")
    p(f"{'stage (s)':<12}" + "".join(f"{name:>24}" for name, _, _ in runs))
    for s in stages:
        p(f"{s:<12}" + "".join(f"{m['timings'].get(s, float('nan')):>24.3f}" for _, _, m in runs))
    p("")
    if a.seg_runs and len(a.seg_runs) > 1:
        walls = lambda paths: " ".join(f"{parse_time_v(x)['wall']:.2f}" for x in paths)
        p(f"wall s of every run (the median is reported): night {walls(a.seg_runs)}; "
          f"peer {walls(a.peer_runs)}")
    p(f"outputs of the incremental night vs --full: {a.identical}")
    with open(a.peer_log, encoding="utf-8", errors="replace") as f:
        peer_line = [line for line in f if line.startswith("peer:")]
    p("peer stages:      " + (peer_line[-1].strip()[len("peer:"):].strip() if peer_line else "(no 'peer:' line)"))
    p(f"output check:     scripts/check_outputs.py {a.check}")


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--median":
        print(median_index(sys.argv[2:]))
        return
    ap = argparse.ArgumentParser()
    for a in ("--n", "--date", "--as-of", "--threads", "--data", "--seg-time", "--peer-time",
              "--seg-out", "--peer-out", "--peer-log"):
        ap.add_argument(a, required=True)
    ap.add_argument("--check", default="not run")
    for a in ("--night-of", "--first-time", "--full-time", "--full-out"):
        ap.add_argument(a)
    ap.add_argument("--identical", default="not compared")
    ap.add_argument("--night-manifest")
    ap.add_argument("--seg-runs", nargs="*")
    ap.add_argument("--peer-runs", nargs="*")
    a = ap.parse_args()

    seg, peer = parse_time_v(a.seg_time), parse_time_v(a.peer_time)
    n_orders, _ = parquet_rows(os.path.join(a.data, "orders", "**", "*.parquet"))
    n_events, _ = parquet_rows(os.path.join(a.data, "events", "**", "*.parquet"))
    n_customers, _ = parquet_rows(os.path.join(a.data, "customers", "**", "*.parquet"))
    size = sum(os.path.getsize(f) for sub in ("orders", "events", "customers")
               for f in glob.glob(os.path.join(a.data, sub, "**", "*.parquet"), recursive=True))
    seg_rows, _ = parquet_rows(os.path.join(a.seg_out, "customer_segments", f"run_date={a.date}", "*.parquet"))
    peer_rows = pq.ParquetFile(a.peer_out).metadata.num_rows if os.path.exists(a.peer_out) else 0

    mem_gib = 0.0
    try:
        with open("/proc/meminfo") as f:
            mem_gib = int(next(l for l in f if l.startswith("MemTotal")).split()[1]) / 2**20
    except (OSError, StopIteration):
        pass

    out = []
    p = out.append
    p(f"== segmenter vs peer: N={int(a.n):,} customers, run --date {a.date} "
      f"(peer --as-of {a.as_of} --threads {a.threads}) ==")
    p(f"data:  {n_orders:,} orders, {n_events:,} events, {n_customers:,} customers rows; "
      f"{size / 2**20:.1f} MiB Parquet in {a.data}")
    p(f"host:  {os.cpu_count()} CPUs, {mem_gib:.1f} GiB RAM, {platform.system()} {platform.release()}, "
      f"Python {platform.python_version()}")
    p("")
    p(f"{'tool':<16}{'wall s':>10}{'cpu s':>10}{'peak RSS MiB':>15}{'rows out':>12}")
    p(f"{'segmenter':<16}{seg['wall']:>10.2f}{seg['cpu']:>10.2f}{seg['rss']:>15.1f}{seg_rows:>12,}")
    p(f"{'peer':<16}{peer['wall']:>10.2f}{peer['cpu']:>10.2f}{peer['rss']:>15.1f}{peer_rows:>12,}")
    p(f"{'segmenter/peer':<16}{ratio(seg['wall'], peer['wall']):>10}{ratio(seg['cpu'], peer['cpu']):>10}"
      f"{ratio(seg['rss'], peer['rss']):>15}")
    p("")
    if a.night_of:
        nights(a, seg, peer, p)
        print("\n".join(out))
        return

    manifest = os.path.join(a.seg_out, "_runs", a.date, "manifest.json")
    try:
        with open(manifest, encoding="utf-8") as f:
            m = json.load(f)
        timings = list(flatten(m.get("timings") or {}))
        version = next((m[k] for k in ("version", "software_version", "segmenter_version") if k in m), None)
        p("segmenter stages (manifest timings, s)" + (f", version {version}" if version else "") + ":")
        width = max([len(k) for k, _ in timings] + [5])
        for k, v in timings:
            p(f"  {k:<{width}}  {v:>9.3f}" if isinstance(v, (int, float)) else f"  {k:<{width}}  {v}")
        total = sum(v for _, v in timings if isinstance(v, (int, float)) and not isinstance(v, bool))
        p(f"  {'(sum)':<{width}}  {total:>9.3f}   (wall {seg['wall']:.3f}; a stage nested in another counts twice)")
    except (OSError, ValueError, AttributeError) as e:
        p(f"segmenter stages: cannot read {manifest}: {e}")
    with open(a.peer_log, encoding="utf-8", errors="replace") as f:
        peer_line = [line for line in f if line.startswith("peer:")]
    p("peer stages:      " + (peer_line[-1].strip()[len("peer:"):].strip() if peer_line else "(no 'peer:' line)"))
    p(f"output check:     scripts/check_outputs.py {a.check}")
    print("\n".join(out))


if __name__ == "__main__":
    main()
