"""Muon: the orthogonalised step on conv filters, SGD's step on the rest, against hand computations."""

from __future__ import annotations

import pytest
import torch

from cifarctl.training.muon import NS_COEFFICIENTS, Muon, ns_dtype, orthogonalise


def _newton_schulz_by_hand(g: torch.Tensor, steps: int = 3) -> torch.Tensor:
    """The quintic iteration written out in float64, on the short side of the matrix."""
    a, b, c = NS_COEFFICIENTS
    x = g.double() / g.double().norm()
    flip = x.shape[0] > x.shape[1]
    x = x.T if flip else x
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + b * gram @ x + c * gram @ gram @ x
    return x.T if flip else x


@pytest.mark.parametrize("shape", [(64, 216), (256, 64), (16, 40)])
def test_orthogonalise_keeps_the_singular_vectors_and_evens_the_values(shape: tuple[int, int]) -> None:
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    out = orthogonalise(g)
    assert out.dtype == torch.float32 and out.shape == g.shape  # fp32 off CUDA (see ns_dtype)
    assert torch.allclose(out.double(), _newton_schulz_by_hand(g), atol=1e-4)
    u, s, vh = torch.linalg.svd(g.double(), full_matrices=False)
    projected = u.T @ out.double() @ vh.T        # diagonal: the same singular vectors
    values = projected.diagonal()
    assert torch.allclose(projected, torch.diag(values), atol=1e-3)
    assert values.min() > 0.3 and values.max() < 1.3   # evened out, from a spread of s.max() / s.min()
    assert s.max() / s.min() > 2


def test_ns_dtype_is_bf16_only_on_cuda() -> None:
    assert ns_dtype(torch.device("cpu")) == torch.float32
    assert ns_dtype(torch.device("cuda")) == torch.bfloat16
    assert orthogonalise(torch.randn(4, 6), dtype=torch.bfloat16).dtype == torch.bfloat16


def test_muon_step_by_hand() -> None:
    gen = torch.Generator().manual_seed(1)
    weight = torch.nn.Parameter(torch.randn(8, 3, 3, 3, generator=gen))
    start = weight.detach().clone()
    grads = [torch.randn(8, 3, 3, 3, generator=gen) for _ in range(2)]
    opt = Muon([{"params": [weight], "use_muon": True}], lr=0.24, momentum=0.6, nesterov=True)

    expected = start.double()
    buf = torch.zeros_like(expected)
    for g in grads:
        weight.grad = g.clone()
        opt.step()
        buf = 0.6 * buf + g.double()
        direction = g.double() + 0.6 * buf                                # Nesterov
        expected = expected * (8 ** 0.5 / expected.norm())                # filter bank to norm sqrt(out)
        expected = expected - 0.24 * _newton_schulz_by_hand(direction.reshape(8, -1)).view(8, 3, 3, 3)
        assert torch.allclose(weight.double(), expected, atol=1e-4)
    assert torch.equal(opt.state[weight]["momentum_buffer"], grads[0] * 0.6 + grads[1])


def test_muon_sgd_groups_are_torch_sgd() -> None:
    gen = torch.Generator().manual_seed(2)
    a = [torch.nn.Parameter(torch.randn(5, 7, generator=gen)), torch.nn.Parameter(torch.randn(7, generator=gen))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    ours = Muon([{"params": a, "use_muon": False, "lr": 0.3, "momentum": 0.85, "weight_decay": 1e-3}],
                lr=0.24, momentum=0.6, nesterov=True)
    theirs = torch.optim.SGD(b, lr=0.3, momentum=0.85, nesterov=True, weight_decay=1e-3, foreach=False)
    for _ in range(4):
        grads = [torch.randn(p.shape, generator=gen) for p in a]
        for p, q, g in zip(a, b, grads):
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
    for p, q in zip(a, b):
        assert torch.allclose(p, q, atol=1e-7, rtol=0)


def test_muon_skips_frozen_parameters_and_round_trips_its_state() -> None:
    frozen = torch.nn.Parameter(torch.ones(4, 2, 1, 1), requires_grad=False)
    live = torch.nn.Parameter(torch.randn(4, 2, 1, 1))
    opt = Muon([{"params": [frozen, live], "use_muon": True}], lr=0.1, momentum=0.6)
    live.grad = torch.randn(4, 2, 1, 1)
    opt.step()
    assert torch.equal(frozen, torch.ones(4, 2, 1, 1)) and frozen not in opt.state
    again = Muon([{"params": [frozen, live], "use_muon": True}], lr=0.1, momentum=0.6)
    again.load_state_dict(opt.state_dict())
    assert torch.equal(again.state[live]["momentum_buffer"], opt.state[live]["momentum_buffer"])
