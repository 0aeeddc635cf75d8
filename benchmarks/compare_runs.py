"""Side-by-side table of several `bench_deploy_graphs.py --json` files (not a test: prints a table).

Each argument is NAME=FILE; runs of one build repeated in the same job share a NAME (e.g. "before=b1.json
before=b2.json after=a1.json after=a2.json"), and the table gives every run's p50 and the median over a name's
runs, per runtime row and batch size, with the ratio of each name's median to the first name's:

    python benchmarks/compare_runs.py before=old1.json after=new1.json before=old2.json after=new2.json
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def load_runs(pairs):
    """[(name, {(runtime, batch): p50 seconds}, device)] in the order given."""
    runs = []
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"expected NAME=FILE, got {pair!r}")
        try:
            report = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SystemExit(f"{path}: cannot read a bench_deploy_graphs report ({exc})")
        if not isinstance(report, dict) or "rows" not in report:
            raise SystemExit(f"{path}: no 'rows' (not a bench_deploy_graphs.py --json report)")
        rows = {(r["runtime"], int(r["batch"])): float(r["p50_s"]) for r in report["rows"]}
        runs.append((name, rows, report.get("device", "?")))
    return runs


def table(runs):
    """Lines of the comparison: one per (runtime, batch) that every name measured."""
    names = list(dict.fromkeys(name for name, _, _ in runs))
    per_name = defaultdict(list)
    for name, rows, _ in runs:
        per_name[name].append(rows)
    keys = sorted(set.intersection(*(set(rows) for _, rows, _ in runs)), key=lambda k: (k[0], k[1]))
    lines = [f"devices: {', '.join(sorted({device for _, _, device in runs}))}",
             f"{'runtime':44} {'batch':>5}  " + "  ".join(f"{n + ' runs (ms)':>24} {'median':>8} {'ratio':>6}"
                                                           for n in names)]
    for key in keys:
        base = statistics.median(r[key] for r in per_name[names[0]])
        cells = []
        for n in names:
            values = [r[key] for r in per_name[n]]
            median = statistics.median(values)
            cells.append(f"{' / '.join(f'{v * 1e3:.2f}' for v in values):>24} {median * 1e3:8.2f} "
                         f"{median / base:6.3f}")
        lines.append(f"{key[0]:44} {key[1]:5d}  " + "  ".join(cells))
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", metavar="NAME=FILE")
    args = ap.parse_args(argv)
    runs = load_runs(args.runs)
    print("\n".join(table(runs)))


if __name__ == "__main__":
    main()
