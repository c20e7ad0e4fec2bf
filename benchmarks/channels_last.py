"""Training step cost of the demo's student in NCHW vs channels-last (NHWC), side by side in one process.

What is measured: forward + backward (sum of the three task outputs) of the demo student architecture
(depth, semseg and detection heads, FPN neck of 32 channels) at batch 8 and the demo's 96×128 input, for
each backbone in NCHW and in NHWC (``model.to(memory_format=torch.channels_last)``, what
``train.channels_last`` does). Rounds interleave the variants so a slow moment of the machine hits all of
them; the median per variant is printed with the NCHW/NHWC ratio.

    python -m benchmarks.channels_last [--threads 1] [--rounds 5] [--iters 4]
        [--backbones mobilenetv3_small_100,mobilenetv3_large_075]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from polydistill.demo import OBJECT_CLASSES, STUDENT_TASK_OPTIONS
from polydistill.students import build_student


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--backbones", default="mobilenetv3_small_100,mobilenetv3_large_075")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tasks = {"depth": {}, "semseg": {**STUDENT_TASK_OPTIONS["semseg"], "num_classes": 7},
             "detection": {**STUDENT_TASK_OPTIONS["detection"], "num_classes": len(OBJECT_CLASSES)}}
    x = torch.rand(args.batch, 3, 96, 128)
    variants = {}
    for backbone in args.backbones.split(","):
        for layout in ("NCHW", "NHWC"):
            torch.manual_seed(0)
            model, _ = build_student({"tasks": tasks, "backbone": backbone, "neck_channels": 32})
            if layout == "NHWC":
                model = model.to(memory_format=torch.channels_last)
            variants[(backbone, layout)] = model.train()

    def step(model: torch.nn.Module) -> None:
        model.zero_grad(set_to_none=True)
        sum(out.float().mean() for out in model(x).values()).backward()

    samples: dict[tuple[str, str], list[float]] = {key: [] for key in variants}
    for model in variants.values():
        step(model)  # warm-up
    for _ in range(args.rounds):
        for key, model in variants.items():
            t = time.perf_counter()
            for _ in range(args.iters):
                step(model)
            samples[key].append((time.perf_counter() - t) / args.iters * 1000)
    print(f"forward + backward, batch {args.batch}, 96x128, {args.threads} thread(s), torch {torch.__version__}; "
          f"median of {args.rounds} interleaved rounds of {args.iters} steps")
    print("| backbone | NCHW (ms) | NHWC (ms) | NCHW / NHWC |")
    print("|---|---:|---:|---:|")
    for backbone in args.backbones.split(","):
        nchw = statistics.median(samples[(backbone, "NCHW")])
        nhwc = statistics.median(samples[(backbone, "NHWC")])
        print(f"| {backbone} | {nchw:.1f} | {nhwc:.1f} | {nchw / nhwc:.2f}× |")


if __name__ == "__main__":
    main()
