"""`pixeldit train`: the release's recipes (either family), on one CPU process or many GPUs.

One optimizer step = one global batch (global_batch images, split over world × accumulation micro-
batches). AdamW or CAME, LR and clip schedules, EMA every step, REPA, non-finite guard, metrics.jsonl,
a fixed-noise sample grid, atomic checkpoints and exact resume. Exactness comes from two rules: the data
of step s is a function of (seed, s) (StepSampler), and every random draw of a sample is a function of
(seed, s, global slot) (objective.draw) — so neither resuming nor the number of processes changes them.

The file reads as the run's stages: setup (networks, optimizer, data, bookkeeping; resuming is part of
each), step, log, save, sample; `train` at the bottom strings them together. What differs between the
families (data, draws and loss, the grid) is asked of the family's recipe (train/recipes.py).
"""

import contextlib
import copy
import importlib.util
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import __version__
from ..config import Config, to_yaml
from ..dist import barrier, init_distributed
from ..errors import PixelDiTError
from ..families import family_of
from ..flops import analytic_flops, matmul_rate
from ..folders import MARKER, claim, lock, marker_format, read_marker
from ..heap import keep_freed_memory
from ..io import append_line, ensure_writable_dir, write_grid, write_json, write_text
from ..memory import check_train_fits
from ..models.compiled import CHOICES as PIXEL_COMPILE
from ..models.compiled import compile_pixel_blocks, decide
from ..models.loading import checkpoint_sha256, extract, kind_of_file, read_state
from ..models.lora import adapter_state, add_adapters, load_adapter_state, lora_config, save_adapters, targets_of
from ..models.registry import build_model, count_params, model_config
from ..plot import plot_metrics
from ..precision import PRECISIONS, autocast_dtype, choose
from ..progress import progress as bar_of
from ..solvers import SOLVERS, noise_for, solve, to_uint8
from ..text import resolve_pretrained
from ..validate import finite, positive
from . import checkpoint, fsdp
from .objective import Projector, flip_mask
from .recipes import recipe_for

LR_SCHEDULES = ("constant", "cosine", "linear")


def lr_at(tc, step: int) -> float:
    """The learning rate of optimizer step `step`: linear warm-up, then constant (with the release's
    optional one-time drop) or, for short runs, a cosine / linear decay that reaches 0 after the last step."""
    lr = tc.lr_drop_to if tc.lr_drop_step and step >= tc.lr_drop_step else tc.lr
    if tc.warmup_steps and step < tc.warmup_steps:
        return lr * (step + 1) / tc.warmup_steps
    schedule = getattr(tc, "lr_schedule", "constant")
    if schedule != "constant":
        done = (step - tc.warmup_steps) / max(1, tc.steps - tc.warmup_steps)  # 0 after warm-up, -> 1 at the end
        left = max(0.0, 1.0 - done)
        lr *= left if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * (1 - left)))
    return lr


def clip_at(tc, step: int) -> float:
    return tc.grad_clip_drop_to if tc.grad_clip_drop_step and step >= tc.grad_clip_drop_step else tc.grad_clip


def trainable_modules(model, projector):
    """What the optimizer trains, as one module: the network, then the REPA projector (index order)."""
    d = torch.nn.ModuleDict({"model": model})
    if projector is not None:
        d["projector"] = projector
    return d


def make_optimizer(params, tc, device, fused: bool = True):
    """AdamW (β, wd 0, eps 1e-8 as released for c2i) or CAME (the T2I release: β (0.9, 0.999, 0.9999),
    eps (1e-30, 1e-16), from the came-pytorch package). AdamW uses the fused kernel: on this CPU the
    per-parameter loop costs 1.9 s per B/16 step and the fused one 0.4 s; it is deterministic, so resume
    stays exact."""
    if tc.optimizer == "came":
        try:
            from came_pytorch import CAME  # noqa: PLC0415 (optional)
        except ImportError:
            raise PixelDiTError(
                "train.optimizer came needs the came-pytorch package",
                "pip install came-pytorch, or --train.optimizer adamw",
            ) from None
        return CAME(params, lr=tc.lr, betas=(0.9, 0.999, 0.9999), eps=(1e-30, 1e-16), weight_decay=tc.weight_decay)
    kw = dict(lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay, eps=1e-8)
    try:
        return torch.optim.AdamW(params, fused=fused and device.type in ("cpu", "cuda"), **kw)
    except (RuntimeError, TypeError):  # older torch / unsupported device
        return torch.optim.AdamW(params, **kw)


@torch.no_grad()
def ema_update(ema_params, params, decay: float):
    """ema ← decay·ema + (1 − decay)·param (no warm-up, no bias correction, as released)."""
    torch._foreach_mul_(ema_params, decay)
    torch._foreach_add_(ema_params, params, alpha=1 - decay)


def _plot(out: Path) -> None:
    """loss.png beside metrics.jsonl at every checkpoint, when matplotlib is installed (never fatal)."""
    if importlib.util.find_spec("matplotlib") is None:
        return

    try:
        plot_metrics(out)
    except PixelDiTError:
        pass  # nothing logged yet


def _tensorboard(cfg: Config, out: Path, rank: int):
    """A SummaryWriter on OUT/tensorboard when train.tensorboard is set (rank 0), checked before any work."""
    if not cfg.train.tensorboard or rank != 0:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 (heavy: only when used)
    except ImportError:
        raise PixelDiTError(
            "train.tensorboard needs the tensorboard package", "pip install 'pixeldit[tensorboard]'"
        ) from None
    return SummaryWriter(str(out / "tensorboard"))


def trim_metrics(path: Path, step: int) -> None:
    """Keep the log lines up to `step` (a killed run logged past its last checkpoint), dropping a line a
    crash tore in half."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a torn line: the write a kill interrupted
        if isinstance(rec, dict) and rec.get("step", 0) <= step:
            keep.append(line)
    write_text(path, "".join(k + "\n" for k in keep))


def validate(cfg: Config, world: int):
    """Every value of the resolved config that could fail later, checked before any work (long because it is a
    flat list of independent checks, one per key, read like the config itself)."""
    tc, sc = cfg.train, cfg.sample
    for name in ("log_every", "ckpt_every", "max_nonfinite"):
        if getattr(tc, name) < 1:
            raise PixelDiTError(f"train.{name} must be at least 1, got {getattr(tc, name)}")
    for name in (
        "sample_every",
        "keep_last",
        "keep_every",
        "warmup_steps",
        "lr_drop_step",
        "grad_clip_drop_step",
        "seed",
        "repa_width",
    ):
        if getattr(tc, name) < 0:
            raise PixelDiTError(f"train.{name} must be 0 or more, got {getattr(tc, name)}")
    positive("train.lr", tc.lr)
    if tc.lr_schedule not in LR_SCHEDULES:
        raise PixelDiTError(f"train.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {tc.lr_schedule!r}")
    finite("train.lr_drop_to", tc.lr_drop_to, lo=0.0)
    finite("train.grad_clip", tc.grad_clip, lo=0.0)
    finite("train.grad_clip_drop_to", tc.grad_clip_drop_to, lo=0.0)
    finite("train.ema_decay", tc.ema_decay, lo=0.0, hi=1.0)
    finite("train.weight_decay", tc.weight_decay, lo=0.0)
    finite("train.repa_weight", tc.repa_weight, lo=0.0)
    positive("train.time_shift", tc.time_shift)
    for b in tc.betas:
        finite("train.betas", b, lo=0.0, hi=0.999999)
    if str(tc.compile_pixel_blocks).lower() not in PIXEL_COMPILE:
        raise PixelDiTError(f"train.compile_pixel_blocks must be auto, true or false, got {tc.compile_pixel_blocks!r}")
    if tc.precision not in PRECISIONS:
        raise PixelDiTError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {tc.precision!r}")
    if cfg.data.resolution < 1 or cfg.data.num_workers < 0:
        raise PixelDiTError("data.resolution must be positive and data.num_workers 0 or more")

    if sc.solver not in SOLVERS:
        raise PixelDiTError(f"sample.solver {sc.solver!r} is unknown", f"use one of {', '.join(SOLVERS)}")
    if sc.steps < 1:
        raise PixelDiTError(f"sample.steps must be at least 1, got {sc.steps}")
    finite("sample.cfg", sc.cfg, lo=0.0)
    positive("sample.shift", sc.shift)
    lo, hi = (finite("sample.interval", v) for v in sc.interval)
    if not 0 <= lo <= hi <= 1:
        raise PixelDiTError(f"sample.interval {list(sc.interval)} is invalid", "need 0 <= lo <= hi <= 1")
    if tc.steps < 1:
        raise PixelDiTError(f"train.steps must be at least 1, got {tc.steps}")
    if tc.micro_batch < 1 or tc.global_batch < 1:
        raise PixelDiTError("train.global_batch and train.micro_batch must be positive")
    if tc.global_batch % (world * tc.micro_batch):
        raise PixelDiTError(
            f"global batch {tc.global_batch} is not divisible by world size {world} × micro-batch {tc.micro_batch}",
            "choose --train.global_batch / --train.micro_batch so that global = world × micro × accumulation",
        )
    if tc.optimizer not in ("adamw", "came"):
        raise PixelDiTError(f"optimizer {tc.optimizer!r} is not available", "use adamw or came")
    if not 0 <= tc.cond_drop < 1:
        raise PixelDiTError(f"train.cond_drop must be in [0, 1), got {tc.cond_drop}")
    if tc.init_weights not in ("ema", "raw"):
        raise PixelDiTError(f"train.init_weights must be ema or raw, got {tc.init_weights!r}")
    lc = tc.lora
    if isinstance(lc.rank, bool) or lc.rank < 0:
        raise PixelDiTError(f"train.lora.rank must be 0 (off) or a positive rank, got {lc.rank}")
    if lc.rank:
        lora_config(lc.rank, lc.alpha, lc.dropout, lc.targets)  # the values, checked now


#################################################################################
#                                   Setup                                       #
#################################################################################


@dataclass
class TrainRun:
    """Everything one training process holds; the stages below read and advance it."""

    cfg: Config
    out: Path
    rank: int
    world: int
    device: torch.device
    mcfg: object  # ModelConfig
    recipe: object  # train.recipes.Recipe: the family's data, loss and grid
    autocast: object = None  # torch.bfloat16 when train.precision resolves to bf16 (precision.choose), else None
    step: int = 0
    skipped: int = 0  # non-finite steps skipped so far
    in_a_row: int = 0
    use_fsdp: bool = False
    pixel_compile_on: bool = False  # the pixel blocks run compiled (models/compiled.py) ...
    pixel_compile: str = ""  # ... and why
    # built by setup
    tb: object = None  # TensorBoard writer (train.tensorboard, rank 0)
    cond_encoder: object = None  # what turns training conditions into network inputs (T2I: Gemma-2)
    ds: object = None
    model: torch.nn.Module = None
    ema: torch.nn.Module = None
    net: torch.nn.Module = None  # model, wrapped (DDP) and compiled as asked: what the loss calls
    repa: torch.nn.Module = None  # frozen DINOv2 (REPA on)
    projector: torch.nn.Module = None
    mods: torch.nn.Module = None  # what the optimizer trains: network + projector
    params: list = None
    opt: object = None
    sampler: object = None
    loader: object = None
    per_rank: int = 0  # images per process per step
    accum: int = 0  # micro-batches per process per step
    flops_per_image: float = 0.0
    peak_rate: float = 1.0  # FLOP/s of this device's own matmul
    class_names: list = field(default_factory=list)
    fixed: list = None  # the sample grid's conditions
    fixed_noise: torch.Tensor = None
    init: dict = None  # train.init_from: its path, SHA-256, weights and what was re-initialised
    lora: object = None  # peft LoraConfig when train.lora.rank > 0

    def ema_pairs(self):
        """(EMA tensors, network tensors) of what trains: with LoRA the adapters only, so the frozen base of
        the EMA stays bit for bit the base (d·w + (1 − d)·w is not always w in floating point)."""
        pairs = [(e, p) for e, p in zip(self.ema.parameters(), self.model.parameters(), strict=True) if p.requires_grad]
        return [e for e, _ in pairs], [p for _, p in pairs]


def _check_before_building(cfg: Config, mcfg, world: int, device) -> None:
    """What used to fail only after the network was built (17-38 s for XL/16): the encoders the run needs
    exist, and the training state fits in memory (memory.check_train_fits)."""
    tc = cfg.train
    if tc.repa_weight > 0:
        if not tc.repa_encoder:
            raise PixelDiTError(
                "REPA is on but no DINOv2 encoder was given",
                "pass --repa-encoder DIR (a local facebook/dinov2-base), or --train.repa_weight 0",
            )
        resolve_pretrained("REPA encoder", tc.repa_encoder, "pass the folder of a saved Dinov2Model")
    if family_of(mcfg).condition_flag == "--prompt" and cfg.text.encoder:
        resolve_pretrained("text encoder", cfg.text.encoder, "pass the folder of Gemma-2-2b-it")
    if tc.init_from:
        path = Path(tc.init_from)
        if not path.exists():
            raise PixelDiTError(f"train.init_from {path} does not exist", "pass a checkpoint (any --ckpt format)")
        if path.is_file() and kind_of_file(path) == "unknown":
            raise PixelDiTError(f"train.init_from {path} is not a checkpoint (not a torch zip, pickle or safetensors file)",
                                "pass a .ckpt/.pth/.pt/.safetensors file or a model folder")  # fmt: skip
    if not (tc.fsdp and world > 1):  # FSDP shards the state over the processes: each holds a part of it
        check_train_fits(mcfg, cfg.data.resolution, tc.micro_batch, device, lora_rank=tc.lora.rank,
                         lora_targets=tc.lora.targets)  # fmt: skip


def _legacy_run(folder: Path, marker) -> bool:
    """A run folder made before run.json existed: config.yaml beside checkpoints/ with pixeldit's names."""
    ck = folder / "checkpoints"
    return (
        marker is None
        and (folder / "config.yaml").is_file()
        and ck.is_dir()
        and any(checkpoint.STEP_NAME.match(p.name) or p.name == "last.pt" for p in ck.iterdir())
    )


def _same_run(state: dict, cfg: Config, path) -> None:
    """A resume continues one run: the values that decide which data and noise each step sees must match."""
    before = (state.get("config") or {}).get("train") or {}
    for key in ("seed", "global_batch"):
        was, now = before.get(key), getattr(cfg.train, key)
        if was is not None and was != now:
            raise PixelDiTError(
                f"{path} was trained with train.{key} {was}; this command asks for {now}",
                f"resume with --train.{key} {was}, or start a new run in another --out",
            )


def setup(cfg: Config, out: Path, resume: str, stack=None) -> tuple[TrainRun, object]:
    """Check the config, open the output folder, resume or start; returns (run, the resumed checkpoint or None).
    Rank 0 holds the folder's lock on `stack` (a contextlib.ExitStack) for the rest of the run."""
    rank, world, device = init_distributed()
    tc = cfg.train
    validate(cfg, world)
    mcfg = model_config(cfg.model.name, **family_of(model_config(cfg.model.name)).config_overrides(cfg))
    if cfg.data.resolution % mcfg.patch_size:
        raise PixelDiTError(
            f"data.resolution {cfg.data.resolution} is not a multiple of the patch size {mcfg.patch_size}"
        )
    if tc.repa_weight > 0 and not 1 <= tc.repa_block <= mcfg.patch_depth:
        raise PixelDiTError(f"train.repa_block {tc.repa_block} is outside 1..{mcfg.patch_depth}")
    _check_before_building(cfg, mcfg, world, device)
    pixel = decide(tc.compile_pixel_blocks, device, cfg.data.resolution, whole_compile=tc.compile,
                   fsdp=tc.fsdp and world > 1, checkpointing=tc.grad_checkpointing)  # fmt: skip
    run = TrainRun(
        cfg,
        out,
        rank,
        world,
        device,
        mcfg,
        recipe_for(mcfg),
        autocast=autocast_dtype(choose(tc.precision, device).precision),
    )
    run.pixel_compile_on, run.pixel_compile = pixel
    if device.type == "cpu":
        keep_freed_memory()  # heap.py: a B/16 step faulted 120K-145K pages in afresh (2-10% of its time)
    if resume in ("", "none") and (out / "checkpoints" / "last.pt").exists():
        raise PixelDiTError(
            f"{out} already holds a training run", "continue it with --resume auto, or choose another --out"
        )
    if rank == 0:  # before the dataset and the encoders load
        claim(out, "train", legacy=_legacy_run)  # never into a folder of someone else's files
        ensure_writable_dir(out)
        if stack is not None:
            stack.enter_context(lock(out))
        if read_marker(out) is None:
            write_json(out / MARKER, {"format": marker_format("train"), "created_by": f"pixeldit {__version__}"})
    run.tb = _tensorboard(cfg, out, rank)
    state, resume_path, note = checkpoint.load_for_resume(resume, out)
    if note and rank == 0:
        print(f"note: {note}", flush=True)
    if state is not None and state["model_config"] != mcfg.to_dict():
        raise PixelDiTError(
            f"{resume_path} was trained with another architecture", "use the run's own preset, or another --out"
        )
    if state is not None:
        _same_run(state, cfg, resume_path)
    run.cond_encoder = run.recipe.condition_encoder(cfg, mcfg, device)
    run.ds = run.recipe.training_data(cfg, mcfg)
    build_networks(run, state)
    build_optimizer(run, state)
    build_loader(run)
    start_bookkeeping(run, resume_path if state is not None else None)
    return run, state


def init_weights(model, tc, mcfg, state, rank: int) -> dict:
    """train.init_from into `model` (freshly built from the seed): every tensor of the checkpoint, and — where
    its class count differs — a new class table whose null row (the last) keeps the trained null embedding.
    Any other difference is one line naming the tensors. Returns the record runs keep (path, SHA-256, ...)."""
    path = Path(tc.init_from)
    sd, cfg, _ = extract(read_state(path), tc.init_weights, str(path))
    digest = checkpoint_sha256(path)
    if state is not None and (state.get("init") or {}).get("sha256") not in (None, digest):
        raise PixelDiTError(f"train.init_from {path} has changed since this run started (SHA-256 differs)",
                            "resume with the same base weights the run was started from")  # fmt: skip
    if family_of(cfg) is not family_of(mcfg):
        raise PixelDiTError(f"train.init_from {path} is a {family_of(cfg).title} network; this run trains a "
                            f"{family_of(mcfg).title} one")  # fmt: skip
    own = model.state_dict()
    table = "y_embedder.embedding_table.weight"
    reinit = table in sd and cfg.num_classes != mcfg.num_classes  # only a class-conditional network has a table
    wrong = [f"{k} {tuple(v.shape)} (this run: {tuple(own[k].shape)})" for k, v in sd.items()
             if k in own and v.shape != own[k].shape and not (reinit and k == table)]  # fmt: skip
    missing, extra = [k for k in own if k not in sd], [k for k in sd if k not in own]
    if wrong or missing or extra:
        what = wrong[:2] or [f"missing {k}" for k in missing[:2]] or [f"unexpected {k}" for k in extra[:2]]
        raise PixelDiTError(f"train.init_from {path} does not fit this run's network: "
                            f"{'; '.join(what)}", "use a preset of the checkpoint's architecture (--preset / "
                            "--model.name)")  # fmt: skip
    with torch.no_grad():
        for k, v in sd.items():
            if reinit and k == table:
                own[k][-1].copy_(v[-1])  # the null class: trained, kept last; the class rows: the seed's init
            else:
                own[k].copy_(v)
    if reinit and rank == 0:
        print(f"note: {path} has {cfg.num_classes} classes, this run {mcfg.num_classes}: the class table is "
              "re-initialised (the null class keeps its trained embedding); every other tensor is loaded", flush=True)  # fmt: skip
    return {"init_from": str(path.resolve()), "sha256": digest, "weights": tc.init_weights,
            "class_table": "re-initialised" if reinit else "loaded"}  # fmt: skip


def build_networks(run: TrainRun, state) -> None:
    """Network (initial weights a function of the seed), EMA copy, REPA encoder and projector; resumed
    weights go into the unsharded modules, then FSDP shards them (if asked)."""
    tc = run.cfg.train
    torch.manual_seed(tc.seed)
    model = build_model(run.mcfg)
    if tc.init_from and (state is None or tc.lora.rank):  # a LoRA run's checkpoints hold the adapters only
        run.init = init_weights(model, tc, run.mcfg, state, run.rank)
    if tc.lora.rank:
        if run.rank == 0 and state is None:
            n = len(targets_of(model, tc.lora.targets or lora_config(tc.lora.rank).target_modules))
            print(f"LoRA rank {tc.lora.rank} on {n} Linears; every other weight frozen", flush=True)
        run.lora = lora_config(tc.lora.rank, tc.lora.alpha, tc.lora.dropout, tc.lora.targets)
        model = add_adapters(model, run.lora)
    model = model.to(run.device)
    model.grad_checkpointing = tc.grad_checkpointing
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    repa = projector = None
    if tc.repa_weight > 0:
        repa = run.recipe.repa_encoder(tc.repa_encoder).to(run.device)
        projector = Projector(run.mcfg.hidden_size, tc.repa_width or run.mcfg.hidden_size, repa.dim).to(run.device)
    if state is not None and tc.lora.rank:
        load_adapter_state(model, state["model"])
        load_adapter_state(ema, state["ema"])
        if projector is not None and state.get("projector"):
            projector.load_state_dict(state["projector"])
    elif state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        if projector is not None and state.get("projector"):
            projector.load_state_dict(state["projector"])
    run.use_fsdp = tc.fsdp and run.world > 1
    if run.use_fsdp:
        fsdp.shard(model, ema, projector)
    if run.pixel_compile_on:  # after the EMA copy: the EMA (and the sampled grids) stay the plain network
        compile_pixel_blocks(model)
    run.model, run.ema, run.repa, run.projector = model, ema, repa, projector


def build_optimizer(run: TrainRun, state) -> None:
    """AdamW/CAME over the network and projector; on resume its state, the step and the RNG too."""
    tc = run.cfg.train
    mods = trainable_modules(run.model, run.projector)
    params = [p for p in mods.parameters() if p.requires_grad]  # LoRA: the adapters (and the projector)
    opt = make_optimizer(params, tc, run.device, fused=not run.use_fsdp)
    if state is not None:
        if run.use_fsdp:
            fsdp.load_optimizer(opt, mods, state["optimizer"])
        else:
            opt.load_state_dict(state["optimizer"])
        run.step, run.skipped = state["step"], state.get("nonfinite_skipped", 0)
        rng = state.get("rng", [])
        if run.rank < len(rng):
            torch.set_rng_state(rng[run.rank])
    net = torch.nn.parallel.DistributedDataParallel(run.model) if run.world > 1 and not run.use_fsdp else run.model
    run.mods, run.params, run.opt, run.net = mods, params, opt, torch.compile(net) if tc.compile else net


def build_loader(run: TrainRun) -> None:
    """The step sampler (data of step s = f(seed, s)) and its loader, starting at the run's step."""
    tc = run.cfg.train
    sampler = run.recipe.step_sampler(run.ds, tc, run.rank, run.world, run.step)
    loader = torch.utils.data.DataLoader(
        run.ds,
        batch_sampler=sampler,
        num_workers=run.cfg.data.num_workers,
        collate_fn=run.recipe.collate,
        pin_memory=run.device.type == "cuda",
    )
    run.sampler, run.loader = sampler, loader
    run.per_rank = tc.global_batch // run.world
    run.accum = run.per_rank // tc.micro_batch


def start_bookkeeping(run: TrainRun, resumed_from) -> None:
    """MFU's two rates, config.yaml, the trimmed log, the banner, and the grid's fixed conditions and noise.

    MFU: the analytic FLOPs of a training image (forward + backward = 3 forwards, the paper's count) per
    second, against this device's own matmul rate in the training dtype, measured once here (best of 10:
    with 3 a slow start-up moment once read as a low peak and an MFU of 94%)."""
    cfg, tc, mcfg = run.cfg, run.cfg.train, run.mcfg
    res = cfg.data.resolution
    run.flops_per_image = 3 * analytic_flops(mcfg, res, res)["total"]
    run.peak_rate = matmul_rate(1024, 10, run.autocast or torch.float32, run.device) * 1e9 if run.rank == 0 else 1.0
    run.class_names = list(getattr(run.ds, "classes", []))
    if run.rank == 0:
        run.out.mkdir(parents=True, exist_ok=True)
        write_text(run.out / "config.yaml", to_yaml(cfg))
        trim_metrics(run.out / "metrics.jsonl", run.step)
        print("resolved config:\n" + "\n".join("  " + l for l in to_yaml(cfg).splitlines()), flush=True)
        print(
            f"PixelDiT {cfg.model.name}: {count_params(run.model):,} params | global batch {tc.global_batch} = "
            f"{run.world} proc × {tc.micro_batch} × {run.accum} accum | lr {tc.lr:g} | steps {run.step} -> {tc.steps} | "
            f"{'resumed from ' + str(resumed_from) if resumed_from else 'fresh'} | {run.device} "
            f"{'bf16' if run.autocast else 'fp32'} | compiled pixel blocks {run.pixel_compile}",
            flush=True,
        )
    run.fixed = run.recipe.grid_conditions(run.ds, mcfg)
    run.fixed_noise = noise_for(range(len(run.fixed)), 10_000 + tc.seed, (mcfg.in_channels, res, res))


#################################################################################
#                                One step                                       #
#################################################################################


def train_step(run: TrainRun, batches) -> dict:
    """One optimizer step over world × accum micro-batches: loss, backward, clip, AdamW, EMA (skipped,
    and counted, when the loss or the gradient is not finite). Returns what the log needs."""
    tc = run.cfg.train
    lr, clip = lr_at(tc, run.step), clip_at(tc, run.step)
    for g in run.opt.param_groups:
        g["lr"] = lr
    slots, _ = run.sampler.slots(run.step)
    run.opt.zero_grad(set_to_none=True)
    sums, wait = torch.zeros(3, device=run.device), 0.0
    for k in range(run.accum):
        t0 = time.perf_counter()
        u8, y = next(batches)
        wait += time.perf_counter() - t0
        sums += micro_step(run, u8, y, slots[k * tc.micro_batch : (k + 1) * tc.micro_batch], last=k == run.accum - 1)
    gnorm = reduce_and_clip(run, sums, clip)
    finite = bool(torch.isfinite(sums[0]) and torch.isfinite(gnorm))
    if finite:
        run.opt.step()
        ema_update(*run.ema_pairs(), tc.ema_decay)
        run.in_a_row = 0
    else:
        run.opt.zero_grad(set_to_none=True)
        run.skipped += 1
        run.in_a_row += 1
        if run.in_a_row >= tc.max_nonfinite:
            raise PixelDiTError(
                f"stopping at step {run.step}: {run.in_a_row} non-finite losses or gradients in a row",
                "lower the learning rate, or resume from an earlier checkpoint",
            )
    run.step += 1
    return {"sums": sums, "gnorm": gnorm, "lr": lr, "clip": clip, "wait": wait}


def micro_step(run: TrainRun, u8, y, mine, last: bool) -> torch.Tensor:
    """Forward and backward of one micro-batch (its slots `mine`); returns its weighted (total, flow, repa)."""
    tc, device = run.cfg.train, run.device
    u8 = u8.to(device, non_blocking=True)
    if run.cfg.data.flip:
        f = flip_mask(tc.seed, run.step, mine).to(device).view(-1, 1, 1, 1)
        u8 = torch.where(f, u8.flip(-1), u8)
    x = (u8.float() / 255 - 0.5) / 0.5
    target = run.repa(u8.float() / 255) if run.repa is not None else None
    repa = dict(
        projector=run.projector,
        repa_target=target,
        repa_block=tc.repa_block,
        repa_weight=tc.repa_weight,
        autocast=run.autocast,
    )
    weight = tc.micro_batch / run.per_rank
    sync = contextlib.nullcontext() if (run.world == 1 or run.use_fsdp or last) else run.net.no_sync()
    with sync:
        loss, lf, lr_ = run.recipe.loss(
            run.net,
            x,
            y,
            draw_at=(tc.seed, run.step, mine),
            encoder=run.cond_encoder,
            train=tc,
            mcfg=run.mcfg,
            device=device,
            repa=repa,
        )
        (loss * weight).backward()
    return torch.stack([loss.detach(), lf, lr_]) * weight


def reduce_and_clip(run: TrainRun, sums, clip: float):
    """Average the projector's gradients (DDP wraps the network only) and the losses over processes; clip."""
    if run.world > 1 and run.projector is not None and not run.use_fsdp:
        for prm in run.projector.parameters():
            if prm.grad is not None:
                torch.distributed.all_reduce(prm.grad)
                prm.grad /= run.world
    gnorm = torch.nn.utils.clip_grad_norm_(run.params, clip if clip > 0 else float("inf"))
    if run.use_fsdp:
        gnorm = fsdp.as_full(gnorm)
    if run.world > 1:
        torch.distributed.all_reduce(sums)
        sums /= run.world
    return gnorm


#################################################################################
#                          Log, save, sample                                    #
#################################################################################


def log(run: TrainRun, r: dict, meter: dict) -> dict:
    """One metrics.jsonl line (and TensorBoard scalars): losses, |g|, lr, img/s, data wait, MFU (per
    device, as nanoGPT reports it). `meter` holds the time, images and data wait since the last line."""
    now = time.perf_counter()
    s, span = r["sums"], now - meter["t"]
    rec = {
        "step": run.step,
        "loss": s[0].item(),
        "loss_flow": s[1].item(),
        "loss_repa": s[2].item(),
        "grad_norm": r["gnorm"].item(),
        "lr": r["lr"],
        "grad_clip": r["clip"],
        "img_per_s": meter["imgs"] / span,
        "data_wait": meter["wait"] / span,
        "nonfinite_skipped": run.skipped,
    }
    rec["mfu"] = rec["img_per_s"] * run.flops_per_image / run.world / run.peak_rate
    append_line(run.out / "metrics.jsonl", json.dumps(rec))
    if run.tb is not None:
        for k, v in rec.items():
            if k != "step":
                run.tb.add_scalar(k, v, run.step)
    meter.update(t=now, imgs=0, wait=0.0)
    return rec


def log_line(rec: dict) -> str:
    return (
        f"loss {rec['loss']:.4f} repa {rec['loss_repa']:.3f} |g| {rec['grad_norm']:.2f} lr {rec['lr']:.1e} "
        f"{rec['img_per_s']:.1f} img/s MFU {100 * rec['mfu']:.0f}% wait {100 * rec['data_wait']:.0f}%"
    )


def save(run: TrainRun) -> None:
    """A checkpoint of everything exact resume needs (every rank's RNG, the optimizer, the data position);
    written atomically by rank 0, with loss.png beside the log."""
    rng = [torch.get_rng_state()]
    if run.world > 1:
        rng = [None] * run.world
        torch.distributed.all_gather_object(rng, torch.get_rng_state())
    if run.use_fsdp:  # gathered on every rank (collective), materialised on rank 0
        full = fsdp.full_state(run.model, run.ema, run.projector, run.opt, run.mods)
        if run.lora is not None and run.rank == 0:  # the adapters alone, under the names an unsharded run saves
            full["model"], full["ema"] = adapter_state(run.model, full["model"]), adapter_state(run.ema, full["ema"])
    elif run.lora is not None:  # the adapters alone: the base is init_from (or the seed's init), rebuilt on resume
        full = {
            "model": adapter_state(run.model),
            "ema": adapter_state(run.ema),
            "projector": run.projector.state_dict() if run.projector else {},
            "optimizer": run.opt.state_dict(),
        }
    else:
        full = {
            "model": run.model.state_dict(),
            "ema": run.ema.state_dict(),
            "projector": run.projector.state_dict() if run.projector else {},
            "optimizer": run.opt.state_dict(),
        }
    if run.rank == 0:
        tc, step, per_epoch = run.cfg.train, run.step, run.sampler.per_epoch
        st = {
            "format": checkpoint.FORMAT,
            "step": step,
            **full,
            "model_config": run.mcfg.to_dict(),
            "config": json.loads(json.dumps(run.cfg.to_dict())),
            "rng": rng,
            "class_names": run.class_names,
            "nonfinite_skipped": run.skipped,
            "data_position": {"step": step, "epoch": step // per_epoch, "batch_in_epoch": step % per_epoch},
        }
        if run.init:
            st["init"] = run.init
        if run.lora is not None:
            st["lora"] = {"config": _plain_lora(run.lora), "base": run.init or {"seed": tc.seed}}
            if run.init and run.init["class_table"] == "re-initialised":  # the frozen base's one new tensor
                st["lora"]["class_table"] = run.model.y_embedder.embedding_table.weight.detach().cpu().clone()
        checkpoint.save(st, run.out / "checkpoints", step, tc.keep_last, tc.keep_every)
        if run.lora is not None:  # the EMA adapters in peft's format, for peft, diffusers and `sample --lora`
            save_adapters(full["ema"], run.lora, run.out / "lora")
        _plot(run.out)
    barrier(run.world)


def _plain_lora(config) -> dict:
    """The LoRA settings a checkpoint records (plain values: torch.load(weights_only=True) reads them)."""
    return {"r": config.r, "lora_alpha": config.lora_alpha, "lora_dropout": config.lora_dropout,
            "target_modules": config.target_modules if isinstance(config.target_modules, str)
            else sorted(config.target_modules)}  # fmt: skip


def sample_grid(run: TrainRun) -> None:
    """The EMA network on the fixed conditions and noise: samples/STEP.png (a sharded EMA needs every rank)."""
    if run.rank != 0 and not run.use_fsdp:
        return
    sc = run.cfg.sample
    cond, uncond = run.recipe.grid_tensors(run.fixed, run.cond_encoder, run.cfg, run.device)
    imgs, _ = solve(
        run.ema,
        run.fixed_noise.to(run.device),
        cond,
        uncond,
        solver=sc.solver,
        steps=min(sc.steps, 50),
        cfg=sc.cfg,
        interval=sc.interval,
        shift=sc.shift,
    )
    per_row, labels = run.recipe.grid_layout(run.mcfg, run.class_names)
    (run.out / "samples").mkdir(exist_ok=True)
    if run.rank == 0:
        write_grid(
            to_uint8(imgs).cpu(), run.out / "samples" / f"{run.step:07d}.png", nrow=per_row, column_labels=labels
        )


#################################################################################
#                                  The run                                      #
#################################################################################


def train(cfg: Config, out, resume: str = "auto", progress: bool = True) -> dict:
    """Run (or continue) training; returns a summary. Rank 0 writes everything under `out`."""
    with contextlib.ExitStack() as stack:
        return _train(cfg, Path(out), resume, progress, stack, bar_of)


def _train(cfg, out, resume, progress, stack, bar_of) -> dict:
    run, _ = setup(cfg, out, resume, stack)
    tc = cfg.train
    if run.step >= tc.steps and run.rank == 0:
        print(
            f"note: {out} is already at step {run.step}, train.steps is {tc.steps}: nothing to train "
            f"(pass --steps N with N > {run.step} to continue)",
            flush=True,
        )
    batches = iter(run.loader)
    run.model.train()
    last, start_step, t_start = None, run.step, time.perf_counter()
    meter = {"t": time.perf_counter(), "imgs": 0, "wait": 0.0}
    with bar_of(progress and run.rank == 0) as bar:
        task = bar.add("train", total=tc.steps, completed=run.step)
        while run.step < tc.steps:
            r = train_step(run, batches)
            meter["imgs"] += tc.global_batch
            meter["wait"] += r["wait"]
            if run.rank == 0 and (run.step % tc.log_every == 0 or run.step == tc.steps):
                last = log(run, r, meter)
                bar.update(task, completed=run.step, info=log_line(last))
            else:
                bar.update(task, completed=run.step)
            if tc.sample_every and run.step % tc.sample_every == 0:
                run.model.eval()
                sample_grid(run)
                run.model.train()
            if run.step % tc.ckpt_every == 0 or run.step == tc.steps:
                save(run)
    return {
        "step": run.step,
        "trained_steps": run.step - start_step,
        "seconds": time.perf_counter() - t_start,
        "last": last,
        "nonfinite_skipped": run.skipped,
        "compiled_pixel_blocks": run.pixel_compile,
        "out": str(run.out),
    }
