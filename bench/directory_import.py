"""Benchmark: import of a national-size directory snapshot (time and peak RSS), SQLite and PostgreSQL.

    .venv/bin/python bench/directory_import.py                      # 2,000,000 + ~540,000 lines, both
    .venv/bin/python bench/directory_import.py --activity-lines 200000 --backend sqlite

The files are generated once into --data (default /tmp/mssante-bench-directory) and reused. Each
import runs in a child process so that its peak RSS is its own. `--twice` also times a second
import of different content, which replaces the first snapshot and deletes its rows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PG_DSN = os.environ.get("MSSANTE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
ACTIVITIES_PER_PRACTITIONER = 1.25  # the generator's mean
MAILBOX_RATIO = 0.24  # gives ~535,000 mailbox lines for 2,000,000 activity lines


def generate(data: Path, activity_lines: int, seed: int) -> tuple[Path, Path]:
    from mssante_operator.directory.sample import generate_sample

    target = data / f"{activity_lines}-{seed}"
    existing = sorted(target.glob("*.txt"))
    if len(existing) == 2:
        mailbox, activity = existing  # "Extraction..." sorts before "PS_..."
        return activity, mailbox
    started = time.perf_counter()
    practitioners = int(activity_lines / ACTIVITIES_PER_PRACTITIONER)
    activity, mailbox = generate_sample(
        target, practitioners, seed=seed, mailbox_ratio=MAILBOX_RATIO, stamp=f"20261101{seed:04d}"
    )
    print(f"generated {target} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return activity, mailbox


def count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b"")) - 1


async def child(
    url: str, files: list[Path], rounds: list[list[Path]], parse_process: bool | None
) -> dict[str, object]:
    from mssante_operator.directory.importer import import_files
    from mssante_operator.store import create_engine, upgrade

    engine = create_engine(url)
    await upgrade(engine)
    timings = []
    for round_files in [files, *rounds]:
        started = time.perf_counter()
        report = await import_files(engine, round_files, max_reject_rate=0.01, parse_process=parse_process)
        elapsed = time.perf_counter() - started
        if not report.applied:
            raise SystemExit(f"import not applied: {report.message} {[f.message for f in report.files]}")
        timings.append(
            {
                "seconds": round(elapsed, 1),
                "rows": {f.kind.value: f.rows_loaded for f in report.files},
                "rejected": sum(f.rows_rejected for f in report.files),
            }
        )
    await engine.dispose()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of this process (SQLite's work in its thread, and the parse unless it runs in a
    # child) and of its parser children: the honest figures on a shared machine, where wall time
    # also counts other people's load.
    return {
        "imports": timings,
        "process_cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "parser_cpu_seconds": round(children.ru_utime + children.ru_stime, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "parser_peak_rss_mb": round(children.ru_maxrss / 1024),
    }


async def make_pg_database() -> tuple[str, str]:
    import asyncpg

    name = f"bench_directory_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8'")
    finally:
        await conn.close()
    base = PG_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    return name, f"{base}/{name}"


async def drop_pg_database(name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def run_child(url: str, files: list[Path], second: list[Path] | None, parse: str) -> dict[str, object]:
    args = [sys.executable, __file__, "--parse", parse, "--child", url, *map(str, files)]
    if second:
        args += ["--then", *map(str, second)]
    out = subprocess.run(args, check=True, capture_output=True, text=True, cwd=ROOT)
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--activity-lines", type=int, default=2_000_000)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--data", type=Path, default=Path("/tmp/mssante-bench-directory"))
    parser.add_argument("--twice", action="store_true", help="also time a replacing second import")
    parser.add_argument(
        "--parse",
        choices=["auto", "inline", "process"],
        default="auto",
        help="parse in the importing process or in a child (auto: a child for files over 8 MB)",
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--then", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        url, *files = args.child
        rounds = [[Path(p) for p in args.then]] if args.then else []
        parse_process = {"auto": None, "inline": False, "process": True}[args.parse]
        print(json.dumps(asyncio.run(child(url, [Path(p) for p in files], rounds, parse_process))))
        return

    activity, mailbox = generate(args.data, args.activity_lines, seed=1)
    second = list(generate(args.data, args.activity_lines, seed=2)) if args.twice else None
    lines = {"activity": count_lines(activity), "mailbox": count_lines(mailbox)}
    size_mb = (activity.stat().st_size + mailbox.stat().st_size) / 1e6
    print(
        f"files: {lines['activity']:,} activity lines, {lines['mailbox']:,} mailbox lines, {size_mb:.0f} MB"
    )
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    for backend in backends:
        print(f"{backend}: load average before {[round(x, 1) for x in os.getloadavg()]}")
        if backend == "sqlite":
            db = args.data / f"bench-{uuid.uuid4().hex[:8]}.db"
            try:
                result = run_child(f"sqlite+aiosqlite:///{db}", [activity, mailbox], second, args.parse)
            finally:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{db}{suffix}").unlink(missing_ok=True)
        else:
            name, url = asyncio.run(make_pg_database())
            try:
                result = run_child(url, [activity, mailbox], second, args.parse)
            finally:
                asyncio.run(drop_pg_database(name))
        result["load_average_after"] = [round(x, 1) for x in os.getloadavg()]
        print(f"{backend}: {json.dumps(result)}")


if __name__ == "__main__":
    main()
