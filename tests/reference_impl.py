"""An independent PixelDiT forward written for the tests from docs/conventions.md, deliberately different math.

It shares no code with pixeldit_cli: RoPE with explicit cos/sin on (even, odd) pairs instead of complex
numbers, attention with an explicit softmax, patch/pixel regrouping with index loops, the pixel sin-cos
table and the timestep features with Python math, and the PiT AdaLN read through an explicit
[pixel][chunk][d] reshape. It works on a plain state dict, in float64, so it is slow: tiny models only.
"""

import math

import torch


def rms(x, w, eps=1e-6):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def lin(sd, name, x):
    y = x @ sd[name + ".weight"].T
    return y + sd[name + ".bias"] if name + ".bias" in sd else y


def t_features(t, dim=256):
    half = dim // 2
    out = torch.zeros(len(t), dim, dtype=torch.float64)
    for b, tv in enumerate(t.tolist()):
        for k in range(half):
            f = 10.0 ** (-k / half)  # max_period 10
            out[b, k] = math.cos(tv * f)
            out[b, half + k] = math.sin(tv * f)
    return out


def rope_angles_2d(dh, rows, cols):
    """angles[l, m] for token l = i*cols + j and pair m; x/y alternate, positions 16*j/(cols-1)."""
    n = dh // 4
    ang = torch.zeros(rows * cols, dh // 2, dtype=torch.float64)
    for i in range(rows):
        for j in range(cols):
            X = 16.0 * j / (cols - 1) if cols > 1 else 0.0
            Y = 16.0 * i / (rows - 1) if rows > 1 else 0.0
            for k in range(n):
                f = 10000.0 ** (-4.0 * k / dh)
                ang[i * cols + j, 2 * k] = X * f
                ang[i * cols + j, 2 * k + 1] = Y * f
    return ang


def rope_angles_1d(dh, length):
    return torch.tensor(
        [[pos * 10000.0 ** (-2.0 * k / dh) for k in range(dh // 2)] for pos in range(length)], dtype=torch.float64
    )


def rotate(x, ang):
    """x (..., N, Dh); pairs (2m, 2m+1) rotated by ang (N, Dh/2)."""
    a, b = x[..., 0::2], x[..., 1::2]
    c, s = torch.cos(ang), torch.sin(ang)
    out = torch.empty_like(x)
    out[..., 0::2] = a * c - b * s
    out[..., 1::2] = a * s + b * c
    return out


def softmax_attn(q, k, v):
    w = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    w = torch.exp(w - w.max(-1, keepdim=True).values)
    return (w / w.sum(-1, keepdim=True)) @ v


def heads_qkv(sd, pre, x, heads, ang, qkv="qkv", qn="q_norm", kn="k_norm"):
    B, N, W = x.shape
    dh = W // heads
    qkv_ = lin(sd, f"{pre}.{qkv}", x).reshape(B, N, 3, heads, dh)
    q, k, v = (qkv_[:, :, i].transpose(1, 2) for i in range(3))  # (B, h, N, dh)
    q = rotate(rms(q, sd[f"{pre}.{qn}.weight"]), ang)
    k = rotate(rms(k, sd[f"{pre}.{kn}.weight"]), ang)
    return q, k, v


def attention(sd, pre, x, heads, ang):
    B, N, W = x.shape
    q, k, v = heads_qkv(sd, pre, x, heads, ang)
    o = softmax_attn(q, k, v).transpose(1, 2).reshape(B, N, W)
    return lin(sd, f"{pre}.proj", o)


def swiglu(sd, pre, x):
    a = lin(sd, f"{pre}.w1", x)
    return lin(sd, f"{pre}.w2", a * torch.sigmoid(a) * lin(sd, f"{pre}.w3", x))


def silu(x):
    return x * torch.sigmoid(x)


def patches(x, p):
    B, C, H, W = x.shape
    Hs, Ws = H // p, W // p
    out = torch.zeros(B, Hs * Ws, C * p * p, dtype=x.dtype)
    for i in range(Hs):
        for j in range(Ws):
            for c in range(C):
                for ki in range(p):
                    for kj in range(p):
                        out[:, i * Ws + j, c * p * p + ki * p + kj] = x[:, c, i * p + ki, j * p + kj]
    return out


def pixel_path(sd, x, s_cond, cfg):
    """Pixel level from the embedder to the output image (shared by c2i and T2I)."""
    B, C, H, W = x.shape
    p, d, A, ph = cfg["p"], cfg["d"], cfg["A"], cfg["pixel_heads"]
    Hs, Ws = H // p, W // p
    L, P = Hs * Ws, p * p
    q = d // 4
    emb = lin(sd, "pixel_embedder.proj", x.permute(0, 2, 3, 1))  # (B, H, W, d)
    for r in range(H):
        for c in range(W):
            vec = [math.sin(c * 10000.0 ** (-k / q)) for k in range(q)] + [
                math.cos(c * 10000.0 ** (-k / q)) for k in range(q)
            ]
            vec += [math.sin(r * 10000.0 ** (-k / q)) for k in range(q)] + [
                math.cos(r * 10000.0 ** (-k / q)) for k in range(q)
            ]
            emb[:, r, c] += torch.tensor(vec, dtype=torch.float64)
    X = torch.zeros(B * L, P, d, dtype=torch.float64)
    for b in range(B):
        for i in range(Hs):
            for j in range(Ws):
                for ki in range(p):
                    for kj in range(p):
                        X[b * L + i * Ws + j, ki * p + kj] = emb[b, i * p + ki, j * p + kj]
    ang = rope_angles_2d(A // ph, Hs, Ws)
    for n in range(cfg["pixel_depth"]):
        pre = f"pixel_blocks.{n}"
        mod = lin(sd, f"{pre}.adaLN_modulation.0", s_cond).reshape(B * L, P, 6, d)  # [pixel][chunk][d]
        sh1, sc1, g1, sh2, sc2, g2 = (mod[:, :, k] for k in range(6))
        h = rms(X, sd[f"{pre}.norm1.weight"]) * (1 + sc1) + sh1
        h = lin(sd, f"{pre}.compress_to_attn", h.reshape(B, L, P * d))
        h = attention(sd, f"{pre}.attn", h, ph, ang)
        X = X + g1 * lin(sd, f"{pre}.expand_from_attn", h).reshape(B * L, P, d)
        h = rms(X, sd[f"{pre}.norm2.weight"]) * (1 + sc2) + sh2
        h = lin(sd, f"{pre}.mlp.fc1", h)
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
        X = X + g2 * lin(sd, f"{pre}.mlp.fc2", h)
    Y = lin(sd, "final_layer.linear", rms(X, sd["final_layer.norm.weight"]))
    out = torch.zeros(B, C, H, W, dtype=torch.float64)
    for b in range(B):
        for i in range(Hs):
            for j in range(Ws):
                for ki in range(p):
                    for kj in range(p):
                        out[b, :, i * p + ki, j * p + kj] = Y[b * L + i * Ws + j, ki * p + kj]
    return out


def forward_c2i(sd, cfg, x, t, y):
    sd = {k: v.double() for k, v in sd.items()}
    x = x.double()
    B, C, H, W = x.shape
    p, D, heads = cfg["p"], cfg["D"], cfg["heads"]
    Hs, Ws = H // p, W // p
    t_emb = lin(sd, "t_embedder.mlp.2", silu(lin(sd, "t_embedder.mlp.0", t_features(t))))[:, None]
    c = silu(t_emb + sd["y_embedder.embedding_table.weight"][y][:, None])
    s = lin(sd, "s_embedder.proj", patches(x, p))
    ang = rope_angles_2d(D // heads, Hs, Ws)
    for n in range(cfg["patch_depth"]):
        pre = f"patch_blocks.{n}"
        m = lin(sd, f"{pre}.adaLN_modulation.0", c)
        sh1, sc1, g1, sh2, sc2, g2 = (m[..., k * D : (k + 1) * D] for k in range(6))
        s = s + g1 * attention(sd, f"{pre}.attn", rms(s, sd[f"{pre}.norm1.weight"]) * (1 + sc1) + sh1, heads, ang)
        s = s + g2 * swiglu(sd, f"{pre}.mlp", rms(s, sd[f"{pre}.norm2.weight"]) * (1 + sc2) + sh2)
    s_cond = silu(t_emb + s).reshape(B * Hs * Ws, D)
    return pixel_path(sd, x, s_cond, cfg)


def forward_t2i(sd, cfg, x, t, y):
    sd = {k: v.double() for k, v in sd.items()}
    x, y = x.double(), y.double()[:, : cfg["text_len"]]
    B, C, H, W = x.shape
    p, D, heads = cfg["p"], cfg["D"], cfg["heads"]
    Hs, Ws, Lt = H // p, W // p, y.shape[1]
    t_emb = lin(sd, "t_embedder.mlp.2", silu(lin(sd, "t_embedder.mlp.0", t_features(t))))[:, None]
    c = silu(t_emb)
    s = lin(sd, "s_embedder.proj", patches(x, p))
    u = rms(lin(sd, "y_embedder.proj", y), sd["y_embedder.norm.weight"]) + sd["y_pos_embedding"][:, :Lt]
    ang_x, ang_y = rope_angles_2d(D // heads, Hs, Ws), rope_angles_1d(D // heads, Lt)
    for n in range(cfg["patch_depth"]):
        pre = f"patch_blocks.{n}"
        mi, mt = lin(sd, f"{pre}.adaLN_modulation_img.0", c), lin(sd, f"{pre}.adaLN_modulation_txt.0", c)
        xi = [mi[..., k * D : (k + 1) * D] for k in range(6)]
        yi = [mt[..., k * D : (k + 1) * D] for k in range(6)]
        hx = rms(s, sd[f"{pre}.norm_x1.weight"]) * (1 + xi[1]) + xi[0]
        hy = rms(u, sd[f"{pre}.norm_y1.weight"]) * (1 + yi[1]) + yi[0]
        qx, kx, vx = heads_qkv(sd, f"{pre}.attn", hx, heads, ang_x, "qkv_x", "q_norm_x", "k_norm_x")
        qy, ky, vy = heads_qkv(sd, f"{pre}.attn", hy, heads, ang_y, "qkv_y", "q_norm_y", "k_norm_y")
        o = softmax_attn(torch.cat([qy, qx], 2), torch.cat([ky, kx], 2), torch.cat([vy, vx], 2))
        o = o.transpose(1, 2).reshape(B, Lt + Hs * Ws, D)
        s = s + xi[2] * lin(sd, f"{pre}.attn.proj_x", o[:, Lt:])
        u = u + yi[2] * lin(sd, f"{pre}.attn.proj_y", o[:, :Lt])
        s = s + xi[5] * swiglu(sd, f"{pre}.mlp_x", rms(s, sd[f"{pre}.norm_x2.weight"]) * (1 + xi[4]) + xi[3])
        u = u + yi[5] * swiglu(sd, f"{pre}.mlp_y", rms(u, sd[f"{pre}.norm_y2.weight"]) * (1 + yi[4]) + yi[3])
    s_cond = silu(t_emb + s).reshape(B * Hs * Ws, D)
    return pixel_path(sd, x, s_cond, cfg)


def ref_cfg(mc) -> dict:
    """The reference's small config dict from a pixeldit ModelConfig (only plain numbers cross over)."""
    return dict(
        p=mc.patch_size,
        D=mc.hidden_size,
        heads=mc.num_heads,
        d=mc.pixel_hidden,
        A=mc.pixel_attn_hidden,
        pixel_heads=mc.pixel_heads,
        patch_depth=mc.patch_depth,
        pixel_depth=mc.pixel_depth,
        text_len=mc.text_len,
    )
