"""LARS on top of SGD with momentum, and the learning-rate schedule (DESIGN §1)."""
from __future__ import annotations

import math

import torch


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose multi-dimensional parameters get layer-wise adaptive rates.

    For a parameter with more than one dimension: ``g <- g + weight_decay * p``, then
    ``g <- g * trust * ||p|| / (||g|| + eps)`` (factor 1 where ``||p|| = 0``, so a
    zero-initialised tensor can still move). 1-D parameters (BatchNorm, biases) get neither
    decay nor scaling. Then ``buf <- momentum * buf + g`` and ``p <- p - lr * buf``.
    All updates use fused multi-tensor operations.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 1e-5,
                 trust_coefficient: float = 0.001, eps: float = 1e-8):
        if lr < 0:
            raise ValueError(f"learning rate must be non-negative, got {lr}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, eps=eps)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._group_step(group, group["lr"])
        return loss

    def _group_step(self, group, lr):
        multi_p, multi_g, multi_buf, single_p, single_g, single_buf = [], [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if p.ndim > 1:
                multi_p.append(p); multi_g.append(p.grad); multi_buf.append(state["momentum_buffer"])
            else:
                single_p.append(p); single_g.append(p.grad); single_buf.append(state["momentum_buffer"])
        if multi_p:
            grads = torch._foreach_add(multi_g, multi_p, alpha=group["weight_decay"])
            p_norm = torch.stack(torch._foreach_norm(multi_p))
            g_norm = torch.stack(torch._foreach_norm(grads))
            scale = torch.where(p_norm > 0, group["trust_coefficient"] * p_norm / (g_norm + group["eps"]),
                                torch.ones_like(p_norm))
            torch._foreach_mul_(grads, list(scale.unbind()))
            self._apply(multi_p, grads, multi_buf, group["momentum"], lr)
        if single_p:
            self._apply(single_p, single_g, single_buf, group["momentum"], lr)

    @staticmethod
    def _apply(params, grads, bufs, momentum, lr):
        torch._foreach_mul_(bufs, momentum)
        torch._foreach_add_(bufs, grads)
        if torch.is_tensor(lr):   # a schedule written in place (a step compiled whole): no host read
            torch._foreach_add_(params, torch._foreach_mul(bufs, -lr))
        else:
            torch._foreach_add_(params, bufs, alpha=-lr)


# --------------------------------------------------------------------------- updates a compiled step captures

def capturable_problem(optimizer: torch.optim.Optimizer) -> str | None:
    """Why :func:`capturable_update` cannot stand in for ``optimizer.step()``, or None."""
    if isinstance(optimizer, LARS):
        return None
    if type(optimizer) is torch.optim.SGD:
        bad = [k for k in ("nesterov", "maximize") if any(g.get(k) for g in optimizer.param_groups)]
        if any(g.get("dampening", 0) for g in optimizer.param_groups):
            bad.append("dampening")
        return f"SGD with {', '.join(bad)}" if bad else None
    if type(optimizer) is torch.optim.AdamW:
        bad = [k for k in ("amsgrad", "maximize") if any(g.get(k) for g in optimizer.param_groups)]
        return f"AdamW with {', '.join(bad)}" if bad else None
    return f"the {type(optimizer).__name__} optimiser"


@torch.no_grad()
def prepare_capturable(optimizer: torch.optim.Optimizer) -> None:
    """Every state tensor :func:`capturable_update` reads, made now (zeros, as the optimiser
    would make them at its first step; an AdamW step count on its parameter's device), so a
    captured step finds the same tensors at every call."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state[p]
            if isinstance(optimizer, torch.optim.AdamW):
                state.setdefault("exp_avg", torch.zeros_like(p, memory_format=torch.preserve_format))
                state.setdefault("exp_avg_sq", torch.zeros_like(p, memory_format=torch.preserve_format))
                step = state.get("step", 0.0)
                state["step"] = torch.as_tensor(step, dtype=torch.float32).to(p.device).clone()
            elif isinstance(optimizer, LARS) or group.get("momentum", 0):
                state.setdefault("momentum_buffer", torch.zeros_like(p, memory_format=torch.preserve_format))


def capturable_groups(optimizer: torch.optim.Optimizer) -> list[dict]:
    """The optimiser's parameter groups without their lr, as :func:`capturable_update` reads
    them: a compiled step guards on every value it reads, so it must not read the float lr
    the schedule changes every step. Take them again when the groups' settings change."""
    return [{k: v for k, v in group.items() if k != "lr"} for group in optimizer.param_groups]


@torch.no_grad()
def capturable_update(optimizer: torch.optim.Optimizer, lr: torch.Tensor, groups: list[dict] | None = None) -> None:
    """``optimizer.step()`` for LARS, SGD and AdamW with the lr a 0-d device tensor and no host
    read: the update a compiled step captures (torch.optim's own step() is kept out of a
    compiled graph by design). Call :func:`prepare_capturable` once first. SGD's zero-started
    momentum buffer equals its first-step copy of the gradient (no dampening); AdamW is
    PyTorch's (decoupled decay, bias-corrected moments, no amsgrad). ``groups``:
    :func:`capturable_groups` (default: taken now)."""
    for group in capturable_groups(optimizer) if groups is None else groups:
        if isinstance(optimizer, LARS):
            optimizer._group_step(group, lr)
            continue
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            continue
        grads = [p.grad for p in params]
        state = [optimizer.state[p] for p in params]
        if isinstance(optimizer, torch.optim.AdamW):
            _adamw(params, grads, state, group, lr)
        else:
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            if group["momentum"]:
                bufs = [s["momentum_buffer"] for s in state]
                torch._foreach_mul_(bufs, group["momentum"])
                torch._foreach_add_(bufs, grads)
                grads = bufs
            torch._foreach_add_(params, torch._foreach_mul(grads, -lr))


def _adamw(params, grads, state, group, lr: torch.Tensor) -> None:
    beta1, beta2 = group["betas"]
    steps = [s["step"] for s in state]
    exp_avgs, exp_avg_sqs = [s["exp_avg"] for s in state], [s["exp_avg_sq"] for s in state]
    torch._foreach_add_(steps, 1.0)
    if group["weight_decay"]:
        torch._foreach_mul_(params, 1.0 - lr * group["weight_decay"])
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1.0 - beta2)
    step = steps[0]                                  # every parameter has taken the same steps
    step_size = lr / (1.0 - beta1 ** step)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, (1.0 - beta2 ** step).sqrt())
    torch._foreach_add_(denom, group["eps"])
    update = torch._foreach_div(exp_avgs, denom)
    torch._foreach_mul_(update, -step_size)
    torch._foreach_add_(params, update)


def scaled_lr(base_lr: float, global_batch: int, rule: str = "linear") -> float:
    """Peak learning rate: ``base_lr * B / 256`` ('linear') or ``4 * sqrt(B / 1024)`` ('sqrt')."""
    if rule == "linear":
        return base_lr * global_batch / 256.0
    if rule == "sqrt":
        return 4.0 * math.sqrt(global_batch / 1024.0)
    raise ValueError(f"unknown lr scaling rule {rule!r}; choose 'linear' or 'sqrt'")


LR_SCHEDULES = ("warmup_cosine", "warmup_cosine_relative")

# schedules a config may no longer name, and why
RETIRED_LR_SCHEDULES = {
    "warmup_times_cosine": "'warmup_times_cosine' (a warmup factor times a cosine from step 0 down to an absolute "
                           "final_lr) is no longer offered: LOCA's reference uses 'warmup_cosine_relative' (linear "
                           "warmup from 0, then a cosine over the remaining steps down to final_lr_fraction of the "
                           "peak). A run begun under the old schedule cannot go on along the same curve; start it "
                           "afresh in a new --out",
}


def lr_at(step: int, total_steps: int, warmup_steps: int, peak_lr: float, final_lr: float = 1e-6,
          schedule: str = "warmup_cosine", final_lr_fraction: float = 0.01) -> float:
    """The learning rate of optimiser step ``step`` (0-based).

    ``warmup_cosine``: linear warmup from ``peak/100`` to ``peak`` over ``warmup_steps``, then a
    cosine down to the absolute ``final_lr`` at ``total_steps``.

    ``warmup_cosine_relative`` (scenic's ``constant * linear_warmup * cosine_decay``, LOCA's):
    ``peak * min(1, step / warmup_steps) * (a + (1 - a) * (1 + cos(pi * t)) / 2)`` with
    ``a = final_lr_fraction`` and ``t = (step - warmup_steps) / (total_steps - warmup_steps)``
    clamped to [0, 1]: 0 at step 0, the peak at the end of the warmup, then a cosine over the
    remaining steps down to ``a * peak`` at ``total_steps`` (scenic's cycle would start again
    there; its loop never trains that step). No decay when the warmup spans the whole run.
    ``final_lr`` is not read.
    """
    if schedule == "warmup_cosine_relative":
        step = max(step, 0)
        warm = min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0
        decay_steps = total_steps - warmup_steps
        if decay_steps <= 0:
            return peak_lr * warm
        t = min(max(step - warmup_steps, 0), decay_steps) / decay_steps
        a = final_lr_fraction
        return peak_lr * warm * (a + (1.0 - a) * 0.5 * (1.0 + math.cos(math.pi * t)))
    if schedule in RETIRED_LR_SCHEDULES:
        raise ValueError(RETIRED_LR_SCHEDULES[schedule])
    if schedule != "warmup_cosine":
        raise ValueError(f"lr schedule must be one of {LR_SCHEDULES}, got {schedule!r}")
    if warmup_steps > 0 and step < warmup_steps:
        start = peak_lr / 100.0
        return start + (peak_lr - start) * step / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    t = min(max(step - warmup_steps, 0), decay_steps)
    return final_lr + (peak_lr - final_lr) * 0.5 * (1.0 + math.cos(math.pi * t / decay_steps))


def lars_travel(total_steps: int, warmup_steps: int, peak_lr: float, trust: float, momentum: float,
                final_lr: float = 1e-6, schedule: str = "warmup_cosine", final_lr_fraction: float = 0.01) -> float:
    """The most a LARS schedule can move any weight tensor, relative to its norm: each step
    changes it by at most ``lr * trust`` (times ``1 / (1 - momentum)`` once momentum has
    built up), summed over the schedule (:func:`lr_at` with the same arguments). Gradient
    noise makes the real net change far smaller; below about 1 the weights end where they
    started, whatever the loss did."""
    total_lr = sum(lr_at(s, total_steps, warmup_steps, peak_lr, final_lr, schedule, final_lr_fraction)
                   for s in range(total_steps))
    return total_lr * trust / (1.0 - momentum)


def adamw_param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: weight decay on parameters of 2+ dimensions, none on 1-D ones (biases,
    norms); the second is marked so a resumed run keeps its decay at zero."""
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0, "no_weight_decay": True}]
