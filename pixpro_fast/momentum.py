"""The momentum (EMA) target: cosine momentum schedule and one fused update per step."""
from __future__ import annotations

import math

import torch


def momentum_at(step: int, total_steps: int, base: float = 0.99) -> float:
    """``m_t = 1 - (1 - m0) * (cos(pi * t / T) + 1) / 2``: m0 at t = 0, 1 at t = T."""
    if total_steps <= 0:
        return base
    t = min(max(step, 0), total_steps)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * t / total_steps) + 1.0) / 2.0


@torch.no_grad()
def update_target(target_params: list[torch.Tensor], online_params: list[torch.Tensor], momentum: float) -> None:
    """``theta_k = m * theta_k + (1 - m) * theta_q`` for all parameters in one fused op.

    Only parameters are averaged; BatchNorm running statistics of the target are its own,
    accumulated by its forward passes in training mode (as in the reference method).
    """
    torch._foreach_lerp_(target_params, online_params, 1.0 - momentum)


def paired_parameters(online, target) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(target params, online params) for every module of ``target`` (a ModuleDict whose keys
    name modules of ``online``), in the same order, checked name by name."""
    t_out, o_out = [], []
    for key, module in target.items():
        for (tn, tp), (on, op) in zip(module.named_parameters(), online[key].named_parameters()):
            if tn != on or tp.shape != op.shape:
                raise RuntimeError(f"target and online differ at {key}.{tn} / {key}.{on}")
            t_out.append(tp)
            o_out.append(op)
    return t_out, o_out
