"""Time grids and ODE solvers for both PixelDiT models, with classifier-free guidance.

One convention outside, two inside (docs/conventions.md#time):
  * Every knob a user sees is in the class-conditional convention: t = 0 noise -> t = 1 data, the
    guidance interval (lo < t < hi, strict) and the time shift t' = t / (t + (1 - t)·s).
  * `Velocity` adapts either network to the c2i convention (v = x − ε, pointing to data). The
    text-to-image network takes 1000·σ with σ = 1 − t and returns ε − x, so the adapter flips both.
  * `euler`, `heun`, `flowdpm` integrate t upward exactly as the official c2i samplers (docs/conventions.md#samplers).
  * `dpm++2m` is the T2I release's DPM-Solver++ (2M, flow) and works in σ exactly in the release's
    order of operations (docs/conventions.md#samplers) — the fp32 rounding of that path is part of its parity.

Guidance: the batch is [uncond; cond] and out = u + w·(c − u). Where w = 1 (cfg 1, or outside the
interval) only the conditional half is evaluated: half the network work, counted in `Stats`.
"""

from dataclasses import dataclass, field

import numpy as np
import torch

from .choices import Solver, values

SOLVERS = values(Solver)  # ("flowdpm", "euler", "heun", "dpm++2m")


@dataclass
class Stats:
    calls: int = 0           # network forward calls
    evals: int = 0           # evaluations per sample: 2 for a guided call, 1 for an unguided one
    guided_steps: list = field(default_factory=list)


def f32(v: float) -> float:
    """The value as the release compares it: rounded to float32."""
    return float(np.float32(v))


#################################################################################
#                                 Time grids                                    #
#################################################################################


def time_shift(t, s: float):
    """t' = t / (t + (1 - t)·s): s > 1 spends more steps near noise (t = 0)."""
    return t / (t + (1 - t) * s)


def c2i_grid(steps: int, shift: float = 1.0) -> torch.Tensor:
    """N + 1 times: linspace(0, 1 − 1/N, N) in float32, then 1.0, then the shift (docs/conventions.md#samplers)."""
    t = torch.cat([torch.linspace(0.0, 1.0 - 1.0 / steps, steps, dtype=torch.float32), torch.tensor([1.0])])
    return time_shift(t, shift)


def flow_sigma_grid(steps: int, shift: float = 1.0) -> torch.Tensor:
    """The T2I DPM-Solver grid in σ (1 = noise): 1 − linspace(1, 0.001, N+1), shifted, reversed; ends at 0."""
    sig = 1.0 - torch.linspace(1.0, 0.001, steps + 1, dtype=torch.float32)
    sig = shift * sig / (1 + (shift - 1) * sig)
    return sig.flip(0)


#################################################################################
#                     The network, in the c2i convention                        #
#################################################################################


class Velocity:
    """Either network as v(x, t) = x̂ − ε̂ with t = 1 data, plus CFG and evaluation counting.

    cond / uncond: class ids (B,) for c2i (uncond None -> the null class), text states (B, Lt, C)
    or (1, Lt, C) for T2I. `autocast` is a dtype for CUDA autocast or None (fp32).
    """

    def __init__(self, model, cond, uncond=None, cfg: float = 1.0, interval=(0.0, 1.0), autocast=None):
        self.model, self.cfg, self.autocast = model, float(cfg), autocast
        self.t2i = model.config.kind == "t2i"
        self.lo, self.hi = f32(interval[0]), f32(interval[1])
        B = cond.shape[0]
        if uncond is None:
            if self.t2i:
                raise ValueError("text-to-image guidance needs an unconditional (negative prompt) embedding")
            uncond = torch.full_like(cond, model.config.num_classes)
        if uncond.shape[0] == 1 and B > 1:
            uncond = uncond.expand(B, *uncond.shape[1:])
        self.cond, self.both = cond, torch.cat([uncond, cond])
        self.stats = Stats()

    def guided(self, t: float) -> bool:
        """Guidance at time t (c2i convention, float32 compare, strict interval)."""
        return self.cfg != 1.0 and self.lo < f32(t) < self.hi

    def net(self, x, t_in, y):
        """One raw forward; t_in is what the network is fed (t, or 1000·σ for T2I)."""
        self.stats.calls += 1
        if self.autocast is not None:
            if self.t2i and self.autocast == torch.bfloat16:
                t_in = t_in.to(torch.bfloat16).float()  # the release runs T2I in pure bf16: it sees rounded times
            with torch.autocast(x.device.type, dtype=self.autocast):
                return self.model(x, t_in, y).float()
        return self.model(x, t_in, y)

    def raw(self, x, t_value: float, t_tensor, sigma=None):
        """Network output(s) at time t: (uncond, cond) when guided, else (None, cond).

        t_tensor is t as a 0-dim tensor; a σ-space solver also passes σ itself, so that the T2I network
        is fed exactly 1000·σ (1 − (1 − σ) is not always σ in float32)."""
        g = self.guided(t_value)
        self.stats.evals += 2 if g else 1
        self.stats.guided_steps.append(g)
        B = x.shape[0]
        if self.t2i:
            t_in = 1000.0 * (sigma if sigma is not None else 1.0 - t_tensor)
        else:
            t_in = t_tensor
        if g:
            out = self.net(torch.cat([x, x]), t_in.expand(2 * B), self.both)
            return out[:B], out[B:]
        return None, self.net(x, t_in.expand(B), self.cond)

    def __call__(self, x, t_value: float, t_tensor):
        """Guided velocity in the c2i convention."""
        u, c = self.raw(x, t_value, t_tensor)
        if self.t2i:  # ε − x -> x − ε
            u, c = (None if u is None else -u), -c
        return c if u is None else u + self.cfg * (c - u)


#################################################################################
#                     The c2i solvers (as released), t upward                   #
#################################################################################


def euler(v: Velocity, x, grid):
    ts, tv = grid.to(x.device), grid.tolist()
    for i in range(len(tv) - 1):
        x = x + v(x, tv[i], ts[i]) * (ts[i + 1] - ts[i])
    return x


def heun(v: Velocity, x, grid):
    """The release's Heun: each step's predictor reuses the previous corrector evaluation; N calls."""
    ts, tv = grid.to(x.device), grid.tolist()
    n = len(tv) - 1
    d = v(x, tv[0], ts[0])
    for i in range(n):
        dt = ts[i + 1] - ts[i]
        x_hat = x + d * dt
        if i == n - 1:
            return x_hat  # the last step is plain Euler
        d_hat = v(x_hat, tv[i + 1], ts[i + 1])  # guidance decided by t_next
        x = x + (d + d_hat) / 2 * dt
        d = d_hat
    return x


def flowdpm(v: Velocity, x, grid):
    """The release's "FlowDPMSolver": Euler, then fixed 1.5/−0.5 Adams–Bashforth on every later step."""
    ts, tv = grid.to(x.device), grid.tolist()
    d_prev = None
    for i in range(len(tv) - 1):
        dt = ts[i + 1] - ts[i]
        d = v(x, tv[i], ts[i])
        x = x + d * dt if d_prev is None else x + dt * (1.5 * d - 0.5 * d_prev)
        d_prev = d
    return x


#################################################################################
#              DPM-Solver++ 2M for flow models (the T2I release)                #
#################################################################################


def _lambda(s):
    return torch.log(1 - s) - torch.log(s)


def dpmpp_2m(v: Velocity, x, sigmas):
    """Multistep DPM-Solver++ order 2 in σ (1 = noise); first and last steps first order; N calls."""
    ss, sv = sigmas.to(x.device), sigmas.tolist()
    n = len(sv) - 1

    def x0_pred(x, i):
        s = ss[i]
        u, c = v.raw(x, 1.0 - sv[i], 1.0 - s, sigma=s)
        if not v.t2i:  # the c2i network's x − ε as the T2I convention's ε − x
            u, c = (None if u is None else -u), -c
        # ε̂ = (1 − σ)·v + x per half, CFG in ε̂ space, x̂0 = (x − σ·ε̂) / exp(log(1 − σ)), all fp32 as released
        eps = (1 - s) * c + x
        if u is not None:
            eps_u = (1 - s) * u + x
            eps = eps_u + v.cfg * (eps - eps_u)
        return (x - s * eps) / torch.exp(torch.log(1 - s))

    m_prev, m = None, x0_pred(x, 0)
    for i in range(1, n + 1):
        s, t = ss[i - 1], ss[i]
        h = _lambda(t) - _lambda(s)
        alpha_t = torch.exp(torch.log(1 - t))
        phi_1 = torch.expm1(-h)
        if m_prev is None or i == n:  # first order (lower_order_final); at σ = 0 this returns x̂0
            x = t / s * x - alpha_t * phi_1 * m
        else:
            r0 = (_lambda(s) - _lambda(ss[i - 2])) / h
            D1 = (1.0 / r0) * (m - m_prev)
            x = (t / s) * x - (alpha_t * phi_1) * m - 0.5 * (alpha_t * phi_1) * D1
        if i < n:
            m_prev, m = m, x0_pred(x, i)
    return x


#################################################################################
#                               Entry point                                     #
#################################################################################


def solve(model, noise, cond, uncond=None, *, solver: str = "flowdpm", steps: int = 100, cfg: float = 1.0,
          interval=(0.0, 1.0), shift: float = 1.0, autocast=None):
    """Integrate from noise (t = 0) to data (t = 1); returns (images in [-1, 1] unclipped, Stats)."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    lo, hi = interval
    if not (0.0 <= lo <= hi <= 1.0):
        raise ValueError(f"guidance interval must satisfy 0 <= lo <= hi <= 1, got [{lo}, {hi}]")
    v = Velocity(model, cond, uncond, cfg, interval, autocast)
    x = noise if noise.dtype == torch.float64 else noise.float()  # float64 only for numerical tests
    with torch.inference_mode():
        if solver == "dpm++2m":
            x = dpmpp_2m(v, x, flow_sigma_grid(steps, shift))
        else:
            x = {"euler": euler, "heun": heun, "flowdpm": flowdpm}[solver](v, x, c2i_grid(steps, shift))
    return x, v.stats


#################################################################################
#                 The sampling contracts: noise in, uint8 out                   #
#################################################################################


def noise_for(indices, seed: int, shape) -> torch.Tensor:
    """Sample i draws its noise from Generator('cpu').manual_seed(seed + i): images never depend on the batch."""
    return torch.stack([torch.randn(*shape, generator=torch.Generator("cpu").manual_seed(seed + i)) for i in indices])


def to_uint8(x):
    """(B, C, H, W) in [-1, 1] -> uint8 with the release's rounding: clip((x + 1)·127.5 + 0.5, 0, 255), truncated."""
    return ((x + 1) * 127.5 + 0.5).clamp(0, 255).to(torch.uint8)
