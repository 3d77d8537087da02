"""Analytic "networks" with known flows, in both official conventions, for solver tests.

Data ~ N(mu_y, s²) per pixel, noise ~ N(0, 1), x_t = t·x1 + (1 − t)·ε (t = 1 data). The marginal
velocity is v(x, t) = mu + (t·s² − (1 − t)) / var_t · (x − t·mu) with var_t = t²s² + (1 − t)², and the
ODE maps x(t0) to x(1) = mu + s·(x(t0) − t0·mu) / sqrt(var_t0) — an exact solution to compare against.
"""

import math
from types import SimpleNamespace

import torch


class GaussianFlow(torch.nn.Module):
    """forward(x, t, y) in the c2i convention (t = 1 data, returns x − ε); mu depends on the class."""

    def __init__(self, mus, s=0.5, kind="c2i"):
        super().__init__()
        self.mus = torch.tensor(mus, dtype=torch.float64)  # one per class id, the last is the null class
        self.s = s
        self.config = SimpleNamespace(kind=kind, num_classes=len(mus) - 1, patch_size=1)

    def velocity(self, x, t, mu):
        x, t = x.double(), t.double().view(-1, 1, 1, 1)
        mu = mu.view(-1, 1, 1, 1)
        var = t * t * self.s**2 + (1 - t) ** 2
        return mu + (t * self.s**2 - (1 - t)) / var * (x - t * mu)

    def forward(self, x, t, y):
        return self.velocity(x, t, self.mus[y]).to(x.dtype)

    def exact(self, x0, mu, t0=0.0):
        var0 = t0 * t0 * self.s**2 + (1 - t0) ** 2
        return mu + self.s * (x0.double() - t0 * mu) / math.sqrt(var0)


class GaussianFlowT2I(GaussianFlow):
    """The same flow as the T2I network sees it: fed 1000·σ, returns ε − x; y are 'text states' (B, 1, 1)."""

    def __init__(self, s=0.5):
        super().__init__([0.0], s, kind="t2i")
        self.seen_t = []

    def forward(self, x, t, y):
        self.seen_t.append(t.detach().clone())
        mu = y.double().view(-1)
        return -self.velocity(x, 1 - t.double() / 1000.0, mu).to(x.dtype)


class ConstantX0T2I(torch.nn.Module):
    """T2I-convention network whose data prediction is the constant m_y: v = (x − m) / σ."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(kind="t2i", num_classes=0, patch_size=1)

    def forward(self, x, t, y):
        sigma = (t.double() / 1000.0).view(-1, 1, 1, 1)
        return ((x.double() - y.double().view(-1, 1, 1, 1)) / sigma).to(x.dtype)


class GMMFlow(torch.nn.Module):
    """Class-conditional Gaussian mixtures in 2-D (as images (B, 2, 1, 1)), closed-form c2i velocity.

    Class k's data: equal-weight modes modes[k] with std s. Posterior weights over modes given x_t use
    x_t | mode ~ N(t·mu, var_t); the velocity is the posterior mix of the per-mode Gaussian velocities.
    """

    def __init__(self, modes, s=1.0):
        super().__init__()
        self.modes = [torch.tensor(m, dtype=torch.float64) for m in modes]  # per class (K, 2)
        self.s = s
        self.config = SimpleNamespace(kind="c2i", num_classes=len(modes) - 1, patch_size=1)

    def forward(self, x, t, y):
        out = []
        for xi, ti, yi in zip(x.double().view(-1, 2), t.double(), y.tolist()):
            mus = self.modes[yi]
            var = ti**2 * self.s**2 + (1 - ti) ** 2
            logw = -((xi - ti * mus) ** 2).sum(-1) / (2 * var)
            w = torch.softmax(logw, 0)
            v = mus + (ti * self.s**2 - (1 - ti)) / var * (xi - ti * mus)  # (K, 2)
            out.append((w[:, None] * v).sum(0))
        return torch.stack(out).view(-1, 2, 1, 1).to(x.dtype)
