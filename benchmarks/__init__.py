"""Benchmarks of polydistill: each module is a script, run from the repository root with ``python -m``.

    python -m benchmarks.speed --help

- :mod:`benchmarks.speed` — what the teacher-output cache buys: step time, build cost, size and memory;
- :mod:`benchmarks.weighting` — teacher- and task-level weighting strategies compared on the demo setting;
- :mod:`benchmarks.cache_equivalence` — the cached-teacher student against the online-teacher one;
- :mod:`benchmarks.demo_seeds` — the demo student over several training seeds;
- :mod:`benchmarks.feature_distill` — feature teachers: plain student, DUNE projectors, the SAK layout;
- :mod:`benchmarks.partial_labels` — multi-task learning on partially annotated data (Lê & Pham, 2023);
- :mod:`benchmarks.channels_last` — the student's training step in NCHW against channels-last;
- :mod:`benchmarks.bench_shapescenes` — ShapeScenes generation throughput;
- :mod:`benchmarks.demo_wall_time` — cold and warm wall time of ``polydistill demo`` for two releases;
- :mod:`benchmarks.detection_roundtrip` — perfect boxes rendered into detection targets and decoded (mAP, lost boxes);
- :mod:`benchmarks.connector` — JointDistill's connector against plain feedback weighting over seeds;
- :mod:`benchmarks.gpu_check` — the quick demo under bf16 and distillation images/s at 224² and 512²
  (numbers mean something on a CUDA machine only).

They use polydistill as a user does: the public API (``polydistill.load_config``, ``train``,
``cache_teachers``, ``evaluate``, ``load_student``) and the demo's public face (``polydistill.demo.prepare``
and its recipe constants), plus the public module of the one component a benchmark measures in isolation
(ShapeScenes' generator, the student builder, the dataset and cache readers) and the definition of Δm. None
imports ``polydistill.pipeline``, ``polydistill.demo.story`` or a private name. Shared pieces (results files,
Markdown and console tables, the command line recorded in them, ``steps.csv``) are in :mod:`benchmarks.common`.
Measured results are kept in ``benchmarks/results/``.
"""
