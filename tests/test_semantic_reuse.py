"""Semantic reuse: the patch pathway every K-th evaluation, the pixel pathway always (issue: beyond the release).
Counts are hand-derived from the schedule; K = 1 must be today's sampler bit for bit."""

import json

import pytest
import torch
from safetensors.torch import save_file

from pixeldit_cli.solvers import SOLVERS, SemanticReuse, Velocity, noise_for, solve


def test_the_two_pathways_compose_to_the_forward_bit_for_bit(c2i, t2i):
    x, t = noise_for(range(2), 0, (3, 16, 16)), torch.tensor([0.3, 0.7])
    y = torch.tensor([1, 4])
    with torch.no_grad():
        sem = c2i.semantics(x, t, y)
        assert torch.equal(c2i.pixels(x, sem.t_emb, sem.s), c2i(x, t, y))
        assert torch.equal(c2i.time_embedding(t), sem.t_emb)
        xt = noise_for(range(1), 0, (3, 32, 32))
        yt = torch.randn(1, t2i.config.text_len, t2i.config.text_dim)
        sem = t2i.semantics(xt, torch.tensor([300.0]), yt)
        assert torch.equal(t2i.pixels(xt, sem.t_emb, sem.s), t2i(xt, torch.tensor([300.0]), yt))


@pytest.mark.parametrize("solver", SOLVERS)
def test_k1_is_todays_sampler_bit_for_bit(c2i, solver):
    x, y = noise_for(range(2), 5, (3, 16, 16)), torch.tensor([2, 7])
    with torch.no_grad():
        plain, st = solve(c2i, x, y, None, solver=solver, steps=6, cfg=2.0, interval=(0.1, 1.0))
        same, st1 = solve(c2i, x, y, None, solver=solver, steps=6, cfg=2.0, interval=(0.1, 1.0), semantic_reuse=1)
        # and the reuse machinery itself with every = 1 (semantics + pixels on every evaluation)
        v = Velocity(c2i, y, None, 2.0, (0.1, 1.0), None, SemanticReuse(1, steps=6))
        from pixeldit_cli.solvers import c2i_grid, dpmpp_2m, euler, flow_sigma_grid, flowdpm, heun

        fn = {"euler": euler, "heun": heun, "flowdpm": flowdpm}.get(solver)
        split = dpmpp_2m(v, x, flow_sigma_grid(6)) if fn is None else fn(v, x, c2i_grid(6))
    assert torch.equal(plain, same) and torch.equal(plain, split)
    assert st.patch_evals == st.evals == st1.patch_evals == v.stats.patch_evals


@pytest.mark.parametrize("solver", SOLVERS)
def test_k2_halves_the_patch_path_for_every_solver(c2i, solver):
    x, y = noise_for(range(2), 5, (3, 16, 16)), torch.tensor([2, 7])
    with torch.no_grad():
        a, s1 = solve(c2i, x, y, None, solver=solver, steps=10, cfg=1.0)
        b, s2 = solve(c2i, x, y, None, solver=solver, steps=10, cfg=1.0, semantic_reuse=2)
    assert s1.evals == s2.evals == 10 and s1.patch_evals == 10 and s2.patch_evals == 5
    assert not torch.equal(a, b) and torch.isfinite(b).all()


def test_counts_through_the_guidance_interval_by_hand(c2i):
    """Euler, 10 steps at t = 0, 0.1, ..., 0.9; K = 2 (due at evaluations 0, 2, 4, 6, 8).
    interval (0.05, 1): t = 0 unguided, every later step guided ([uncond; cond], 2 evaluations).
      e0 t=0: due, cond only -> patch 1.   e1 t=0.1: guided, the cache holds no uncond tokens -> forced, 2.
      e2, e4, e6, e8: due, 2 each -> 8.      e3, e5, e7, e9: reused.     patch = 11, pixel = 1 + 9·2 = 19."""
    x, y = noise_for(range(1), 0, (3, 16, 16)), torch.tensor([3])
    with torch.no_grad():
        _, st = solve(c2i, x, y, None, solver="euler", steps=10, cfg=2.0, interval=(0.05, 1.0), semantic_reuse=2)
    assert (st.patch_evals, st.evals) == (11, 19)
    # the "ends" schedule: m = round(0.1·10) = 1 evaluation at each end always recomputed, K = 3 between
    # e0 due (1), e1 forced (2), e2..e8: due where (e - 1) % 3 == 0 -> e4, e7 (2 each), e9 last (2) -> 1+2+4+2 = 9
    with torch.no_grad():
        _, st = solve(
            c2i,
            x,
            y,
            None,
            solver="euler",
            steps=10,
            cfg=2.0,
            interval=(0.05, 1.0),
            semantic_reuse=3,
            reuse_schedule="ends",
        )
    assert (st.patch_evals, st.evals) == (9, 19)


def test_text_to_image_reuses_its_patch_path_too(t2i):
    cfg = t2i.config
    x = noise_for(range(1), 0, (3, 32, 32))
    y, u = torch.randn(1, cfg.text_len, cfg.text_dim), torch.randn(1, cfg.text_len, cfg.text_dim)
    with torch.no_grad():
        a, s1 = solve(t2i, x, y, u, solver="dpm++2m", steps=8, cfg=3.0)
        b, s2 = solve(t2i, x, y, u, solver="dpm++2m", steps=8, cfg=3.0, semantic_reuse=2)
    assert s1.evals == s2.evals == 16 and s1.patch_evals == 16 and s2.patch_evals == 8  # guided throughout
    rel = ((a - b).norm() / a.norm()).item()
    assert 0 < rel < 1


def test_results_json_records_both_pathways_and_flops(c2i, tmp_path):
    from pixeldit_cli.flops import pathway_flops
    from pixeldit_cli.sampling import SampleJob, run

    path = tmp_path / "m.safetensors"
    save_file(c2i.state_dict(), str(path), metadata={"pixeldit_config": json.dumps(c2i.config.to_dict())})
    r = run(
        SampleJob(
            ckpt=str(path),
            n=2,
            out=str(tmp_path / "o"),
            solver="euler",
            steps=10,
            cfg=1.0,
            height=16,
            width=16,
            semantic_reuse=2,
            format="npz",
        ),
        progress=False,
    )
    assert (r["patch_path_evals_per_sample"], r["pixel_path_evals_per_sample"]) == (5, 10)
    f = pathway_flops(c2i.config, 16, 16)
    assert r["gflops_per_image"] == pytest.approx((5 * f["patch"] + 10 * f["pixel"]) / 1e9, abs=1e-4)
    assert (
        f["patch"] + f["pixel"]
        == __import__("pixeldit_cli.flops", fromlist=["x"]).analytic_flops(c2i.config, 16, 16)["total"]
    )
    with pytest.raises(Exception, match="--semantic-reuse must be at least 1"):
        run(
            SampleJob(ckpt=str(path), n=1, out=str(tmp_path / "z"), semantic_reuse=0, height=16, width=16),
            progress=False,
        )


def test_xl16_patch_pathway_is_71_percent_of_the_flops():
    from pixeldit_cli.flops import pathway_flops
    from pixeldit_cli.models.registry import model_config

    f = pathway_flops(model_config("PixelDiT-XL/16"), 256, 256)
    assert round((f["patch"] + f["pixel"]) / 1e9, 2) == 311.19  # Table 16
    assert 0.70 < f["patch"] / (f["patch"] + f["pixel"]) < 0.72
