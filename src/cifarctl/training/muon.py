"""Muon: momentum whose update is orthogonalised, for conv filters; Nesterov SGD for the rest.

Muon (Jordan et al. 2024, the optimizer of the airbench94 Muon record) keeps an SGD momentum
buffer per weight, but steps along an approximately orthogonal matrix with the buffer's singular
vectors instead of along the buffer itself: every direction of the filter bank moves by about the
same amount, however unevenly the gradient is spread. The orthogonalisation is a few Newton-Schulz
iterations (bf16 on CUDA, fp32 on other devices: see ``ns_dtype``), cheap next to the forward and
backward passes. The filters are viewed as
matrices ``[out_channels, in_channels * kh * kw]``, which is also why ``torch.optim.Muon`` (2-D
parameters only) is not used as is.

One optimizer holds both kinds: groups with ``use_muon`` take Muon's step, the others torch's SGD
step (coupled weight decay, momentum, Nesterov), so a run has one optimizer, one scheduler and
one optimizer state in its checkpoint.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

# The quintic Newton-Schulz coefficients of the Muon record: chosen for the steepest slope at zero,
# so that 3 iterations push every singular value into roughly [0.5, 1.5] (it need not converge to 1).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 3
NS_EPS = 1e-7


def ns_dtype(device: torch.device) -> torch.dtype:
    """The Newton-Schulz dtype: bf16 on CUDA (the Muon record's), fp32 elsewhere.

    Measured on a 2-core AVX2 EPYC without native bf16: one 256x2304 orthogonalisation takes 837 ms
    in bf16 (emulated) against 27 ms in fp32, which made Muon's step cost 2.9 s of a 31 s step.
    """
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def orthogonalise(matrix: torch.Tensor, steps: int = NS_STEPS, dtype: torch.dtype | None = None,
                  coefficients: tuple[float, float, float] = NS_COEFFICIENTS) -> torch.Tensor:
    """An approximately orthogonal matrix with ``matrix``'s singular vectors (``U S' V^T``, S' near 1).

    Computed in ``dtype`` (default: ``ns_dtype`` of the matrix's device), with the quintic iteration's
    ``coefficients`` (the Muon record's by default). Each matrix on its own: the current record pads
    every filter bank to one size to run them as one batched product, which costs a GPU nothing and a
    CPU the padded FLOPs (the results are the same: zero rows and columns stay zero).
    Usage: ``update = orthogonalise(grad.reshape(len(grad), -1))``
    """
    if matrix.ndim != 2:
        raise ValueError(f"orthogonalise takes a matrix, got shape {list(matrix.shape)}")
    a, b, c = coefficients
    x = matrix.to(dtype or ns_dtype(matrix.device))
    x = x / (x.norm() + NS_EPS)          # the top singular value is then at most 1
    tall = x.size(0) > x.size(1)
    if tall:                             # iterate on the short side: X X^T is the smaller product
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """Muon on groups with ``use_muon=True`` (conv filters, any ndim >= 2), Nesterov SGD on the others.

    Muon groups: the whole filter bank is rescaled to norm sqrt(out_channels) (an average filter norm
    of 1, as the Muon record does: with orthogonal steps the weights' scale would otherwise only grow)
    every ``renorm_every[0] + int(renorm_every[1] * progress)`` steps (``progress``: steps taken over
    ``total_steps``; the Muon record's every step is ``(1, 0)``, the current record's ``(2, 15)``), then
    moved by ``lr`` along the orthogonalised (Nesterov) momentum, then shrunk by ``1 - lr *
    weight_decay`` (decoupled weight decay; 0 by default). SGD groups: exactly ``torch.optim.SGD``'s
    step with ``momentum``, ``nesterov`` and coupled ``weight_decay``. The steps taken and the last
    rescaling are kept in the groups, so a checkpoint resumes them exactly.

    Usage: ``Muon([{"params": filters, "use_muon": True}, {"params": rest, "use_muon": False, "lr": 0.1}],
    lr=0.24, momentum=0.6)``
    """

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.95, nesterov: bool = True,
                 weight_decay: float = 0.0, renormalise: bool = True, renorm_every: tuple[int, int] = (1, 0),
                 total_steps: int = 1, coefficients: tuple[float, float, float] = NS_COEFFICIENTS) -> None:
        if lr <= 0 or not 0 <= momentum < 1:
            raise ValueError(f"Muon needs lr > 0 and 0 <= momentum < 1, got lr={lr}, momentum={momentum}")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        use_muon=True, renormalise=renormalise, renorm_every=tuple(renorm_every),
                        total_steps=total_steps, coefficients=tuple(coefficients), steps=0, last_renorm=0)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            renorm = self._renorm_due(group) if group["use_muon"] else False
            for p in group["params"]:
                if p.grad is None:
                    continue
                if group["use_muon"]:
                    self._muon_step(p, group, renorm)
                else:
                    self._sgd_step(p, group)
        return loss

    @staticmethod
    def _renorm_due(group: dict[str, Any]) -> bool:
        """Count this step; whether the filter banks are rescaled at it (see the class docstring)."""
        group["steps"] = step = group.get("steps", 0) + 1
        start, rise = group.get("renorm_every", (1, 0))
        every = start + int(rise * step / max(group.get("total_steps", 1), 1))
        if step - group.get("last_renorm", 0) < every:
            return False
        group["last_renorm"] = step
        return True

    def _momentum(self, p: torch.Tensor, grad: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        """torch.optim.SGD's momentum: buf = m * buf + grad (buf = grad at first); Nesterov looks one step ahead."""
        momentum = group["momentum"]
        if not momentum:
            return grad
        state = self.state[p]
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = grad.detach().clone()
        else:
            buf.mul_(momentum).add_(grad)
        return grad.add(buf, alpha=momentum) if group["nesterov"] else buf

    def _muon_step(self, p: torch.Tensor, group: dict[str, Any], renorm: bool = True) -> None:
        direction = self._momentum(p, p.grad, group)
        if group["renormalise"] and renorm:
            p.mul_(len(p) ** 0.5 / p.norm().clamp_min(NS_EPS))
        matrix = direction.reshape(len(direction), -1)
        update = orthogonalise(matrix, coefficients=group.get("coefficients", NS_COEFFICIENTS)).view(direction.shape)
        p.add_(update.to(p.dtype), alpha=-group["lr"])
        if group["weight_decay"]:  # decoupled: the filters shrink by the step's lr times the decay
            p.mul_(1 - group["lr"] * group["weight_decay"])

    def _sgd_step(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        grad = p.grad
        if group["weight_decay"]:
            grad = grad.add(p, alpha=group["weight_decay"])
        p.add_(self._momentum(p, grad, group), alpha=-group["lr"])
