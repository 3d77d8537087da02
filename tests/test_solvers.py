"""Solvers: grids and guidance windows from the release, hand-derived steps, exact solutions, convergence order."""

import math

import pytest
import torch
from analytic import ConstantX0T2I, GaussianFlow, GaussianFlowT2I

from pixeldit_cli.solvers import c2i_grid, flow_sigma_grid, solve

# ---- grids ------------------------------------------------------------------------------------------


def test_c2i_grid_shift_1_and_2():
    g = c2i_grid(100)
    assert len(g) == 101 and g[0] == 0 and g[-1] == 1.0 and g.dtype == torch.float32
    assert g[1].item() == pytest.approx(0.01, abs=1e-7) and g[99].item() == pytest.approx(0.99, abs=1e-6)
    g2 = c2i_grid(100, 2.0)
    for i, want in [(1, 0.005025), (2, 0.010101), (99, 0.98020)]:
        assert g2[i].item() == pytest.approx(want, abs=1e-5)
    assert g2[-1] == 1.0


def test_flow_sigma_grid_50_steps_shift_4():
    s = flow_sigma_grid(50, 4.0)
    assert len(s) == 51 and s[-1].item() == 0.0
    for i, want in [(0, 0.99975), (1, 0.99467), (2, 0.98944), (48, 0.14273), (49, 0.07540)]:
        assert s[i].item() == pytest.approx(want, abs=1e-5)


# ---- guidance windows (docs/conventions.md#samplers) -------------------------------------------------


@pytest.mark.parametrize(
    "shift,interval,first,last",
    [
        (1.0, (0.1, 1.0), 11, 99),
        (1.0, (0.1, 0.9), 11, 89),
        (2.0, (0.1, 1.0), 19, 99),
    ],
)
def test_guided_steps_match_release(shift, interval, first, last):
    m = GaussianFlow([0.5, -0.5])
    x = torch.randn(2, 1, 2, 2)
    _, st = solve(m, x, torch.tensor([0, 0]), solver="flowdpm", steps=100, cfg=2.0, interval=interval, shift=shift)
    guided = [i for i, g in enumerate(st.guided_steps) if g]
    assert guided == list(range(first, last + 1))
    assert st.calls == 100 and st.evals == 100 + len(guided)  # unguided steps skip the uncond half


def test_cfg_one_and_empty_interval_halve_the_work():
    m = GaussianFlow([0.5, -0.5])
    x = torch.randn(1, 1, 2, 2)
    for kw in (dict(cfg=1.0, interval=(0.0, 1.0)), dict(cfg=3.0, interval=(0.5, 0.5))):
        _, st = solve(m, x, torch.tensor([0]), solver="euler", steps=10, **kw)
        assert st.evals == 10 and st.calls == 10
    _, st = solve(m, x, torch.tensor([0]), solver="euler", steps=10, cfg=3.0, interval=(0.0, 1.0))
    assert st.evals == 19  # t = 0 is outside the strict window


# ---- hand-derived steps -----------------------------------------------------------------------------


class Linear(torch.nn.Module):
    """v = a·x + b·t (c2i convention), with a null class giving b_null."""

    def __init__(self, a, b, b_null):
        super().__init__()
        self.a, self.b, self.bn = a, b, b_null
        from types import SimpleNamespace

        self.config = SimpleNamespace(kind="c2i", num_classes=1)

    def forward(self, x, t, y):
        b = torch.where(y == 1, self.bn, self.b).view(-1, 1, 1, 1)
        return self.a * x + b * t.view(-1, 1, 1, 1)


def test_flowdpm_euler_heun_two_steps_by_hand():
    a, b, bn, w = 0.5, 2.0, -1.0, 3.0
    m = Linear(a, b, bn)
    x0 = torch.full((1, 1, 1, 1), 1.0)

    # grid for N = 2, shift 1: 0, 0.5, 1.0; cfg 3 everywhere inside (0, 1) strictly
    def v(x, t):  # guided velocity: u + w(c − u) = a x + (bn + w(b − bn)) t
        return a * x + (bn + w * (b - bn)) * t if 0 < t < 1 else a * x + b * t

    # flowdpm: Euler then AB2
    v0 = v(1.0, 0.0)
    x1 = 1.0 + 0.5 * v0
    v1 = v(x1, 0.5)
    x2 = x1 + 0.5 * (1.5 * v1 - 0.5 * v0)
    got, st = solve(m, x0, torch.tensor([0]), solver="flowdpm", steps=2, cfg=w, interval=(0.0, 1.0))
    assert got.item() == pytest.approx(x2, rel=1e-6) and st.calls == 2
    # euler
    got, _ = solve(m, x0, torch.tensor([0]), solver="euler", steps=2, cfg=w, interval=(0.0, 1.0))
    assert got.item() == pytest.approx(x1 + 0.5 * v(x1, 0.5), rel=1e-6)
    # heun (release form): predictor v0, corrector at (x̂, 0.5), last step Euler with the reused slope
    xh = 1.0 + 0.5 * v0
    vh = v(xh, 0.5)
    x1h = 1.0 + 0.25 * (v0 + vh)
    got, st = solve(m, x0, torch.tensor([0]), solver="heun", steps=2, cfg=w, interval=(0.0, 1.0))
    assert got.item() == pytest.approx(x1h + 0.5 * vh, rel=1e-6) and st.calls == 2


def test_dpmpp_2m_constant_data_prediction_is_exact():
    """x̂0 ≡ m makes every DPM-Solver++ step exact: x_t − m = (σ_t/σ_s)(x_s − m); the end is m (CFG: m_u + w(m_c − m_u))."""
    m = ConstantX0T2I()
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    cond = torch.tensor([0.3, -0.7]).view(2, 1, 1)
    out, st = solve(m, x, cond, torch.tensor([0.1]).view(1, 1, 1), solver="dpm++2m", steps=7, cfg=2.5, shift=3.0)
    want = 0.1 + 2.5 * (cond.view(2, 1, 1, 1) - 0.1)
    assert torch.allclose(out, want.float().expand_as(out), atol=1e-4)
    assert st.calls == 7 and st.evals == 14
    one, _ = solve(m, x, cond, torch.tensor([0.1]).view(1, 1, 1), solver="dpm++2m", steps=1, cfg=1.0)
    # one step returns x̂0; at σ0 = 0.999 the release divides by α = 0.001 in fp32, so ~1e-4 of rounding
    assert torch.allclose(one, cond.view(2, 1, 1, 1).expand_as(one), atol=5e-4)
    one64, _ = solve(m, x.double(), cond.double(), cond.double(), solver="dpm++2m", steps=1, cfg=1.0)
    assert torch.allclose(one64, cond.double().view(2, 1, 1, 1).expand_as(one64), atol=1e-9)


def test_t2i_network_sees_1000_sigma():
    m = GaussianFlowT2I()
    x = torch.randn(1, 1, 2, 2)
    solve(m, x, torch.zeros(1, 1, 1), torch.zeros(1, 1, 1), solver="dpm++2m", steps=5, cfg=1.0, shift=4.0)
    seen = [t.item() for t in m.seen_t]
    for got, want in zip(seen, [999.75, 940.90, 856.84, 726.94, 499.69]):
        assert got == pytest.approx(want, abs=0.01)
    bf16 = [float(torch.tensor(s).bfloat16()) for s in seen]
    assert bf16 == [1000, 940, 856, 728, 500]  # what the release's pure-bf16 model sees


# ---- exact solutions and convergence order ----------------------------------------------------------


def _error(solver, steps, model, kind="c2i"):
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 1, 3, 3, generator=g, dtype=torch.float64)  # float64: the order, not fp32 rounding
    if kind == "c2i":
        out, _ = solve(model, x0, torch.tensor([0, 1, 2, 0]), solver=solver, steps=steps, cfg=1.0)
        mu = model.mus[torch.tensor([0, 1, 2, 0])].view(-1, 1, 1, 1)
    else:
        mu = torch.tensor([0.5, -0.5, 1.0, 0.0], dtype=torch.float64).view(-1, 1, 1)
        out, _ = solve(model, x0, mu, mu, solver=solver, steps=steps, cfg=1.0)
        mu = mu.view(-1, 1, 1, 1)
    t0 = 1 - flow_sigma_grid(steps)[0].item() if solver == "dpm++2m" else 0.0
    return (out.double() - model.exact(x0, mu, t0)).abs().max().item()


# Observed orders (float64, error vs the exact map): Euler 1.99x per halving, Heun/FlowDPM 4.05x.
# DPM-Solver++ 2M approaches 4x slowly (3.4x at 128 -> 256): the release's grid is uniform in σ, so
# the first step from σ0 = 0.999 is a huge step in λ = log((1 − σ)/σ) and leaves the asymptotic regime late.
@pytest.mark.parametrize(
    "solver,n,lo,hi",
    [
        ("euler", 64, 0.9, 1.1),
        ("heun", 64, 1.9, 2.1),
        ("flowdpm", 64, 1.9, 2.1),
        ("dpm++2m", 128, 1.65, 2.1),
    ],
)
def test_convergence_order_c2i_model(solver, n, lo, hi):
    m = GaussianFlow([0.5, -0.5, 1.0, 0.0], s=0.5)
    e1, e2 = _error(solver, n, m), _error(solver, 2 * n, m)
    assert lo <= math.log2(e1 / e2) <= hi


@pytest.mark.parametrize(
    "solver,n,lo,hi", [("euler", 64, 0.9, 1.1), ("flowdpm", 64, 1.9, 2.1), ("dpm++2m", 128, 1.65, 2.1)]
)
def test_convergence_order_t2i_adapter(solver, n, lo, hi):
    m = GaussianFlowT2I(s=0.5)
    e1, e2 = _error(solver, n, m, "t2i"), _error(solver, 2 * n, m, "t2i")
    assert lo <= math.log2(e1 / e2) <= hi


def test_fine_solution_is_the_exact_one():
    m = GaussianFlow([0.5, -0.5, 1.0, 0.0], s=0.5)
    assert _error("heun", 256, m) < 3e-5 and _error("dpm++2m", 512, m) < 1e-4
    assert _error("flowdpm", 256, GaussianFlowT2I(s=0.5), "t2i") < 3e-5


def test_bad_arguments():
    m = GaussianFlow([0.0, 0.0])
    x = torch.randn(1, 1, 1, 1)
    with pytest.raises(ValueError, match="unknown solver"):
        solve(m, x, torch.tensor([0]), solver="ddim")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        solve(m, x, torch.tensor([0]), steps=0)
    with pytest.raises(ValueError, match="0 <= lo <= hi <= 1"):
        solve(m, x, torch.tensor([0]), interval=(0.9, 0.1))
