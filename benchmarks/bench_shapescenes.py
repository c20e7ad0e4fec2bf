"""Throughput of ShapeScenes split generation (rendering + PNG/JSON writing), in images per second.

The requirement is >= 50 images/s at 128x160 on 2 cores. Run from the repository root:

    python -m benchmarks.bench_shapescenes [--num 400] [--workers 1 2]

Wall-clock numbers depend on what else the machine is doing, so the table also shows the load
average at the start and the CPU milliseconds spent per image (parent plus workers), which is the
steadier measure of the generator's own cost.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from polydistill.data.shapescenes import generate_split


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the pool workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(num: int, height: int, width: int, workers: int, root: Path) -> tuple[float, float]:
    """Generate one fresh split; return (images per second, CPU milliseconds per image)."""
    out = root / f"{height}x{width}_w{workers}"
    start_cpu, start = cpu_seconds(), time.perf_counter()
    generate_split(out, num, seed=0, height=height, width=width, workers=workers)
    elapsed, cpu = time.perf_counter() - start, cpu_seconds() - start_cpu
    return num / elapsed, 1000 * cpu / num


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=400, help="images per run")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sizes", nargs="+", default=["128x160", "96x128"], help="HxW")
    args = parser.parse_args(argv)

    print(f"cpus={os.cpu_count()} load average at start={os.getloadavg()[0]:.2f} images per run={args.num}")
    print(f"{'size':>9} {'workers':>7} {'images/s':>9} {'cpu ms/img':>10}")
    with tempfile.TemporaryDirectory(prefix="bench_shapescenes_") as tmp:
        for size in args.sizes:
            height, width = (int(v) for v in size.split("x"))
            for workers in args.workers:
                rate, cpu_ms = measure(args.num, height, width, workers, Path(tmp))
                print(f"{size:>9} {workers:>7} {rate:>9.1f} {cpu_ms:>10.2f}")


if __name__ == "__main__":
    main()
