"""FID, sFID, Inception Score, precision and recall, computed as ADM's evaluator does (docs/evaluation.md#statistics)."""

import warnings

import numpy as np
import scipy.linalg
import torch

#################################################################################
#                          Statistics and Fréchet distance                      #
#################################################################################


def statistics(acts: np.ndarray):
    """μ (mean of float32 activations, as np.mean) and Σ (np.cov, rowvar False, divisor N − 1, float64)."""
    if len(acts) < 2:
        raise ValueError(f"a covariance needs at least 2 samples, got {len(acts)}")
    return np.mean(acts, axis=0), np.cov(acts, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6, method: str = "scipy") -> float:
    """‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr sqrtm(Σ1 Σ2), with ADM's fallbacks (eps·I retry, imaginary check).

    method "eigh": tr sqrtm(Σ1 Σ2) = Σ √λ(√Σ1 Σ2 √Σ1), symmetric and fast; agrees to ~1e-6 relative.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    diff = mu1 - mu2
    if method == "eigh":
        w, v = np.linalg.eigh(s1)
        root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        lam = np.linalg.eigvalsh(root1 @ s2 @ root1)
        tr_covmean = np.sqrt(np.clip(lam, 0, None)).sum()
    else:
        covmean = _sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():
            warnings.warn(
                f"fid calculation produces singular product; adding {eps} to diagonal of cov estimates", stacklevel=2
            )
            offset = np.eye(s1.shape[0]) * eps
            covmean = _sqrtm((s1 + offset) @ (s2 + offset))
        if np.iscomplexobj(covmean):
            if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
                raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag))} in the matrix square root")
            covmean = covmean.real
        tr_covmean = np.trace(covmean)
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def _sqrtm(a):
    # Called without `disp` (deprecated in SciPy 1.16, removed in 1.18). With fewer samples than
    # dimensions the covariances are singular; SciPy warns, ADM's eps retry only acts on non-finite roots.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        return scipy.linalg.sqrtm(a)


#################################################################################
#                                Inception Score                                #
#################################################################################


def inception_score(logits: np.ndarray, split_size: int = 5000) -> float:
    """softmax over the 1008 bias-free logits (float32), consecutive splits in file order, mean of exp(KL)."""
    probs = torch.softmax(torch.from_numpy(np.asarray(logits, dtype=np.float32)), dim=1).numpy()
    scores = []
    for i in range(0, len(probs), split_size):
        part = probs[i : i + split_size]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores))


def looks_sorted(labels) -> bool:
    """True when labels come in long runs (e.g. 50 per class in order): ADM's ordered IS splits then mislead."""
    labels = np.asarray(labels)
    if len(labels) < 2:
        return False
    changes = np.count_nonzero(labels[1:] != labels[:-1])
    return changes < len(labels) / 4


#################################################################################
#                      Precision and recall (k-NN manifolds)                    #
#################################################################################


def _sq_dists(u: torch.Tensor, v: torch.Tensor, mode: str) -> torch.Tensor:
    """max(‖u‖² − 2u·v + ‖v‖², 0) for a tile; 'fp16' mirrors ADM (fp16 with a per-tile fp32 retry)."""
    if mode == "fp16":
        uh, vh = u.half(), v.half()
        nu = (uh.float() ** 2).sum(1, keepdim=True).half()
        nv = (vh.float() ** 2).sum(1, keepdim=True).half()
        d = (nu.float() - 2 * (uh.float() @ vh.float().T).half().float() + nv.float().T).half()
        d = torch.clamp(d.float(), min=0)
        if torch.isfinite(d).all():
            return d
    u, v = u.float(), v.float()
    d = (u * u).sum(1, keepdim=True) - 2 * u @ v.T + (v * v).sum(1, keepdim=True).T
    return torch.clamp(d, min=0)


def knn_radii(feats: torch.Tensor, k: int = 3, tile: int = 10000, mode: str = "fp16") -> torch.Tensor:
    """Squared distance to the k-th nearest neighbour (self included at distance 0), tile by tile."""
    out = []
    for i in range(0, len(feats), tile):
        row = torch.cat(
            [_sq_dists(feats[i : i + tile], feats[j : j + tile], mode) for j in range(0, len(feats), tile)], 1
        )
        out.append(torch.kthvalue(row, k + 1, dim=1).values)
    return torch.cat(out)


def covered(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, tile: int = 10000, mode: str = "fp16"):
    """For each point: does some centre i have d(centre_i, point) ≤ radius_i (inclusive)?"""
    hit = torch.zeros(len(points), dtype=torch.bool)
    for i in range(0, len(centres), tile):
        for j in range(0, len(points), tile):
            d = _sq_dists(centres[i : i + tile], points[j : j + tile], mode)  # (centres, points)
            hit[j : j + tile] |= (d <= radii[i : i + tile, None]).any(0)
    return hit


def precision_recall(ref: np.ndarray, samples: np.ndarray, k: int = 3, mode: str = "fp16", tile: int = 10000):
    """ADM's ManifoldEstimator: precision = samples inside the reference manifold, recall = the reverse."""
    r, s = torch.from_numpy(np.asarray(ref, dtype=np.float32)), torch.from_numpy(np.asarray(samples, dtype=np.float32))
    if len(r) <= k or len(s) <= k:
        raise ValueError(f"precision/recall need more than k = {k} images on each side")
    r_rad, s_rad = knn_radii(r, k, tile, mode), knn_radii(s, k, tile, mode)
    precision = covered(s, r, r_rad, tile, mode).float().mean().item()
    recall = covered(r, s, s_rad, tile, mode).float().mean().item()
    return precision, recall


#################################################################################
#                     KID: kernel inception distance                            #
#################################################################################

KID_SUBSETS, KID_SUBSET_SIZE, KID_SEED = 100, 1000, 2020


def kid(feats_a: np.ndarray, feats_b: np.ndarray, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
        seed: int = KID_SEED) -> tuple[float, float, int]:  # fmt: skip
    """KID (Bińkowski et al., 2018) as torch-fidelity and clean-fid compute it: the unbiased MMD² with the
    cubic polynomial kernel k(x, y) = (xᵀy / d + 1)³ on `subsets` random subsets of `subset_size` (capped at
    the smaller set), drawn without replacement from np.random.RandomState(seed); (mean, std, subset size)."""
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError(f"KID needs at least 2 images on each side, got {len(a)} and {len(b)}")
    d = a.shape[1]
    rng = np.random.RandomState(seed)
    mmds = np.zeros(subsets)
    for i in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
        off = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        mmds[i] = off - 2 * kxy.sum() / (m * m)
    return float(mmds.mean()), float(mmds.std()), m
