"""The training loop, on Hugging Face Accelerate.

One step: for each of ``grad_accum_steps`` micro-batches, teacher outputs (precomputed maps in the
batch, or teachers run online under ``no_grad``) and the trajectory memory's outputs → student →
objective (loss table) → weighting phase one (task losses) → [per-task gradient norms on the shared
features, for strategies that ask] → weighting phase two (one scalar) → backward; then clipping,
optimizer step (student and the strategies' own parameters), and the strategies' ``after_step``.
Every ``val_every`` steps the student is validated, the weighting and the trajectory get the metrics as
feedback, and the best checkpoint is kept. The engine owns backward, mixed precision, accumulation and
gradient sync — never a weighting — and holds no task- or method-specific code.

Under several processes (``torchrun``, ``accelerate launch``) the student is wrapped in DDP; everything DDP
does not synchronise — the strategies' parameters and statistics, running statistics, NaN skips, validation
metrics, the logged losses — goes through :mod:`polydistill.engine.distributed`, and only rank 0 writes files.

Checkpoints are written only at step boundaries, where the weights, buffers, optimizer, weighting and RNG all
belong to one step: Ctrl-C in the middle of a step finishes that step first (a second Ctrl-C stops at once and
keeps the previous ``last``), so ``--resume`` after an interrupt is exact, as after a kill.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.utils.data import DataLoader, Dataset

from ..checkpoint import (
    NonFiniteWeightsError,
    load_training_state,
    load_weights,
    recover_checkpoint,
    save_checkpoint,
)
from ..config import ModelSpec, TrainConfig
from ..data.collate import collate, move_batch
from ..distill.feature_norm import set_training_progress
from ..distill.objective import Objective
from ..distill.trajectory import KnowledgeTrajectory
from ..distill.weighting import StepContext, Weighting
from ..errors import DataError, TrainingError
from ..evaluation.delta_m import delta_m
from ..evaluation.evaluate import evaluate, student_predictor
from ..tasks import Task
from ..teachers import Teacher
from ..teachers.base import TeacherOutputError
from .distributed import (
    any_over_ranks,
    average_buffers,
    average_gradients,
    broadcast_from_main,
    nanmean_over_ranks,
)
from .logging import StepLog, append_jsonl, truncate_after
from .sampler import EpochSampler, TaskBalancedSampler
from .schedule import warmup_cosine

#: the smallest value of a higher-is-better primary metric (mIoU, mAP in [0, 1]) that model selection
#: measures relative changes against
MIN_SELECTION_BASELINE = 0.01


@dataclass
class FitResult:
    steps: int
    best_step: int | None
    best_metrics: dict[str, dict[str, float]] | None
    last_metrics: dict[str, dict[str, float]] | None
    train_seconds: float
    samples_per_second: float
    skipped_steps: int = 0  # batches with no label and no teacher output (no update was made)
    nan_steps: int = 0  # steps skipped because the loss was NaN/Inf (no update was made)


@dataclass
class MicroResult:
    """One micro-batch: its loss and log row, nothing (no signal), or why its loss was not finite."""

    loss: float | None = None
    row: dict[str, Any] | None = None
    nonfinite: str | None = None


def make_accelerator(mixed_precision: str) -> Accelerator:
    """An Accelerator for this run. Accelerate keeps one process-wide state; runs in one process (the
    demo, tests, notebooks) may ask for different precisions, so a differing state is reset first."""
    current = AcceleratorState._shared_state.get("_mixed_precision")
    if current is not None and str(current) != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available())


def make_optimizer(groups: list[dict[str, Any]], lr: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW, fused where PyTorch has a fused kernel: on CPU it steps a 1 M-parameter student in 2 ms instead of
    10 ms (a tenth of a demo step)."""
    floating = all(p.is_floating_point() for g in groups for p in g["params"])
    fused = floating and device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=lr, fused=fused or None)


def term_key(task: str, source: str) -> str:
    return f"{task}/{source}"


class Trainer:
    def __init__(self, *, model: torch.nn.Module, spec: ModelSpec, tasks: dict[str, Task],
                 objective: Objective, weighting: Weighting, train_set: Dataset, val_set: Dataset | None,
                 cfg: TrainConfig, batch_size: int, num_workers: int, run_dir: Path,
                 online_teachers: list[Teacher] | None = None, accelerator: Accelerator | None = None,
                 trajectory: KnowledgeTrajectory | None = None, task_groups: list[list[int]] | None = None):
        self.cfg = cfg
        self.spec = spec
        self.tasks = tasks
        self.objective = objective
        self.weighting = weighting
        self.train_set, self.val_set = train_set, val_set
        self.batch_size, self.num_workers = batch_size, num_workers
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.accelerator = accelerator or make_accelerator(cfg.mixed_precision)
        self.device = self.accelerator.device
        self.online_teachers = [t.to(self.device) for t in (online_teachers or [])]
        self.weighting.to(self.device)
        decay, no_decay = [], []
        for p in model.parameters():
            (decay if p.ndim >= 2 else no_decay).append(p)  # no weight decay on norms and biases
        groups = [{"params": decay, "weight_decay": cfg.weight_decay, "lr": cfg.lr},
                  {"params": no_decay, "weight_decay": 0.0, "lr": cfg.lr}, *weighting.param_groups(cfg.lr)]
        for group in groups:
            group["base_lr"] = group["lr"]
        optimizer = make_optimizer(groups, cfg.lr, self.device)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.trajectory = trajectory
        self._shared: torch.Tensor | None = None
        if weighting.needs_rep_grads:
            self._hook_shared_features()
        #: with task groups (data.sampler: per_task) every step takes one micro-batch per group
        self.task_groups = task_groups
        self.accum = cfg.grad_accum_steps * (len(task_groups) if task_groups else 1)
        self.sampler_args = dict(
            seed=cfg.seed, batch_size=batch_size,
            rank=self.accelerator.process_index, world_size=self.accelerator.num_processes,
        )
        self.steps_per_epoch = self._sampler(0, 0).batches_per_epoch() // self.accum
        if self.steps_per_epoch == 0:
            raise TrainingError(
                f"the training set has {len(train_set)} images, fewer than one step of {self.accum} batch(es) of "
                f"{batch_size}: lower data.batch_size or train.grad_accum_steps, or add images"
            )
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        self.val_every = cfg.val_every or self.steps_per_epoch
        self.save_every = cfg.save_every or self.val_every
        self.step = 0
        self.skipped_steps = 0
        self.nan_steps = 0
        self.nan_streak = 0  # consecutive non-finite steps (train.nan_patience stops the run)
        self.nan_reason = ""
        self.distributed = self.accelerator.num_processes > 1
        self.best_score: float | None = None
        self.best_step: int | None = None
        self.best_metrics: dict[str, dict[str, float]] | None = None
        self.selection_baseline: dict[str, dict[str, float]] | None = None
        #: the step of the checkpoint under checkpoints/last (None: none yet), for messages that point to it
        self.saved_step: int | None = None
        #: True from a step's first forward until its logging, validation and saving are done: a checkpoint
        #: taken in between would mix two steps (batch-norm statistics already moved, the RNG advanced)
        self.mid_step = False
        self.stop_requested = False  # Ctrl-C arrived mid-step: stop at the end of this step

    # ----------------------------------------------------------------------------------------- state

    def _state(self) -> dict[str, Any]:
        state = {
            "step": self.step,
            "epoch": self.step // self.steps_per_epoch,
            "total_steps": self.total_steps,
            "best_score": self.best_score,
            "best_step": self.best_step,
            "best_metrics": self.best_metrics,
            "selection_baseline": self.selection_baseline,
            "weighting": dict(self.weighting.state_dict()),
            "skipped_steps": self.skipped_steps,
            "nan_steps": self.nan_steps,
            "nan_streak": self.nan_streak,
        }
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None:  # fp16's loss scale and its growth tracker: resume must continue them
            state["scaler"] = scaler.state_dict()
        return state

    def save(self, name: str, metrics: dict[str, dict[str, float]] | None = None) -> None:
        if not self.accelerator.is_main_process:
            if name == "last":
                self.saved_step = self.step
            return
        state = self._state()
        if self.trajectory is not None and name == "last":
            state["trajectory"] = self.trajectory.state_dict()
        if metrics is not None:
            state["metrics"] = metrics
        try:
            save_checkpoint(
                self.ckpt_dir / name, model=self.accelerator.unwrap_model(self.model), spec=self.spec,
                optimizer=self.optimizer if name == "last" else None, state=state,
            )
        except NonFiniteWeightsError as exc:  # diverged: stop rather than replace a good checkpoint
            shown = ", ".join(exc.tensors[:3]) + (", ..." if len(exc.tensors) > 3 else "")
            raise TrainingError(
                f"the weights became NaN/Inf by step {self.step} ({len(exc.tensors)} tensor(s): {shown}) and were "
                f"not saved; {self._last_checkpoint()}. Lower train.lr, set train.grad_clip or "
                "train.mixed_precision: no") from None
        if name == "last":
            self.saved_step = self.step

    def _last_checkpoint(self, before_streak: bool = False) -> str:
        """What checkpoints/last holds now, for messages after a stop (a checkpoint is never non-finite, and
        skipped steps leave the weights as they were)."""
        last = self.ckpt_dir / "last"
        if self.saved_step is None:
            return f"no checkpoint was saved in {last} by this run"
        if before_streak:
            return f"{last} holds the weights from before these steps (saved at step {self.saved_step}; finite)"
        return f"{last} holds step {self.saved_step}, with finite weights"

    def resume(self) -> bool:
        """Restore the ``last`` checkpoint if there is one; return whether training resumes."""
        last = self.ckpt_dir / "last"
        if self.accelerator.is_main_process:  # a kill while a checkpoint was being replaced
            recover_checkpoint(last)
            recover_checkpoint(self.ckpt_dir / "best")
        self.accelerator.wait_for_everyone()
        if not last.exists():
            return False  # a missing file inside it is an error (load_training_state names it), not a fresh start
        load_weights(self.accelerator.unwrap_model(self.model), last)
        state = load_training_state(last, self.optimizer)
        if state["total_steps"] != self.total_steps:
            raise TrainingError(
                f"cannot resume: the checkpoint was made for {state['total_steps']} steps but the config now "
                f"gives {self.total_steps}; restore the original train.epochs/max_steps or start a new run"
            )
        self.step = self.saved_step = state["step"]
        self.best_score, self.best_step = state["best_score"], state["best_step"]
        self.best_metrics, self.selection_baseline = state["best_metrics"], state["selection_baseline"]
        self.weighting.load_state_dict(state["weighting"])
        self.skipped_steps = state.get("skipped_steps", 0)
        self.nan_steps, self.nan_streak = state.get("nan_steps", 0), state.get("nan_streak", 0)
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        if self.trajectory is not None and "trajectory" in state:
            self.trajectory.load_state_dict(state["trajectory"])
        truncate_after(self.run_dir / "steps.csv", self.step)
        truncate_after(self.run_dir / "val.jsonl", self.step)
        return True

    # ------------------------------------------------------------------------------------ evaluation

    def validate(self) -> dict[str, dict[str, float]]:
        """The student's metrics on the validation set. With several processes rank 0 evaluates and every rank
        receives its numbers, so validation feedback (teacher weights, the trajectory, model selection) is
        identical everywhere."""
        metrics = None
        if self.accelerator.is_main_process:
            model = self.accelerator.unwrap_model(self.model)
            model.eval()
            try:
                with self.accelerator.autocast():
                    metrics = evaluate(student_predictor(model, self.tasks), self.tasks, self.val_set,
                                       batch_size=self.batch_size * 2, device=self.device)
            finally:
                model.train()
        return broadcast_from_main(metrics)

    def _selection_score(self, metrics: dict[str, dict[str, float]]) -> float:
        """Δm (primary metrics) relative to the first usable validation: only used to pick the
        best step. The baseline is the first validation at which every primary metric is usable: finite,
        non-zero and, if higher is better, at least ``MIN_SELECTION_BASELINE`` (a detector's mAP before it
        finds anything is not: relative to 0.0007, noise reads as +100 % and picked a step whose depth was
        still diverging). Until then the score is NaN (every step is "best", so the latest is kept)."""
        primary = {t: type(task).primary_metric for t, task in self.tasks.items() if task.has_labels}
        directions = {t: {primary[t]: type(self.tasks[t]).metric_directions[primary[t]]} for t in primary}
        if set(self.selection_baseline or {}) != set(primary):
            def usable(t: str, m: str) -> bool:
                value = metrics.get(t, {}).get(m, float("nan"))
                floor = MIN_SELECTION_BASELINE if directions[t][m] else 0.0
                return math.isfinite(value) and value != 0 and abs(value) >= floor

            if not all(usable(t, m) for t, m in primary.items()):
                return float("nan")
            self.selection_baseline = {t: {m: metrics[t][m]} for t, m in primary.items()}
        base = self.selection_baseline
        core = {t: {m: metrics[t][m]} for t, m in primary.items()}
        return delta_m(core, base, directions, convention="primary", primary=primary)

    # ------------------------------------------------------------------------------------- training

    def _teacher_outputs(self, batch: dict) -> dict[str, dict[str, torch.Tensor]]:
        outputs = dict(batch.get("teacher") or {})
        images = batch.get("teacher_image", batch["image"])  # teachers never see photometric jitter
        for teacher in self.online_teachers:
            outputs[teacher.name] = teacher.predict(images)
        return outputs

    def _hook_shared_features(self) -> None:
        """Record the shared feature map (the neck output) so task-loss gradients on it can be taken."""
        model = self.accelerator.unwrap_model(self.model)
        module = getattr(model, "neck", None)
        if module is None:
            raise TrainingError(
                f"{type(model).__name__} has no 'neck' module, which strategies using gradients on the shared "
                "features (gradnorm) need; choose another distill.task_weighting"
            )

        def keep(_module, _inputs, output):
            self._shared = output

        module.register_forward_hook(keep)

    def _shared_grad_norms(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        norms = {}
        for task, loss in losses.items():
            (grad,) = torch.autograd.grad(loss, self._shared, retain_graph=True, allow_unused=True)
            norms[task] = (self.weighting.rep_grad_norm(grad) if grad is not None
                           else torch.zeros((), device=loss.device))
        return norms

    def _sampler(self, epoch: int, skip_batches: int) -> EpochSampler | TaskBalancedSampler:
        if self.task_groups:
            return TaskBalancedSampler(self.task_groups, epoch=epoch, skip_batches=skip_batches, **self.sampler_args)
        return EpochSampler(len(self.train_set), epoch=epoch, skip_batches=skip_batches, **self.sampler_args)

    def _loader(self, epoch: int, skip_batches: int) -> DataLoader:
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)
        sampler = self._sampler(epoch, skip_batches)
        # its own generator: a DataLoader draws its workers' base seed from the global torch RNG otherwise, and
        # a resumed run (one loader more, mid-epoch) would continue with another RNG state than an unbroken one
        generator = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler, drop_last=True,
                          collate_fn=collate, num_workers=self.num_workers, generator=generator,
                          persistent_workers=False, pin_memory=self.device.type == "cuda")

    def log_columns(self) -> list[str]:
        columns = ["step", "epoch", "lr", "loss", "samples_per_s"]
        for task, source in self.objective.sources():
            columns += [f"loss/{term_key(task, source)}", f"weight/{term_key(task, source)}"]
        return columns + self.weighting.log_columns()

    def fit(self, *, resume: bool = False, stop_at_step: int | None = None) -> FitResult:
        """Train to ``total_steps`` (or stop early at ``stop_at_step``, as an interruption would)."""
        resumed = self.resume() if resume else False
        if resume and not resumed:
            self.accelerator.print("no checkpoint to resume from; starting from step 0")
        log = (StepLog(self.run_dir / "steps.csv", self.log_columns(), resume=resumed, start_step=self.step,
                       tensorboard=self.run_dir / "tensorboard" if self.cfg.tensorboard else None)
               if self.accelerator.is_main_process else None)
        self.model.train()
        end = min(self.total_steps, stop_at_step or self.total_steps)
        last_metrics = None
        seen, t_start = 0, time.perf_counter()
        progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  {task.fields[speed]:.1f} img/s"), TimeRemainingColumn(),
            disable=not (self.cfg.progress and self.accelerator.is_main_process), transient=False,
        )
        bar = progress.add_task(self.run_dir.name, total=self.total_steps, completed=self.step,
                                loss=float("nan"), speed=0.0)
        self.mid_step = self.stop_requested = False
        try:
            with progress, self._interrupts_at_step_end():
                while self.step < end:
                    epoch, skip = divmod(self.step, self.steps_per_epoch)
                    batches = iter(self._loader(epoch, skip * self.accum))
                    for _ in range(self.steps_per_epoch - skip):
                        t0 = time.perf_counter()
                        micro = [move_batch(next(batches), self.device) for _ in range(self.accum)]
                        loss_value, row = self._train_step(micro)
                        images = sum(b["image"].shape[0] for b in micro)
                        seen += images
                        speed = images / max(time.perf_counter() - t0, 1e-9)
                        row.update(step=self.step, epoch=epoch, loss=loss_value, samples_per_s=speed)
                        if log is not None:
                            log.write(row)
                        self._check_nan_patience()
                        progress.update(bar, completed=self.step, loss=loss_value, speed=speed)
                        due = self.step % self.val_every == 0 or self.step == self.total_steps
                        if self.val_set is not None and due:
                            last_metrics = self._after_validation(self.validate(), log)
                        if self.step % self.save_every == 0 or self.step >= end:
                            if log is not None:
                                log.flush()  # the log reaches the checkpoint's step: resume cuts it back to there
                            self.save("last", last_metrics)
                        self.mid_step = False  # a step boundary: every state belongs to self.step
                        if self.stop_requested:
                            raise KeyboardInterrupt
                        if self.step >= end:
                            break
        except KeyboardInterrupt:
            if self.mid_step:  # a second Ctrl-C: this state mixes two steps, keep the checkpoint there is
                self.accelerator.print(f"interrupted in the middle of a step; {self._last_checkpoint()}; continue "
                                       "with --resume (it repeats the steps after it)")
            else:
                self.save("last", last_metrics)
                self.accelerator.print(f"interrupted at step {self.step}; continue with --resume")
            raise
        except (DataError, TeacherOutputError):  # bad input found: keep the steps done so far
            if not self.mid_step:
                self.save("last", last_metrics)
            raise
        finally:
            if log is not None:
                log.close()
        elapsed = time.perf_counter() - t_start
        return FitResult(
            steps=self.step, best_step=self.best_step, best_metrics=self.best_metrics, last_metrics=last_metrics,
            train_seconds=elapsed, samples_per_second=seen / max(elapsed, 1e-9), skipped_steps=self.skipped_steps,
            nan_steps=self.nan_steps,
        )

    @contextlib.contextmanager
    def _interrupts_at_step_end(self) -> Iterator[None]:
        """Ctrl-C (SIGINT) in the middle of a step stops at its end, where a checkpoint is exact; between steps,
        or pressed twice, it stops at once. Single-process runs in the main thread only: ranks would not agree
        on the step, and a handler cannot be installed elsewhere (or where SIGINT is ignored or taken over)."""
        if (self.distributed or threading.current_thread() is not threading.main_thread()
                or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
            yield
            return

        def on_sigint(signum: int, frame: Any) -> None:
            if not self.mid_step or self.stop_requested:
                raise KeyboardInterrupt
            self.stop_requested = True
            with contextlib.suppress(OSError):  # a raw write: the main thread may be inside a buffered print
                os.write(2, b"\nCtrl-C: stopping after this step (press Ctrl-C again to stop at once)\n")

        signal.signal(signal.SIGINT, on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def _context(self, micro_batch: int = 0) -> StepContext:
        return StepContext(step=self.step, steps_per_epoch=self.steps_per_epoch, seed=self.cfg.seed,
                           micro_batch=micro_batch)

    def _micro_step(self, batch: dict, index: int, count: int) -> MicroResult:
        """Forward, loss and backward of one micro-batch (gradients accumulate).

        With several processes every rank takes the same branch (the checks are all-reduced) and every rank
        runs a backward that touches every student parameter — a rank whose batch carries no signal adds
        zero times the outputs — so DDP's gradient all-reduce always completes."""
        teacher_outputs = self._teacher_outputs(batch)
        ctx = self._context(index)
        self.mid_step = True  # the forwards below move batch-norm statistics and may draw random numbers
        with self.accelerator.autocast():
            memory = self.trajectory.outputs(batch["image"]) if self.trajectory is not None else None
            raw = self.model(batch["image"])
            teacher_outputs = self.weighting.teacher_targets(teacher_outputs, batch)
        table = self.objective(raw, batch, teacher_outputs, memory_outputs=memory,
                               pixel_weighting=self.weighting.pixel_weights,
                               teacher_stats=self.weighting.needs_teacher_stats)
        values = {term_key(*k): t.value.detach().float() for k, t in table.items()}
        finite = bool(torch.isfinite(torch.stack(list(values.values()))).all()) if values else True
        if any_over_ranks(not finite):  # before the weighting sees it: a NaN must not enter its statistics
            return MicroResult(nonfinite=self._describe(values))
        phase = self.weighting.task_losses(table, ctx)
        if not phase.losses and not self.distributed:
            return MicroResult()  # no label and no teacher output in this batch (sparse labels, no teachers)
        norms = (self._shared_grad_norms(phase.losses) if self.weighting.needs_rep_grads and phase.losses
                 else None)
        if self.distributed:
            ctx, norms = self._global_statistics(ctx, phase.losses, norms)
        if phase.losses:
            loss, row = self.weighting.total(phase, ctx, norms)
        else:  # no signal here, but another rank may have one: join its gradient all-reduce with a zero loss
            loss, row = raw[next(iter(raw))].new_zeros((), dtype=torch.float32), {}
        if any_over_ranks(not bool(torch.isfinite(loss.detach()))):
            return MicroResult(nonfinite=f"total {float(loss.detach()):.4g} ({self._describe(values)})")
        if self.distributed:  # zero gradients for the heads this batch did not use, so DDP's buckets fill
            loss = loss + sum(0.0 * out.float().sum() for out in raw.values())
        self.accelerator.backward(loss / count)
        if not phase.losses:
            return MicroResult()
        for key, value in values.items():
            row[f"loss/{key}"] = float(value)
        return MicroResult(loss=float(loss.detach()), row=row)

    @staticmethod
    def _describe(values: dict[str, torch.Tensor]) -> str:
        return ", ".join(f"{k}={float(v):.4g}" for k, v in values.items())

    def _global_statistics(self, ctx: StepContext, losses: dict[str, torch.Tensor],
                           norms: dict[str, torch.Tensor] | None) -> tuple[StepContext, dict | None]:
        """Every task loss (and, for GradNorm, every gradient norm on the shared features) averaged over the
        ranks that have it, in one all-reduce: the statistics the strategies keep are then the same on every
        rank. A fixed-length vector (NaN where a rank lacks a task), so ranks never disagree on the call."""
        names = list(self.tasks)
        nan = torch.tensor(float("nan"))
        vector = torch.stack(
            [losses[t].detach().float().cpu() if t in losses else nan for t in names]
            + [norms[t].detach().float().cpu() if norms and t in norms else nan for t in names]
        )
        means = nanmean_over_ranks(vector).tolist()
        global_losses = {t: v for t, v in zip(names, means[: len(names)]) if math.isfinite(v)}
        if norms is not None:
            norms = {t: torch.tensor(means[len(names) + names.index(t)], device=n.device) for t, n in norms.items()}
        return replace(ctx, global_losses=global_losses), norms

    def _train_step(self, micro: list[dict]) -> tuple[float, dict[str, Any]]:
        factor = warmup_cosine(self.step, self.total_steps, self.cfg.warmup_steps, self.cfg.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        lr = self.cfg.lr * factor
        self.optimizer.zero_grad(set_to_none=True)
        # DUNE's teacher-norm momentum follows the schedule's progress (no-op for every other norm)
        set_training_progress(self.accelerator.unwrap_model(self.model), self.step, self.total_steps)
        # a skipped step must leave no trace: its forward already moved the batch-norm (and teacher-norm)
        # running statistics, with the same NaN/Inf that made the loss non-finite
        buffers = [b.detach().clone() for b in self.accelerator.unwrap_model(self.model).buffers()]
        results = []
        for i, batch in enumerate(micro):
            last = i == len(micro) - 1
            with nullcontext() if last else self.accelerator.no_sync(self.model):
                result = self._micro_step(batch, i, len(micro))
            if result.nonfinite is not None:  # every rank sees it: skip the whole step, keep the weights
                with torch.no_grad():
                    for buffer, before in zip(self.accelerator.unwrap_model(self.model).buffers(), buffers):
                        buffer.copy_(before)
                return self._skip_nonfinite(result.nonfinite, lr)
            if result.loss is not None:
                results.append((result.loss, result.row))
        if not any_over_ranks(bool(results)):
            self.step += 1
            self.skipped_steps += 1
            return float("nan"), {"lr": lr}
        self.nan_streak = 0
        average_gradients(self.weighting.parameters())  # DDP syncs the student only
        if self.cfg.grad_clip is not None:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        average_buffers(self.accelerator.unwrap_model(self.model))
        self.step += 1
        self.weighting.after_step(self._context())
        if self.trajectory is not None:
            self.trajectory.update(self.accelerator.unwrap_model(self.model), self.step)
        row: dict[str, Any] = {"lr": lr}
        for key in {k for _, r in results for k in r}:
            values = [r[key] for _, r in results if key in r]
            row[key] = sum(values) / len(values)
        loss = sum(v for v, _ in results) / len(results) if results else float("nan")
        if self.distributed:  # the log shows the mean over every rank's batch
            loss, row = self._reduce_row(loss, row)
        return loss, row

    def _skip_nonfinite(self, what: str, lr: float) -> tuple[float, dict[str, Any]]:
        """A NaN/Inf loss: no update, count it, warn; ``train.nan_patience`` of them in a row stop the run."""
        self.step += 1
        self.nan_steps += 1
        self.nan_streak += 1
        self.accelerator.print(f"warning: step {self.step}: non-finite loss ({what}); step skipped, weights "
                               f"unchanged ({self.nan_streak} in a row, train.nan_patience {self.cfg.nan_patience})")
        self.nan_reason = what
        return float("nan"), {"lr": lr}

    def _check_nan_patience(self) -> None:
        if self.nan_streak >= self.cfg.nan_patience:
            raise TrainingError(
                f"{self.nan_streak} steps in a row had a non-finite loss (last, at step {self.step}: "
                f"{self.nan_reason}); lower train.lr, set train.grad_clip or train.mixed_precision: no, or check "
                f"the labels and the teachers' outputs for NaN/Inf. {self._last_checkpoint(before_streak=True)}"
            )

    def _reduce_row(self, loss: float, row: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        keys = [c for c in self.log_columns() if c not in ("step", "epoch", "lr", "samples_per_s", "loss")]
        local = [loss] + [float(row.get(k, float("nan"))) for k in keys]
        reduced = nanmean_over_ranks(torch.tensor(local, dtype=torch.float64)).tolist()
        row.update({k: v for k, v in zip(keys, reduced[1:]) if math.isfinite(v) or k in row})
        return reduced[0], row

    def _after_validation(self, metrics: dict[str, dict[str, float]],
                          log: StepLog | None) -> dict[str, dict[str, float]]:
        record: dict[str, Any] = {"step": self.step, "metrics": metrics}
        record.update(self.weighting.feedback(metrics, self.step))
        if self.trajectory is not None:
            record["trajectory_tasks"] = self.trajectory.feedback(metrics)
        score = self._selection_score(metrics)
        record["selection_score"] = score
        if self.accelerator.is_main_process:
            if log is not None:
                log.write_validation(self.step, metrics)
                log.flush()
            append_jsonl(self.run_dir / "val.jsonl", record)
        if self.best_score is None or score > self.best_score or math.isnan(self.best_score):
            self.best_score, self.best_step, self.best_metrics = score, self.step, metrics
            self.save("best", metrics)
        return metrics
