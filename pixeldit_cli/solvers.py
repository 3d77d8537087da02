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

from .choices import ReuseSchedule, Solver, values
from .families import family_of

SOLVERS = values(Solver)  # ("flowdpm", "euler", "heun", "dpm++2m")


REUSE_SCHEDULES = values(ReuseSchedule)  # ("uniform", "ends")


@dataclass
class Stats:
    calls: int = 0  # network forward calls
    evals: int = 0  # evaluations per sample: 2 for a guided call, 1 for an unguided one (= pixel-path runs)
    guided_steps: list = field(default_factory=list)
    patch_evals: int = 0  # patch-path (semantic) runs per sample, counted the same way; < evals with reuse


class SemanticReuse:
    """Run PixelDiT's patch pathway only on the evaluations where it is due; reuse its tokens in between.

    The patch pathway (71% of XL/16's FLOPs at 256²) turns the noisy image into semantic tokens s; the
    pixel pathway turns s and the image into the velocity. Adjacent solver steps see nearly the same s,
    so s is recomputed every `every` evaluations and the pixel pathway — with the *current* time
    embedding, SiLU(t_emb + s) — runs on every one. This is feature caching in the manner of FORA
    (Selvaraju et al., 2024: reuse the outputs of a DiT's blocks across steps) and Δ-DiT (Chen et al.,
    2024: cache the rear blocks early, the front blocks late), applied at PixelDiT's natural seam.

      schedule "uniform": due when e % every == 0 (evaluation e = 0, 1, ...).
      schedule "ends":    also due on every evaluation of the first and last 10% of the steps, where
                          the semantics move fastest (the layout forms early; the last steps refine).
    CFG: the cache holds the tokens of the batch that was run — [uncond; cond] on a guided step, cond
    alone on an unguided one. A guided step whose cache holds no unconditional tokens (the first step
    inside the guidance interval) recomputes, whatever the schedule says. Every solver works: the count
    is of network evaluations, so Heun's corrector and DPM-Solver++'s model calls are evaluations too.
    """

    def __init__(self, every: int, schedule: str = "uniform", steps: int = 0):
        if every < 1:
            raise ValueError(f"semantic reuse must be >= 1, got {every}")
        if schedule not in REUSE_SCHEDULES:
            raise ValueError(f"unknown reuse schedule {schedule!r}; choose one of {', '.join(REUSE_SCHEDULES)}")
        self.every, self.schedule, self.steps = every, schedule, steps
        self.count, self.cache = 0, {}

    def due(self, e: int) -> bool:
        m = max(1, round(0.1 * self.steps)) if self.schedule == "ends" else 0
        if e < m or e >= self.steps - m:
            return True
        return (e - m) % self.every == 0

    def __call__(self, model, x, t_in, y, key: str, stats: Stats):
        e, self.count = self.count, self.count + 1
        cached = self.cache.get(key)
        if cached is None and key == "cond" and "both" in self.cache:
            cached = self.cache["both"][self.cache["both"].shape[0] // 2 :]  # [uncond; cond]: the cond half
        if cached is None or self.due(e):
            sem = model.semantics(x, t_in, y)
            self.cache = {key: sem.s}
            stats.patch_evals += 2 if key == "both" else 1
            return model.pixels(x, sem.t_emb, sem.s)
        return model.pixels(x, model.time_embedding(t_in), cached)


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

    def __init__(self, model, cond, uncond=None, cfg: float = 1.0, interval=(0.0, 1.0), autocast=None, reuse=None,
                 on_eval=None):  # fmt: skip
        self.model, self.cfg, self.autocast, self.reuse = model, float(cfg), autocast, reuse
        self.on_eval = on_eval  # called after every velocity evaluation (one solver step): progress bars
        if reuse is not None and not hasattr(model, "semantics"):
            raise ValueError("semantic reuse needs a PixelDiT network (one with semantics() and pixels())")
        self.family = family_of(model.config)  # the condition and the time/velocity convention
        self.lo, self.hi = f32(interval[0]), f32(interval[1])
        B = cond.shape[0]
        if uncond is None:
            uncond = self.family.null_condition(model, cond)
        if uncond.shape[0] == 1 and B > 1:
            uncond = uncond.expand(B, *uncond.shape[1:])
        self.cond, self.both = cond, torch.cat([uncond, cond])
        self.stats = Stats()

    def guided(self, t: float) -> bool:
        """Guidance at time t (c2i convention, float32 compare, strict interval)."""
        return self.cfg != 1.0 and self.lo < f32(t) < self.hi

    def net(self, x, t_in, y, key: str = "cond"):
        """One raw forward; t_in is what the network is fed (t, or 1000·σ for T2I); key names the batch
        ("both" = [uncond; cond], "cond") for semantic reuse."""
        self.stats.calls += 1
        if self.autocast is not None:
            t_in = self.family.autocast_time(t_in, self.autocast)
            with torch.autocast(x.device.type, dtype=self.autocast):
                return self._forward(x, t_in, y, key).float()
        return self._forward(x, t_in, y, key)

    def _forward(self, x, t_in, y, key):
        if self.reuse is None:
            self.stats.patch_evals += 2 if key == "both" else 1
            return self.model(x, t_in, y)
        return self.reuse(self.model, x, t_in, y, key, self.stats)

    def raw(self, x, t_value: float, t_tensor, sigma=None):
        """Network output(s) at time t: (uncond, cond) when guided, else (None, cond).

        t_tensor is t as a 0-dim tensor; a σ-space solver also passes σ itself, so that the T2I network
        is fed exactly 1000·σ (1 − (1 − σ) is not always σ in float32)."""
        g = self.guided(t_value)
        self.stats.evals += 2 if g else 1
        self.stats.guided_steps.append(g)
        B = x.shape[0]
        t_in = self.family.network_time(t_tensor, sigma)
        if g:
            out = self.net(torch.cat([x, x]), t_in.expand(2 * B), self.both, key="both")
            u, c = out[:B], out[B:]
        else:
            u, c = None, self.net(x, t_in.expand(B), self.cond, key="cond")
        if self.on_eval is not None:
            self.on_eval()
        return u, c

    def __call__(self, x, t_value: float, t_tensor):
        """Guided velocity in the c2i convention."""
        u, c = self.raw(x, t_value, t_tensor)
        u, c = (None if u is None else self.family.velocity(u)), self.family.velocity(c)
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
        # in this convention's ε − x: the negated velocity (for the T2I network, its own output again)
        u, c = (None if u is None else -v.family.velocity(u)), -v.family.velocity(c)
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


def solve(
    model,
    noise,
    cond,
    uncond=None,
    *,
    solver: str = "flowdpm",
    steps: int = 100,
    cfg: float = 1.0,
    interval=(0.0, 1.0),
    shift: float = 1.0,
    autocast=None,
    semantic_reuse: int = 1,
    reuse_schedule: str = "uniform",
    on_step=None,
):
    """Integrate from noise (t = 0) to data (t = 1); returns (images in [-1, 1] unclipped, Stats).

    semantic_reuse K > 1 runs the patch pathway every K-th network evaluation only (SemanticReuse);
    K = 1 is the plain forward, bit for bit. `on_step()` is called after each of the `steps` velocity
    evaluations (every solver here makes exactly `steps`)."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    lo, hi = interval
    if not (0.0 <= lo <= hi <= 1.0):
        raise ValueError(f"guidance interval must satisfy 0 <= lo <= hi <= 1, got [{lo}, {hi}]")
    reuse = SemanticReuse(semantic_reuse, reuse_schedule, steps) if semantic_reuse != 1 else None
    v = Velocity(model, cond, uncond, cfg, interval, autocast, reuse, on_eval=on_step)
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
