"""The settings of a solve and of an edit: frozen values, resolved once and validated when they are made.

Every front end builds them the same way — `resolve_solve(config, flags...)` and
`resolve_edit(config, flags...)`, where `config` is the command's resolved Config (preset →
checkpoint's own training config → dotted overrides; config.command_config) and a flag that was given
(not None) wins — and hands them to the library (`sampling.run`, `solvers.solve`, `edit.run_edit`). The
layers below trust them. A new sampling knob is a field here, its check in `__post_init__`, and the code
that uses it.
"""

from dataclasses import asdict, dataclass

from .errors import PixelDiTError
from .solvers import REUSE_SCHEDULES, SOLVERS
from .validate import MAX_CFG, MAX_SEEDS, MAX_STEPS, count, finite
from .validate import seed as seed_ok
from .validate import shift as shift_ok


@dataclass(frozen=True)
class SolveSettings:
    """How one batch of noise is integrated to images (the options of `solvers.solve`)."""

    solver: str = "flowdpm"
    steps: int = 100
    cfg: float = 1.0  # guidance scale, 1 = off
    interval: tuple = (0.0, 1.0)  # guidance on for lo < t < hi (t: 0 noise -> 1 data)
    shift: float = 1.0  # t -> t / (t + (1 - t)·s), the c2i convention for both families
    semantic_reuse: int = 1  # the patch pathway on every K-th evaluation (1: the release's sampler)
    reuse_schedule: str = "uniform"  # uniform | ends (also every evaluation of the first and last 10%)

    def __post_init__(self):
        if self.solver not in SOLVERS:
            raise PixelDiTError(f"unknown solver {self.solver!r}", f"use one of {', '.join(SOLVERS)}")
        count("--steps", self.steps, 1, MAX_STEPS)
        count("--semantic-reuse", self.semantic_reuse, 1, MAX_STEPS, "1 recomputes the patch pathway at every step")
        if self.reuse_schedule not in REUSE_SCHEDULES:
            raise PixelDiTError(
                f"unknown --reuse-schedule {self.reuse_schedule!r}", f"use one of {', '.join(REUSE_SCHEDULES)}"
            )
        finite("--cfg", self.cfg, lo=0.0, hi=MAX_CFG)
        shift_ok("--shift", self.shift)
        if not isinstance(self.interval, (tuple, list)) or len(self.interval) != 2:
            raise PixelDiTError(f"--cfg-interval {self.interval!r} is not two numbers", "give LO HI, e.g. 0.1 0.9")
        lo, hi = (finite("--cfg-interval", v) for v in self.interval)
        if not (0.0 <= lo <= hi <= 1.0):
            raise PixelDiTError(
                f"--cfg-interval {lo:g} {hi:g} is invalid", "need 0 <= LO <= HI <= 1 (t: 0 noise -> 1 data)"
            )
        object.__setattr__(self, "interval", (float(lo), float(hi)))

    def kwargs(self) -> dict:
        """As keyword arguments of `solvers.solve`."""
        return asdict(self)

    @property
    def guided(self) -> bool:
        return self.cfg != 1.0


def solve_values(config, **flags) -> dict:
    """The solve settings' values from a resolved Config's sample section, every flag given (not None) winning
    (a SampleJob takes them as its fields and makes its SolveSettings from them)."""
    sc = config.sample
    base = dict(solver=sc.solver, steps=sc.steps, cfg=sc.cfg, interval=tuple(sc.interval), shift=sc.shift)
    return {**base, **{k: v for k, v in flags.items() if v is not None}}


def resolve_solve(config, **flags) -> SolveSettings:
    """SolveSettings from a resolved Config's sample section, with every flag given (not None) winning."""
    return SolveSettings(**solve_values(config, **flags))


@dataclass(frozen=True)
class EditSettings:
    """FlowEdit's schedule and guidance (edit.flowedit), and the seeds of one edit command."""

    steps: int = 50  # the time grid T
    n_max: int = 33  # edited steps counted from the data end (FlowEdit's notation)
    n_min: int = 0  # last steps sampled from the target alone
    n_avg: int = 1  # noise draws averaged per step
    src_cfg: float = 1.5
    tgt_cfg: float = 4.0
    shift: float = 1.0
    seed: int = 0
    num_seeds: int = 1

    def __post_init__(self):
        count("--steps", self.steps, 1, MAX_STEPS)
        if not 0 <= self.n_min <= self.n_max <= self.steps:
            raise PixelDiTError(
                f"need 0 <= --n-min <= --n-max <= --steps (got {self.n_min}, {self.n_max}, {self.steps})",
                "--n-max counts edited steps from the data end; it cannot exceed --steps",
            )
        count("--n-avg", self.n_avg, 1, 1000)
        count("--num-seeds", self.num_seeds, 1, MAX_SEEDS)
        seed_ok("--seed", self.seed, self.num_seeds)
        finite("--src-cfg", self.src_cfg, lo=0.0, hi=MAX_CFG)
        finite("--tgt-cfg", self.tgt_cfg, lo=0.0, hi=MAX_CFG)
        shift_ok("--shift", self.shift)

    @property
    def strength(self) -> float:
        """The noise level editing starts at: n_max / steps."""
        return self.n_max / self.steps

    def section_values(self) -> dict:
        """As the config's edit section records them (strength: the caller's, see resolve_edit)."""
        return {k: v for k, v in asdict(self).items() if k not in ("seed", "num_seeds", "n_max")}

    def flowedit_kwargs(self) -> dict:
        """As keyword arguments of `edit.flowedit` (the seed is per edit)."""
        return {k: v for k, v in asdict(self).items() if k not in ("seed", "num_seeds")}


def n_max_of(strength: float, steps: int) -> int:
    """Editing starts at noise level `strength`: the last round(strength·steps) steps of the grid are edited."""
    return int(round(strength * steps))


def resolve_edit(config, *, strength=None, n_max=None, **flags) -> EditSettings:
    """EditSettings from a resolved Config's edit section: flags given (not None) win; how far to edit is
    `strength` (a noise level, any steps) or `n_max` (FlowEdit's count), never both; neither: the
    section's strength."""
    if strength is not None and n_max is not None:
        raise PixelDiTError("--strength and --n-max both given", "use one: --strength is --n-max / --steps")
    if strength is not None:
        finite("--strength", strength, lo=0.0, hi=1.0)
    ed = config.edit
    base = dict(steps=ed.steps, n_min=ed.n_min, n_avg=ed.n_avg, src_cfg=ed.src_cfg, tgt_cfg=ed.tgt_cfg, shift=ed.shift)
    values = {**base, **{k: v for k, v in flags.items() if v is not None}}
    if n_max is None:
        level, steps = ed.strength if strength is None else strength, values["steps"]
        n_max = n_max_of(level, steps) if isinstance(steps, int) and steps >= 1 else 0
    return EditSettings(n_max=n_max, **values)
