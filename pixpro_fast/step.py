"""One optimiser step as one function of device tensors, so that it can be compiled whole.

:class:`TrainStep` runs the forward of every view (the target branch included), the
backward, gradient clipping where set, the optimiser, the method's hooks, the momentum
update and the loss statistics. Called eagerly it is the engine's step. With
``whole=True`` it is built to be captured as one graph by ``torch.compile`` (the backward
traced with it, see :func:`compile_step`), and to be replayed by CUDA graphs:

- the schedules enter as 0-d device tensors written in place before each step (the lr the
  optimiser's update reads, the target momentum), so a new value is new data, not a new graph;
- gradients exist from the start and are zeroed in place, never set to None, so every
  tensor keeps its address (a parameter that gets no gradient in a step is then updated as
  if its gradient were zero: weight decay and momentum still move it, where the eager step,
  whose gradients are set to None, leaves it alone);
- nothing in the step reads a value back to the host: the statistics are returned as one
  device tensor, read by the engine at its log and checkpoint steps only.

Whole-step capture runs one process and one micro-batch per step (DDP's hooks and
gradient accumulation stay in the eager step), and not with fp16, whose loss scaling reads
the gradients' finiteness on the host every step.
"""
from __future__ import annotations

import contextlib

import torch

from .methods.contract import Method
from .optim import capturable_groups, capturable_problem, capturable_update, prepare_capturable


def whole_step_problem(accum_steps: int, world_size: int, precision: str) -> str | None:
    """Why a whole-step capture cannot run these settings, or None."""
    if world_size > 1:
        return f"it runs one process (this run has {world_size}); several processes compile the model (--compile)"
    if accum_steps > 1:
        return f"it takes one micro-batch per step (accum_steps is {accum_steps})"
    if precision == "fp16":
        return "fp16's loss scaling reads the gradients' finiteness on the host every step; use bf16"
    return None


class TrainStep:
    """``step(micro_batches) -> stats``: one optimiser step over ``training``'s method and
    optimiser (a :class:`pixpro_fast.training.Training`). ``stats`` is a float32 device tensor:
    the loss, then the method's statistics in their order (``stat_names``), averaged over the
    micro-batches. Set the schedules first with :meth:`set_schedules`.

    ``scaler`` (a GradScaler, fp16), ``ddp`` (the DistributedDataParallel wrapper whose
    ``no_sync`` skips the reduction of all but the last micro-batch) and ``forward`` (the
    callable run on ``(views, coords)``: the method, or its DDP or compiled wrapper) serve
    the eager step. ``whole=True`` readies the step for one-graph capture (module docstring)."""

    def __init__(self, training, forward=None, scaler=None, ddp=None, clip_grad_norm: float = 0.0,
                 whole: bool = False):
        self.training = training
        self.method: Method = training.method
        self.optimizer = training.optimizer
        self.forward = forward if forward is not None else self.method
        self.scaler, self.ddp, self.clip_grad_norm, self.whole = scaler, ddp, clip_grad_norm, whole
        self.params = [p for p in self.method.online.parameters() if p.requires_grad]
        self.stat_names: tuple[str, ...] | None = None
        self._step, self._momentum = 0, training.momentum_at(0)
        self._hooks_step = type(self.method).before_optimizer_step is not Method.before_optimizer_step
        device = training.device
        self.lr = torch.tensor(training.peak_lr, dtype=torch.float32, device=device)
        self.momentum = torch.tensor(training.momentum_at(0), dtype=torch.float32, device=device)
        if whole:
            if scaler is not None and scaler.is_enabled():
                raise ValueError(whole_step_problem(1, 1, "fp16"))
            problem = capturable_problem(self.optimizer)
            if problem:
                raise ValueError(f"a whole step cannot capture {problem}")
            self.prepare()

    def prepare(self) -> None:
        """Ready a whole step for capture (done at construction; again after the optimiser's
        state or settings were loaded): every optimiser state tensor and gradient exists, the
        groups' settings are taken."""
        if not self.whole:
            return
        prepare_capturable(self.optimizer)
        self._groups = capturable_groups(self.optimizer)
        for p in self.params:         # the backward accumulates into these: one address each, every step
            if p.grad is None:
                p.grad = torch.zeros_like(p)

    def set_schedules(self, step: int) -> float:
        """The lr and target momentum of optimiser step ``step`` (counted from 0) into place;
        returns the lr."""
        lr = self.training.set_lr(step)      # the groups' lr: what a checkpoint records
        self._momentum, self._step = self.training.momentum_at(step), step
        if self.whole:                        # what the captured step reads
            self.lr.fill_(lr)
            self.momentum.fill_(self._momentum)
        return lr

    def zero_grad(self) -> None:
        """A whole step: gradients to zero in place (addresses kept); else set to None."""
        if not self.whole:
            self.optimizer.zero_grad(set_to_none=True)
            return
        grads = [p.grad for p in self.params if p.grad is not None]
        if grads:
            torch._foreach_zero_(grads)

    def __call__(self, micro_batches) -> torch.Tensor:
        stats = []
        n = len(micro_batches)
        for i, batch in enumerate(micro_batches):
            sync = self.ddp.no_sync() if self.ddp is not None and i < n - 1 else contextlib.nullcontext()
            with sync, torch.enable_grad():   # a whole step runs under no_grad (compile_step)
                with self.training.autocast():
                    out = self.forward(batch.views, batch.coords)
                loss = out.loss / n if n > 1 else out.loss
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            stats.append(torch.stack([out.loss.detach().float()] + [v.detach().float() for v in out.stats.values()]))
        self.stat_names = ("loss", *out.stats)
        if self._hooks_step:
            self.method.before_optimizer_step(self._step)
        if self.clip_grad_norm > 0:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad_norm, foreach=True)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif self.whole:
            capturable_update(self.optimizer, self.lr, self._groups)
        else:
            self.optimizer.step()
        self.zero_grad()
        self.method.after_optimizer_step()
        self.method.update_target(self.momentum if self.whole else self._momentum)
        return stats[0] if n == 1 else torch.stack(stats).mean(0)


def trace_backward() -> bool:
    """Let ``torch.compile`` trace ``Tensor.backward()`` into the step's graph where this
    PyTorch can (its ``trace_autograd_ops`` switch); True when it can."""
    config = torch._dynamo.config
    if hasattr(config, "trace_autograd_ops"):
        config.trace_autograd_ops = True
        return True
    return False


def compile_step(step: TrainStep, mode: str = "default", backend: str = "inductor"):
    """``step`` compiled whole: one graph from the forward to the momentum update where this
    PyTorch traces the backward (:func:`trace_backward`), else the backward as a break between
    the forward's and the update's graphs."""
    if not step.whole:
        raise ValueError("compile_step needs a TrainStep built with whole=True")
    trace_backward()
    compiled = torch.compile(step.__call__, mode=None if mode == "default" else mode, backend=backend)

    def run(micro_batches):
        # grad mode off around the graph (on again inside, for the forward and backward): the
        # compiler then sees a graph that no outer backward will differentiate, and the optimiser's
        # in-place updates of the parameters stay inside it instead of an epilogue of copies
        with torch.no_grad():
            return compiled(micro_batches)
    return run
