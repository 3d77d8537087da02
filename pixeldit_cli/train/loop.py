"""`pixeldit train`: the class-conditional recipe of the release, on one CPU process or many GPUs.

One optimizer step = one global batch (global_batch images, split over world × accumulation micro-
batches). AdamW, LR and clip schedules, EMA every step, REPA, non-finite guard, metrics.jsonl, a
fixed-noise sample grid, atomic checkpoints and exact resume. Exactness comes from two rules: the data
of step s is a function of (seed, s) (StepSampler), and every random draw of a sample is a function of
(seed, s, global slot) (objective.draw) — so neither resuming nor the number of processes changes them.
"""

import contextlib
import copy
import json
import time
from pathlib import Path

import torch

from ..config import Config, to_yaml
from ..errors import PixelDiTError
from ..io import append_line, ensure_writable_dir, write_grid, write_text
from ..models.registry import build_model, count_params, model_config
from ..dist import barrier, init_distributed
from ..solvers import noise_for, solve, to_uint8
from . import checkpoint
from .data import BucketStepSampler, CaptionDataset, StepSampler, collate, collate_captions, open_dataset
from .objective import DinoEncoder, DinoEncoder224, Projector, draw, flip_mask, flow_loss, t2i_draw, t2i_flow_loss


def lr_at(tc, step: int) -> float:
    lr = tc.lr_drop_to if tc.lr_drop_step and step >= tc.lr_drop_step else tc.lr
    if tc.warmup_steps and step < tc.warmup_steps:
        lr *= (step + 1) / tc.warmup_steps
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
            from came_pytorch import CAME
        except ImportError:
            raise PixelDiTError("train.optimizer came needs the came-pytorch package",
                                "pip install came-pytorch, or --train.optimizer adamw") from None
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


def grid_labels(num_classes: int, per_class: int = 4) -> list[int]:
    """The training grid's classes: up to 16 classes, one column each (per_class rows); else 16 fixed ImageNet ones."""
    if num_classes <= 16:
        return [c for _ in range(per_class) for c in range(num_classes)]
    return [88, 207, 279, 291, 360, 387, 388, 417, 812, 974, 980, 33, 1, 130, 250, 949][: min(16, num_classes)]


def _plot(out: Path) -> None:
    """loss.png beside metrics.jsonl at every checkpoint, when matplotlib is installed (never fatal)."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        return
    from ..plot import plot_metrics

    try:
        plot_metrics(out)
    except PixelDiTError:
        pass  # nothing logged yet


def _tensorboard(cfg: Config, out: Path, rank: int):
    """A SummaryWriter on OUT/tensorboard when train.tensorboard is set (rank 0), checked before any work."""
    if not cfg.train.tensorboard or rank != 0:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise PixelDiTError("train.tensorboard needs the tensorboard package", "pip install 'pixeldit[tensorboard]'") from None
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
    """Every value of the resolved config that could fail later, checked before any work."""
    from ..validate import finite, positive

    tc, sc = cfg.train, cfg.sample
    for name in ("log_every", "ckpt_every", "max_nonfinite"):
        if getattr(tc, name) < 1:
            raise PixelDiTError(f"train.{name} must be at least 1, got {getattr(tc, name)}")
    for name in ("sample_every", "keep_last", "keep_every", "warmup_steps", "lr_drop_step", "grad_clip_drop_step", "seed"):
        if getattr(tc, name) < 0:
            raise PixelDiTError(f"train.{name} must be 0 or more, got {getattr(tc, name)}")
    positive("train.lr", tc.lr)
    finite("train.lr_drop_to", tc.lr_drop_to, lo=0.0)
    finite("train.grad_clip", tc.grad_clip, lo=0.0)
    finite("train.grad_clip_drop_to", tc.grad_clip_drop_to, lo=0.0)
    finite("train.ema_decay", tc.ema_decay, lo=0.0, hi=1.0)
    finite("train.weight_decay", tc.weight_decay, lo=0.0)
    finite("train.repa_weight", tc.repa_weight, lo=0.0)
    positive("train.time_shift", tc.time_shift)
    for b in tc.betas:
        finite("train.betas", b, lo=0.0, hi=0.999999)
    if tc.precision not in ("fp32", "bf16"):
        raise PixelDiTError(f"train.precision must be fp32 or bf16, got {tc.precision!r}")
    if cfg.data.resolution < 1 or cfg.data.num_workers < 0:
        raise PixelDiTError("data.resolution must be positive and data.num_workers 0 or more")
    from ..solvers import SOLVERS

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
            "choose --train.global_batch / --train.micro_batch so that global = world × micro × accumulation")
    if tc.optimizer not in ("adamw", "came"):
        raise PixelDiTError(f"optimizer {tc.optimizer!r} is not available", "use adamw or came")
    if not 0 <= tc.cond_drop < 1:
        raise PixelDiTError(f"train.cond_drop must be in [0, 1), got {tc.cond_drop}")


def train(cfg: Config, out, resume: str = "auto", progress: bool = True) -> dict:
    """Run (or continue) training; returns a summary. Rank 0 writes everything under `out`."""
    out = Path(out)
    rank, world, device = init_distributed()
    tc = cfg.train
    validate(cfg, world)
    mcfg = model_config(cfg.model.name, num_classes=cfg.model.num_classes)
    t2i = mcfg.kind == "t2i"
    if cfg.data.resolution % mcfg.patch_size:
        raise PixelDiTError(f"data.resolution {cfg.data.resolution} is not a multiple of the patch size {mcfg.patch_size}")
    if tc.repa_weight > 0 and not 1 <= tc.repa_block <= mcfg.patch_depth:
        raise PixelDiTError(f"train.repa_block {tc.repa_block} is outside 1..{mcfg.patch_depth}")
    autocast = torch.bfloat16 if (device.type == "cuda" and tc.precision == "bf16") else None

    # ---- state: fresh, or everything from the checkpoint ------------------------------------------------
    if resume in ("", "none") and (out / "checkpoints" / "last.pt").exists():
        raise PixelDiTError(f"{out} already holds a training run", "continue it with --resume auto, or choose another --out")
    if rank == 0:
        ensure_writable_dir(out)  # before the dataset and the encoders load
    tb = _tensorboard(cfg, out, rank)
    state, resume_path, note = checkpoint.load_for_resume(resume, out)
    if note and rank == 0:
        print(f"note: {note}", flush=True)
    if state is not None and state["model_config"] != mcfg.to_dict():
        raise PixelDiTError(f"{resume_path} was trained with another architecture", "use the run's own preset, or another --out")

    text = None
    if t2i:
        from ..text import TextEncoder

        if not cfg.text.encoder:
            raise PixelDiTError("text-to-image training needs the Gemma-2 text encoder", "pass --text.encoder DIR")
        text = TextEncoder(cfg.text.encoder, device=device, max_length=mcfg.text_len, expected_dim=mcfg.text_dim)
        ds = CaptionDataset(cfg.data.path, cfg.data.resolution, cfg.data.multi_aspect, mcfg.patch_size)
    else:
        ds = open_dataset(cfg.data.path, cfg.data.resolution, mcfg.num_classes)
    torch.manual_seed(tc.seed)  # the initial weights are a function of the seed
    model = build_model(mcfg).to(device)
    model.grad_checkpointing = tc.grad_checkpointing
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    encoder = projector = None
    if tc.repa_weight > 0:
        encoder = (DinoEncoder224 if t2i else DinoEncoder)(tc.repa_encoder).to(device)
        width = 2048 if mcfg.hidden_size == 1536 else mcfg.hidden_size  # the T2I release's projector is 2048 wide
        projector = Projector(mcfg.hidden_size, width, encoder.dim).to(device)
    use_fsdp = tc.fsdp and world > 1
    step, skipped = 0, 0
    if state is not None:  # full tensors into the unsharded modules; sharding (if any) comes after
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        if projector is not None and state.get("projector"):
            projector.load_state_dict(state["projector"])
    if use_fsdp:
        from . import fsdp

        fsdp.shard(model, ema, projector)
    mods = trainable_modules(model, projector)
    params = list(mods.parameters())
    opt = make_optimizer(params, tc, device, fused=not use_fsdp)
    if state is not None:
        if use_fsdp:
            fsdp.load_optimizer(opt, mods, state["optimizer"])
        else:
            opt.load_state_dict(state["optimizer"])
        step, skipped = state["step"], state.get("nonfinite_skipped", 0)
        rng = state.get("rng", [])
        if rank < len(rng):
            torch.set_rng_state(rng[rank])

    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 and not use_fsdp else model
    if tc.compile:
        net = torch.compile(net)
    per_rank = tc.global_batch // world
    accum = per_rank // tc.micro_batch
    if t2i:
        sampler = BucketStepSampler(ds.bucket_of, tc.global_batch, tc.micro_batch, rank, world, tc.seed, step, tc.steps)
    else:
        sampler = StepSampler(len(ds), tc.global_batch, tc.micro_batch, rank, world, tc.seed, step, tc.steps)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                                         collate_fn=collate_captions if t2i else collate, pin_memory=device.type == "cuda")
    null = mcfg.num_classes

    # ---- bookkeeping ------------------------------------------------------------------------------
    class_names = list(getattr(ds, "classes", []))
    # MFU: the analytic FLOPs of a training image (forward + backward = 3 forwards, the paper's count) per
    # second, against this device's own matmul rate in the training dtype, measured once here (best of 10:
    # with 3 a slow start-up moment once read as a low peak and an MFU of 94%).
    from ..flops import analytic_flops, matmul_rate

    flops_per_image = 3 * analytic_flops(mcfg, cfg.data.resolution, cfg.data.resolution)["total"]
    peak_rate = matmul_rate(1024, 10, autocast or torch.float32, device) * 1e9 if rank == 0 else 1.0
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "config.yaml", to_yaml(cfg))
        trim_metrics(out / "metrics.jsonl", step)
        n_params = count_params(model)
        print("resolved config:\n" + "\n".join("  " + l for l in to_yaml(cfg).splitlines()), flush=True)
        print(f"PixelDiT {cfg.model.name}: {n_params:,} params | global batch {tc.global_batch} = {world} proc × "
              f"{tc.micro_batch} × {accum} accum | lr {tc.lr:g} | steps {step} -> {tc.steps} | "
              f"{'resumed from ' + str(resume_path) if state else 'fresh'} | {device} {'bf16' if autocast else 'fp32'}", flush=True)
    fixed_labels = [c for _, c in ds.items[:8]] if t2i else grid_labels(null)
    fixed_noise = noise_for(range(len(fixed_labels)), 10_000 + tc.seed, (mcfg.in_channels, cfg.data.resolution, cfg.data.resolution))

    def save_state():
        rng = [torch.get_rng_state()]
        if world > 1:
            rng = [None] * world
            torch.distributed.all_gather_object(rng, torch.get_rng_state())
        if use_fsdp:  # gathered on every rank (collective), materialised on rank 0
            full = fsdp.full_state(model, ema, projector, opt, mods)
        else:
            full = {"model": model.state_dict(), "ema": ema.state_dict(),
                    "projector": projector.state_dict() if projector else {}, "optimizer": opt.state_dict()}
        if rank == 0:
            st = {"format": checkpoint.TRAIN_FORMAT, "step": step, **full,
                  "model_config": mcfg.to_dict(), "config": json.loads(json.dumps(cfg.to_dict())), "rng": rng,
                  "class_names": class_names, "nonfinite_skipped": skipped,
                  "data_position": {"step": step, "epoch": step // sampler.per_epoch, "batch_in_epoch": step % sampler.per_epoch}}
            checkpoint.save(st, out / "checkpoints", step, tc.keep_last, tc.keep_every)
            _plot(out)
        barrier(world)

    def sample_grid():
        if rank != 0 and not use_fsdp:  # a sharded EMA needs every rank in its forward
            return
        sc = cfg.sample
        if t2i:
            cond, uncond = text.encode(fixed_labels).to(device), text.null(cfg.text.negative_prompt).to(device)
        else:
            cond, uncond = torch.tensor(fixed_labels, device=device), None
        imgs, _ = solve(ema, fixed_noise.to(device), cond, uncond, solver=sc.solver,
                        steps=min(sc.steps, 50), cfg=sc.cfg, interval=sc.interval, shift=sc.shift)
        per_row = 4 if t2i else (null if null <= 16 else 4)
        (out / "samples").mkdir(exist_ok=True)
        if rank == 0:
            labels = None if t2i or null > 16 else [class_names[c] if c < len(class_names) else str(c) for c in range(null)]
            write_grid(to_uint8(imgs).cpu(), out / "samples" / f"{step:07d}.png", nrow=per_row, column_labels=labels)

    bar = None
    if progress and rank == 0:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"), TimeRemainingColumn())
        task = bar.add_task("", total=tc.steps, completed=step, info="")
        bar.start()

    # ---- the loop ---------------------------------------------------------------------------------
    it = iter(loader)
    model.train()
    in_a_row, last_log = 0, None
    t_log, wait_log, imgs_log = time.perf_counter(), 0.0, 0
    start_step, t_start = step, time.perf_counter()
    try:
        while step < tc.steps:
            lr, clip = lr_at(tc, step), clip_at(tc, step)
            for g in opt.param_groups:
                g["lr"] = lr
            slots, _ = sampler.slots(step)
            opt.zero_grad(set_to_none=True)
            sums = torch.zeros(3, device=device)
            for k in range(accum):
                t0 = time.perf_counter()
                u8, y = next(it)
                wait_log += time.perf_counter() - t0
                u8 = u8.to(device, non_blocking=True)
                mine = slots[k * tc.micro_batch: (k + 1) * tc.micro_batch]
                if cfg.data.flip:
                    f = flip_mask(tc.seed, step, mine).to(device).view(-1, 1, 1, 1)
                    u8 = torch.where(f, u8.flip(-1), u8)
                x = (u8.float() / 255 - 0.5) / 0.5
                target = encoder(u8.float() / 255) if encoder is not None else None
                sync = contextlib.nullcontext() if (world == 1 or use_fsdp or k == accum - 1) else net.no_sync()
                if t2i:  # y: captions -> Gemma states; σ from the release's discrete shifted grid
                    emb, null_emb = text.encode(list(y), cache=False).to(device), text.null("").to(device)
                    noise, sig, ts_, drop = (a.to(device) for a in t2i_draw(tc.seed, step, mine, tuple(x.shape[1:]), tc.cond_drop, tc.time_shift))
                    with sync:
                        loss, lf, lr_ = t2i_flow_loss(net, x, emb, null_emb, sig, ts_, noise, drop, projector, target,
                                                      tc.repa_block, tc.repa_weight, autocast)
                        (loss * (tc.micro_batch / per_rank)).backward()
                else:
                    y = y.to(device, non_blocking=True)
                    noise, t, drop = (a.to(device) for a in draw(tc.seed, step, mine, tuple(x.shape[1:]), tc.cond_drop, tc.time_shift))
                    with sync:
                        loss, lf, lr_ = flow_loss(net, x, y, t, noise, drop, null, projector, target,
                                                  tc.repa_block, tc.repa_weight, autocast)
                        (loss * (tc.micro_batch / per_rank)).backward()
                sums += torch.stack([loss.detach(), lf, lr_]) * (tc.micro_batch / per_rank)
            if world > 1 and projector is not None and not use_fsdp:  # DDP wraps the network only: average the projector's grads too
                for prm in projector.parameters():
                    if prm.grad is not None:
                        torch.distributed.all_reduce(prm.grad)
                        prm.grad /= world
            gnorm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
            if use_fsdp:
                gnorm = fsdp.as_full(gnorm)
            if world > 1:
                torch.distributed.all_reduce(sums)
                sums /= world
            finite = bool(torch.isfinite(sums[0]) and torch.isfinite(gnorm))
            if finite:
                opt.step()
                ema_update(list(ema.parameters()), list(model.parameters()), tc.ema_decay)
                in_a_row = 0
            else:
                opt.zero_grad(set_to_none=True)
                skipped += 1
                in_a_row += 1
                if in_a_row >= tc.max_nonfinite:
                    raise PixelDiTError(f"stopping at step {step}: {in_a_row} non-finite losses or gradients in a row",
                                        "lower the learning rate, or resume from an earlier checkpoint")
            step += 1
            imgs_log += tc.global_batch

            if rank == 0 and (step % tc.log_every == 0 or step == tc.steps):
                now = time.perf_counter()
                rec = {"step": step, "loss": sums[0].item(), "loss_flow": sums[1].item(), "loss_repa": sums[2].item(),
                       "grad_norm": gnorm.item(), "lr": lr, "grad_clip": clip, "img_per_s": imgs_log / (now - t_log),
                       "data_wait": wait_log / (now - t_log), "nonfinite_skipped": skipped}
                rec["mfu"] = rec["img_per_s"] * flops_per_image / world / peak_rate  # per device, as nanoGPT reports it
                append_line(out / "metrics.jsonl", json.dumps(rec))
                if tb is not None:
                    for k, v in rec.items():
                        if k != "step":
                            tb.add_scalar(k, v, step)
                last_log, t_log, wait_log, imgs_log = rec, now, 0.0, 0
                if bar is not None:
                    bar.update(task, completed=step, info=f"loss {rec['loss']:.4f} repa {rec['loss_repa']:.3f} "
                               f"|g| {rec['grad_norm']:.2f} lr {lr:.1e} {rec['img_per_s']:.1f} img/s MFU {100 * rec['mfu']:.0f}% "
                               f"wait {100 * rec['data_wait']:.0f}%")
            elif bar is not None:
                bar.update(task, completed=step)
            if tc.sample_every and step % tc.sample_every == 0:
                model.eval()
                sample_grid()
                model.train()
            if step % tc.ckpt_every == 0 or step == tc.steps:
                save_state()
    finally:
        if bar is not None:
            bar.stop()
    return {"step": step, "trained_steps": step - start_step, "seconds": time.perf_counter() - t_start,
            "last": last_log, "nonfinite_skipped": skipped, "out": str(out)}
