"""The training loop, on Hugging Face Accelerate.

One step: teacher outputs (precomputed maps in the batch, or teachers run online under ``no_grad``) →
student → objective (loss table) → weighting (one scalar) → backward, clipping, optimizer step. Every
``val_every`` steps the student is validated, the weighting gets the metrics as feedback, and the best
checkpoint is kept. The engine owns backward, mixed precision and gradient sync — never a weighting —
and holds no task- or method-specific code.
"""

from __future__ import annotations

import math
import time
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
from ..distill.weighting import Weighting
from ..errors import TrainingError
from ..evaluation.delta_m import delta_m
from ..evaluation.evaluate import evaluate, student_predictor
from ..tasks import Task
from ..teachers import Teacher
from .checkpoint import load_training_state, load_weights, save_checkpoint
from .logging import StepLog, append_jsonl, truncate_after
from .sampler import EpochSampler
from .schedule import warmup_cosine


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


def term_key(task: str, source: str) -> str:
    return f"{task}/{source}"


class Trainer:
    def __init__(self, *, model: torch.nn.Module, spec: dict[str, Any], tasks: dict[str, Task],
                 objective: Objective, weighting: Weighting, train_set: Dataset, val_set: Dataset | None,
                 cfg: TrainConfig, batch_size: int, num_workers: int, run_dir: Path,
                 online_teachers: list[Teacher] | None = None, accelerator: Accelerator | None = None):
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
        decay, no_decay = [], []
        for p in model.parameters():
            (decay if p.ndim >= 2 else no_decay).append(p)  # no weight decay on norms and biases
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr,
        )
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.sampler_args = dict(
            size=len(train_set), seed=cfg.seed, batch_size=batch_size,
            rank=self.accelerator.process_index, world_size=self.accelerator.num_processes,
        )
        self.steps_per_epoch = EpochSampler(epoch=0, **self.sampler_args).batches_per_epoch()
        if self.steps_per_epoch == 0:
            raise TrainingError(
                f"the training set has {len(train_set)} images, fewer than one batch of {batch_size}: "
                "lower data.batch_size or add images"
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
            "weighting": self.weighting.state_dict(),
        }

    def save(self, name: str, metrics: dict[str, dict[str, float]] | None = None) -> None:
        if not self.accelerator.is_main_process:
            return
        state = self._state()
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
        """Δm (primary metrics) relative to the first validation: only used to pick the best step."""
        if self.selection_baseline is None:
            self.selection_baseline = metrics
        directions = {t: type(task).metric_directions for t, task in self.tasks.items()}
        primary = {t: type(task).primary_metric for t, task in self.tasks.items()}
        return delta_m(metrics, self.selection_baseline, directions, convention="primary", primary=primary)

    # ------------------------------------------------------------------------------------- training

    def _teacher_outputs(self, batch: dict) -> dict[str, dict[str, torch.Tensor]]:
        outputs = dict(batch.get("teacher") or {})
        for teacher in self.online_teachers:
            outputs[teacher.name] = teacher.predict(batch["image"])
        return outputs

    def _loader(self, epoch: int, skip_batches: int) -> DataLoader:
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)
        sampler = EpochSampler(epoch=epoch, skip_batches=skip_batches, **self.sampler_args)
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler, drop_last=True,
                          collate_fn=collate, num_workers=self.num_workers,
                          persistent_workers=False, pin_memory=self.device.type == "cuda")

    def fit(self, *, resume: bool = False, stop_at_step: int | None = None) -> FitResult:
        """Train to ``total_steps`` (or stop early at ``stop_at_step``, as an interruption would)."""
        resumed = self.resume() if resume else False
        if resume and not resumed:
            self.accelerator.print("no checkpoint to resume from; starting from step 0")
        columns = ["step", "epoch", "lr", "loss", "samples_per_s"]
        for task, source in self.objective.sources():
            columns += [f"loss/{term_key(task, source)}", f"weight/{term_key(task, source)}"]
        log = StepLog(self.run_dir / "steps.csv", columns, resume=resumed) if self.accelerator.is_main_process else None
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
                    for batch in self._loader(epoch, skip):
                        t0 = time.perf_counter()
                        loss_value, row = self._train_step(move_batch(batch, self.device))
                        seen += batch["image"].shape[0]
                        speed = batch["image"].shape[0] / max(time.perf_counter() - t0, 1e-9)
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

    def _train_step(self, batch: dict) -> tuple[float, dict[str, Any]]:
        lr = self.cfg.lr * warmup_cosine(self.step, self.total_steps, self.cfg.warmup_steps, self.cfg.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        teacher_outputs = self._teacher_outputs(batch)
        with self.accelerator.autocast():
            raw = self.model(batch["image"])
        table = self.objective(raw, batch, teacher_outputs)
        if not table:  # no label and no teacher output in this batch (sparse labels, no teachers)
            self.step += 1
            self.skipped_steps += 1
            return float("nan"), {"lr": lr}
        loss, weights = self.weighting.combine(table, self.step)
        if not torch.isfinite(loss):
            terms = ", ".join(f"{term_key(*k)}={float(t.value.detach()):.4g}" for k, t in table.items())
            raise TrainingError(
                f"the loss became {float(loss.detach())} at step {self.step} ({terms}); lower train.lr, set "
                f"train.grad_clip, or check the labels — the last good checkpoint is {self.ckpt_dir / 'last'}"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        if self.cfg.grad_clip is not None:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.step += 1
        row: dict[str, Any] = {"lr": lr}
        for key, term in table.items():
            row[f"loss/{term_key(*key)}"] = float(term.value.detach())
            row[f"weight/{term_key(*key)}"] = float(weights[key])
        return float(loss.detach()), row

    def _after_validation(self, metrics: dict[str, dict[str, float]],
                          log: StepLog | None) -> dict[str, dict[str, float]]:
        self.weighting.feedback(metrics, self.step)
        score = self._selection_score(metrics)
        if self.accelerator.is_main_process:
            if log is not None:
                log.flush()
            append_jsonl(self.run_dir / "val.jsonl", {"step": self.step, "metrics": metrics, "selection_score": score})
        if self.best_score is None or score > self.best_score or math.isnan(self.best_score):
            self.best_score, self.best_step, self.best_metrics = score, self.step, metrics
            self.save("best", metrics)
        return metrics
