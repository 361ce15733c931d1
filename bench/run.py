"""sagemaker-pipe benchmark: measures the targets of issue 5 against their baselines, in one run.

    python bench/run.py [--quick] [--cases local,small,gzip,s3,memory,turnaround,latency]
                        [--reps N] [--package-dir DIR] [--py-spy DIR]

Each case makes its own data (on /dev/shm when it exists), runs the real sidecar as a child
process (`python -m sagemaker_pipe --config ... --ml-root ... --epochs N`) with a reader
process, runs its baselines interleaved with it in the same run, and reports medians of
repeated runs. The table's `ratio` is ours / baseline (higher is better) except where the target
is an absolute number. Raw samples go to bench/results/<timestamp>.json.

`--package-dir` benchmarks another copy of the package (a scratch checkout with a candidate
fix); `--py-spy DIR` records every sidecar run's stacks (folded, for speedscope or flamegraph.pl;
needs `pip install py-spy`).
Exit status: 0 when every target passed, 1 when one failed, 2 when a case could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cases_latency  # noqa: E402
import cases_local  # noqa: E402
import cases_s3  # noqa: E402
from common import BENCH, REPO, Procs, Results, Row, Settings, fmt, imported_package, machine  # noqa: E402

LOCAL_CASES: dict[str, Callable[[Settings, Results], None]] = {
    "local": cases_local.case_local,
    "small": cases_local.case_small,
    "gzip": cases_local.case_gzip,
    "turnaround": cases_local.case_turnaround,
}
S3_CASES: dict[str, Callable[[Settings, Results, cases_s3.S3Env], None]] = {
    "s3": cases_s3.case_s3,
    "memory": cases_s3.case_memory,
    "latency": cases_latency.case_latency,
}
ALL = ["local", "small", "gzip", "s3", "memory", "turnaround", "latency"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller data, fewer repeats (under 2 minutes)")
    p.add_argument("--cases", default=",".join(ALL), help=f"comma-separated subset of {','.join(ALL)}")
    p.add_argument("--reps", type=int, help="timed repetitions per measurement (default 3 quick, 5 full)")
    p.add_argument("--package-dir", type=Path, default=REPO, help="folder holding the sagemaker_pipe to measure")
    p.add_argument("--py-spy", type=Path,
                   help="record each sidecar run's stacks (py-spy, folded format) into this folder")
    a = p.parse_args(argv)
    unknown = set(a.cases.split(",")) - set(ALL)
    if unknown:
        p.error(f"unknown cases: {', '.join(sorted(unknown))}")
    if not (a.package_dir / "sagemaker_pipe" / "__init__.py").exists():
        p.error(f"{a.package_dir} holds no sagemaker_pipe package")
    if a.py_spy and not shutil.which("py-spy"):
        p.error("--py-spy needs py-spy on PATH (pip install py-spy)")
    return a


def scratch_root() -> Path:
    """tmpfs when there is one: the issue's local targets are stated for data on /dev/shm."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="smp-bench-", dir=base))


def run_case(name: str, settings: Settings, results: Results, s3: cases_s3.S3Env | None) -> bool:
    """One case in its own scratch folder, removed afterwards; an error is reported, not fatal."""
    work = settings.work / name
    work.mkdir()
    case_settings = replace(settings, work=work)
    t0 = time.perf_counter()
    try:
        if name in LOCAL_CASES:
            LOCAL_CASES[name](case_settings, results)
        else:
            assert s3 is not None
            S3_CASES[name](case_settings, results, s3)
        ok = True
    except Exception as e:  # the other cases still run; the table says what broke
        traceback.print_exc()
        results.add(Row(name, f"ERROR: {type(e).__name__}: {str(e).splitlines()[0][:100]}", None, "",
                        passed=False))
        ok = False
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"  {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return ok


def table(rows: list[Row]) -> str:
    head = ["case", "measure", "sagemaker-pipe", "baseline", "ratio", "target", "result", "CPU: ours / baseline's"]
    body = [[r.case, r.measure, f"{fmt(r.ours)} {r.unit}".strip(), r.baseline,
             f"{r.ratio:.2f}x" if r.ratio is not None else "", r.target,
             {True: "PASS", False: "FAIL", None: "info"}[r.passed], r.cpu] for r in rows]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"  [{r.case}] {r.measure}: {r.note}" for r in rows if r.note]
    return "\n".join(lines + (["", "notes:", *notes] if notes else []))


def report(args: argparse.Namespace, settings: Settings, results: Results, seconds: float) -> str:
    m = machine()
    out = [
        "sagemaker-pipe benchmark (" + ("quick" if args.quick else "full") + f"), {time.strftime('%Y-%m-%d %H:%M:%S')}",
        "machine: " + ", ".join(f"{k} {v}" for k, v in m.items()),
        f"package: {settings.imported}; reps {settings.reps} (+{settings.warmup} warm-up), medians; "
        f"scratch on {settings.work.parent}",
        f"command: python bench/run.py {' '.join(sys.argv[1:])}",
        "",
        table(results.rows),
    ]
    if results.skipped:
        out += ["", "skipped:", *(f"  {s}" for s in results.skipped)]
    out.append(f"\ntotal {seconds:.0f} s")
    return "\n".join(out)


def save(results: Results, text: str, args: argparse.Namespace) -> Path:
    folder = BENCH / "results"
    folder.mkdir(exist_ok=True)
    path = folder / f"{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps({"machine": machine(), "argv": sys.argv[1:], "rows": [asdict(r) for r in results.rows],
                                "samples": results.samples, "skipped": results.skipped, "table": text}, indent=1))
    return path


def on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, on_signal)
    chosen = [c for c in ALL if c in args.cases.split(",")]
    reps = args.reps or (3 if args.quick else 5)
    settings = Settings(args.quick, reps, 1, args.package_dir.resolve(), scratch_root(), args.py_spy)
    settings = replace(settings, imported=imported_package(settings))
    if settings.imported != str(settings.package_dir / "sagemaker_pipe"):
        print(f"bench/run.py: children import {settings.imported}, not {settings.package_dir}", file=sys.stderr)
        shutil.rmtree(settings.work, ignore_errors=True)
        return 2
    results = Results()
    t0 = time.perf_counter()
    ok = True
    try:
        with_s3 = [c for c in chosen if c in S3_CASES]
        reason = cases_s3.skip_reason(settings) if with_s3 else None
        if reason:
            results.skipped += [f"{c}: {reason}" for c in with_s3]
        for name in [c for c in chosen if c in LOCAL_CASES]:
            ok &= run_case(name, settings, results, None)
        if with_s3 and not reason:
            with cases_s3.S3Env() as s3:
                for name in with_s3:
                    ok &= run_case(name, settings, results, s3)
    finally:
        Procs.kill_all()
        shutil.rmtree(settings.work, ignore_errors=True)
    text = report(args, settings, results, time.perf_counter() - t0)
    print(text)
    print(f"raw samples: {save(results, text, args).relative_to(REPO)}")
    if not ok:
        return 2
    return 0 if all(r.passed is not False for r in results.rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
