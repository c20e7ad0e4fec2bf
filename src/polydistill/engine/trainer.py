"""The training loop, on Hugging Face Accelerate.

One step: for each of ``grad_accum_steps`` micro-batches, teacher outputs (precomputed maps in the
batch, or teachers run online under ``no_grad``) and the trajectory memory's outputs → student →
objective (loss table) → weighting phase one (task losses) → [per-task gradient norms on the shared
features, for strategies that ask] → weighting phase two (one scalar) → backward; then clipping,
optimizer step (student and the strategies' own parameters), and the strategies' ``after_step``.
Every ``val_every`` steps the student is validated, the weighting and the trajectory get the metrics as
feedback, and the best checkpoint is kept. The engine owns backward, mixed precision, accumulation and
gradient sync — never a weighting — and holds no task- or method-specific code.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.utils.data import DataLoader, Dataset

from ..config import TrainConfig
from ..data.collate import collate, move_batch
from ..distill.objective import Objective
from ..distill.trajectory import KnowledgeTrajectory
from ..distill.weighting import StepContext, Weighting
from ..errors import TrainingError
from ..evaluation.delta_m import delta_m
from ..evaluation.evaluate import evaluate, student_predictor
from ..tasks import Task
from ..teachers import Teacher
from .checkpoint import load_training_state, load_weights, save_checkpoint
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
    def __init__(self, *, model: torch.nn.Module, spec: dict[str, Any], tasks: dict[str, Task],
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
        self.best_score: float | None = None
        self.best_step: int | None = None
        self.best_metrics: dict[str, dict[str, float]] | None = None
        self.selection_baseline: dict[str, dict[str, float]] | None = None

    # ----------------------------------------------------------------------------------------- state

    def _state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.step // self.steps_per_epoch,
            "total_steps": self.total_steps,
            "best_score": self.best_score,
            "best_step": self.best_step,
            "best_metrics": self.best_metrics,
            "selection_baseline": self.selection_baseline,
            "weighting": dict(self.weighting.state_dict()),
        }

    def save(self, name: str, metrics: dict[str, dict[str, float]] | None = None) -> None:
        if not self.accelerator.is_main_process:
            return
        state = self._state()
        if self.trajectory is not None and name == "last":
            state["trajectory"] = self.trajectory.state_dict()
        if metrics is not None:
            state["metrics"] = metrics
        save_checkpoint(
            self.ckpt_dir / name, model=self.accelerator.unwrap_model(self.model), spec=self.spec,
            optimizer=self.optimizer if name == "last" else None, state=state,
        )

    def resume(self) -> bool:
        """Restore the ``last`` checkpoint if there is one; return whether training resumes."""
        last = self.ckpt_dir / "last"
        if not (last / "state.json").exists():
            return False
        load_weights(self.accelerator.unwrap_model(self.model), last)
        state = load_training_state(last, self.optimizer)
        if state["total_steps"] != self.total_steps:
            raise TrainingError(
                f"cannot resume: the checkpoint was made for {state['total_steps']} steps but the config now "
                f"gives {self.total_steps}; restore the original train.epochs/max_steps or start a new run"
            )
        self.step = state["step"]
        self.best_score, self.best_step = state["best_score"], state["best_step"]
        self.best_metrics, self.selection_baseline = state["best_metrics"], state["selection_baseline"]
        self.weighting.load_state_dict(state["weighting"])
        if self.trajectory is not None and "trajectory" in state:
            self.trajectory.load_state_dict(state["trajectory"])
        truncate_after(self.run_dir / "steps.csv", self.step)
        truncate_after(self.run_dir / "val.jsonl", self.step)
        return True

    # ------------------------------------------------------------------------------------ evaluation

    def validate(self) -> dict[str, dict[str, float]]:
        model = self.accelerator.unwrap_model(self.model)
        model.eval()
        try:
            with self.accelerator.autocast():
                return evaluate(student_predictor(model, self.tasks), self.tasks, self.val_set,
                                batch_size=self.batch_size * 2, device=self.device)
        finally:
            model.train()

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
            norms[task] = grad.float().norm() if grad is not None else torch.zeros((), device=loss.device)
        return norms

    def _sampler(self, epoch: int, skip_batches: int) -> EpochSampler | TaskBalancedSampler:
        if self.task_groups:
            return TaskBalancedSampler(self.task_groups, epoch=epoch, skip_batches=skip_batches, **self.sampler_args)
        return EpochSampler(len(self.train_set), epoch=epoch, skip_batches=skip_batches, **self.sampler_args)

    def _loader(self, epoch: int, skip_batches: int) -> DataLoader:
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)
        sampler = self._sampler(epoch, skip_batches)
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler, drop_last=True,
                          collate_fn=collate, num_workers=self.num_workers,
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
        try:
            with progress:
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
                        progress.update(bar, completed=self.step, loss=loss_value, speed=speed)
                        due = self.step % self.val_every == 0 or self.step == self.total_steps
                        if self.val_set is not None and due:
                            last_metrics = self._after_validation(self.validate(), log)
                        if self.step % self.save_every == 0 or self.step >= end:
                            self.save("last", last_metrics)
                        if self.step >= end:
                            break
        except KeyboardInterrupt:
            self.save("last", last_metrics)
            self.accelerator.print(f"interrupted at step {self.step}; continue with --resume")
            raise
        finally:
            if log is not None:
                log.close()
        elapsed = time.perf_counter() - t_start
        return FitResult(
            steps=self.step, best_step=self.best_step, best_metrics=self.best_metrics, last_metrics=last_metrics,
            train_seconds=elapsed, samples_per_second=seen / max(elapsed, 1e-9), skipped_steps=self.skipped_steps,
        )

    def _context(self, micro_batch: int = 0) -> StepContext:
        return StepContext(step=self.step, steps_per_epoch=self.steps_per_epoch, seed=self.cfg.seed,
                           micro_batch=micro_batch)

    def _micro_step(self, batch: dict, index: int, count: int) -> tuple[float, dict[str, Any]] | None:
        """Forward, loss and backward of one micro-batch (gradients accumulate); None if it has no signal."""
        teacher_outputs = self._teacher_outputs(batch)
        ctx = self._context(index)
        with self.accelerator.autocast():
            memory = self.trajectory.outputs(batch["image"]) if self.trajectory is not None else None
            raw = self.model(batch["image"])
        table = self.objective(raw, batch, teacher_outputs, memory_outputs=memory,
                               pixel_weighting=self.weighting.pixel_weights,
                               teacher_stats=self.weighting.needs_teacher_stats)
        phase = self.weighting.task_losses(table, ctx)
        if not phase.losses:  # no label and no teacher output in this batch (sparse labels, no teachers)
            return None
        norms = self._shared_grad_norms(phase.losses) if self.weighting.needs_rep_grads else None
        loss, row = self.weighting.total(phase, ctx, norms)
        if not torch.isfinite(loss):
            terms = ", ".join(f"{term_key(*k)}={float(t.value.detach()):.4g}" for k, t in table.items())
            raise TrainingError(
                f"the loss became {float(loss.detach())} at step {self.step} ({terms}); lower train.lr, set "
                f"train.grad_clip, or check the labels — the last good checkpoint is {self.ckpt_dir / 'last'}"
            )
        self.accelerator.backward(loss / count)
        for key, term in table.items():
            row[f"loss/{term_key(*key)}"] = float(term.value.detach())
        return float(loss.detach()), row

    def _train_step(self, micro: list[dict]) -> tuple[float, dict[str, Any]]:
        factor = warmup_cosine(self.step, self.total_steps, self.cfg.warmup_steps, self.cfg.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        lr = self.cfg.lr * factor
        self.optimizer.zero_grad(set_to_none=True)
        results = []
        for i, batch in enumerate(micro):
            last = i == len(micro) - 1
            with nullcontext() if last else self.accelerator.no_sync(self.model):
                result = self._micro_step(batch, i, len(micro))
            if result is not None:
                results.append(result)
        if not results:
            self.step += 1
            self.skipped_steps += 1
            return float("nan"), {"lr": lr}
        if self.cfg.grad_clip is not None:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.step += 1
        self.weighting.after_step(self._context())
        if self.trajectory is not None:
            self.trajectory.update(self.accelerator.unwrap_model(self.model), self.step)
        row: dict[str, Any] = {"lr": lr}
        for key in {k for _, r in results for k in r}:
            values = [r[key] for _, r in results if key in r]
            row[key] = sum(values) / len(values)
        return sum(v for v, _ in results) / len(results), row

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
