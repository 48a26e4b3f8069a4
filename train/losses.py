"""Fine-tuning losses: pure functions `(pred, target, mask or weight) -> scalar Tensor`.

Each loss states its formula and the shapes it takes; each returns a defined value (0, with a gradient path
to `pred`) when nothing is valid, never NaN, so a batch whose samples lack a label still steps. Tested
against a direct numpy computation of the formula in tests/finetune/test_losses.py.

No loss reads a device value on the host (no `bool(t.any())`, `if t == 0`, `float(t)`): each would wait for the
GPU on every step. "Nothing valid" is handled arithmetically instead: a sum over an empty set divided by a
denominator clamped away from 0 is 0, with the graph (and every head parameter's zero gradient) intact.
Predictions are computed in fp32 whatever the model's dtype: the caller casts (`train.finetune.task_losses`),
and each loss casts again so that it is exact when called directly on bf16 tensors.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255


def _fp32(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Half-precision tensors as fp32; fp32 and fp64 as they are (the numpy checks run in fp64)."""
    return tuple(t.float() if t.is_floating_point() and t.element_size() < 4 else t for t in tensors)


def _safe_divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, 0 (with `numerator`'s graph) where the denominator is 0: a weighted mean over
    nothing. The numerator is then a sum of zero terms, so every parameter still gets a (zero) gradient, which
    ZeRO's gradient partitioning expects, instead of None."""
    return numerator / denominator.clamp(min=torch.finfo(denominator.dtype).tiny)


def heatmap_mse(
    pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, foreground_weight: float = 0.0
) -> torch.Tensor:
    """Keypoint heatmap MSE weighted per keypoint (mmpose's KeypointMSELoss with target weights).

    pred, target: (B, K, h, w); weight: (B, K), 1 for a labelled keypoint (v > 0) inside the crop, else 0.
        L = sum_{b,k} w_bk * mean_{y,x} (1 + f * target_bkyx) (pred_bkyx - target_bkyx)^2 / sum_{b,k} w_bk
    f = `foreground_weight`, 0 by default: the plain MSE of the Sapiens recipe. With f > 0 the Gaussian's own
    pixels count up to 1 + f times a background pixel's: at a small budget the plain loss, where over 90% of
    the pixels are background, is met first by near-empty heatmaps. Returns 0 when every weight is 0.
    """
    if pred.shape != target.shape:
        raise ValueError(f"heatmap_mse: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if weight.shape != pred.shape[:2]:
        raise ValueError(f"heatmap_mse: weight {tuple(weight.shape)} must be (B, K) = {tuple(pred.shape[:2])}")
    pred, target, weight = _fp32(pred, target, weight)
    per_keypoint = _per_keypoint_mse(pred, target, foreground_weight)  # (B, K)
    return _safe_divide((per_keypoint * weight).sum(), weight.sum())


def _per_keypoint_mse(pred: torch.Tensor, target: torch.Tensor, foreground_weight: float) -> torch.Tensor:
    """(B, K): each heatmap's mean squared error, pixels weighted by 1 + foreground_weight * target."""
    if not (math.isfinite(foreground_weight) and foreground_weight >= 0):
        raise ValueError(f"heatmap loss: foreground_weight must be a finite number >= 0, got {foreground_weight}")
    squared = (pred - target).pow(2)
    if foreground_weight:
        squared = squared * (1.0 + foreground_weight * target)
    return squared.mean(dim=(2, 3))


def heatmap_ohkm_mse(
    pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, topk: int, foreground_weight: float = 0.0
) -> torch.Tensor:
    """Online hard keypoint mining (Chen et al. 2018, CPN; mmpose's KeypointOHKMMSELoss, Sapiens-1B topk 128).

    pred, target: (B, K, h, w); weight: (B, K) as in `heatmap_mse`; topk: keypoints kept per sample.
        l_bk = w_bk * mean_{y,x} (1 + f * target_bkyx) (pred_bkyx - target_bkyx)^2   (B, K), f as in `heatmap_mse`
        S_b  = the min(topk, n_b) keypoints with the largest l_bk among the n_b with w_bk > 0
        L    = sum_b sum_{k in S_b} l_bk / sum_b sum_{k in S_b} w_bk
    So with topk >= K it is exactly `heatmap_mse` (`foreground_weight` as there). mmpose instead divides each
    sample's sum by topk, counting unlabelled keypoints as zero-loss picks: a crop with fewer than topk labelled
    keypoints (a half-body crop, a sparsely labelled image) would then have its loss diluted. Returns 0 when
    every weight is 0.
    """
    if pred.shape != target.shape:
        raise ValueError(f"heatmap_ohkm_mse: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if weight.shape != pred.shape[:2]:
        raise ValueError(f"heatmap_ohkm_mse: weight {tuple(weight.shape)} must be (B, K) = {tuple(pred.shape[:2])}")
    if topk < 1:
        raise ValueError(f"heatmap_ohkm_mse: topk must be >= 1, got {topk}")
    pred, target, weight = _fp32(pred, target, weight)
    weighted = _per_keypoint_mse(pred, target, foreground_weight) * weight  # (B, K)
    labelled = weight > 0
    # Unlabelled keypoints rank below every labelled one, so they are picked only when a sample has fewer
    # than topk labelled keypoints, and are then masked out of both sums.
    ranking = torch.where(labelled, weighted.detach(), torch.finfo(weighted.dtype).min)
    chosen = ranking.topk(min(topk, pred.shape[1]), dim=1).indices  # (B, k)
    keep = labelled.gather(1, chosen).to(weighted.dtype)
    return _safe_divide((weighted.gather(1, chosen) * keep).sum(), (weight.gather(1, chosen) * keep).sum())


def weighted_ce(
    logits: torch.Tensor, target: torch.Tensor, class_weight: torch.Tensor | None, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Class-weighted cross-entropy over labelled pixels (PyTorch's weighted mean).

    logits: (B, C, h, w), bilinearly resized to the target's (H, W) first when they differ (the heads predict
    at 1/2 of the input); target: (B, H, W) int64 class ids, `ignore_index` = unlabelled; class_weight: (C,).
        L = sum_p w[t_p] * (-log softmax(z_p)[t_p]) / sum_p w[t_p]   over pixels p with t_p != ignore
    Returns 0 when no pixel is labelled.
    """
    if logits.ndim != 4 or target.ndim != 3 or logits.shape[0] != target.shape[0]:
        raise ValueError(f"weighted_ce: logits {tuple(logits.shape)} must be (B, C, h, w), target (B, H, W)")
    (logits,) = _fp32(logits)
    if logits.shape[2:] != target.shape[1:]:
        logits = F.interpolate(logits, size=target.shape[1:], mode="bilinear", align_corners=False)
    target = target.long()
    valid = target != ignore_index
    num_classes = logits.shape[1]
    if class_weight is not None and class_weight.shape != (num_classes,):
        raise ValueError(f"weighted_ce: class_weight {tuple(class_weight.shape)} must be ({num_classes},)")
    # The range check reads the target on the host: free on CPU, a stall per step on a GPU, where an
    # out-of-range id fails the gather below with a device-side assertion instead.
    if target.device.type == "cpu" and bool(((target < 0) | (target >= num_classes))[valid].any()):
        raise ValueError(f"weighted_ce: target has class ids outside 0..{num_classes - 1} (and {ignore_index})")
    # Written out rather than F.cross_entropy: PyTorch returns NaN when every labelled pixel has weight 0.
    safe_target = torch.where(valid, target, 0)
    nll = -F.log_softmax(logits, dim=1).gather(1, safe_target[:, None])[:, 0]  # (B, H, W)
    w = valid.to(logits.dtype)
    if class_weight is not None:
        w = w * class_weight.to(logits.dtype)[safe_target]
    return _safe_divide((nll * w).sum(), w.sum())


def silog_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    eps: float = 1e-6,
    lam: float = 0.5,
    offset: float = 0.0,
) -> torch.Tensor:
    """Scale-invariant log loss (Eigen et al. 2014; lambda 0.5 as in Sapiens), per image then averaged over images.

    pred, target: (B, 1, H, W) or (B, H, W), pred resized bilinearly to the target when sizes differ;
    mask: same spatial shape, bool. With t = target + offset and p = pred + offset, over the M_b valid pixels
    of image b (mask and t > eps):
        delta = log(t) - log(max(p, eps))
        L_b = sqrt(mean(delta^2) - lam * mean(delta)^2)
        L = mean over images with M_b > 0 of L_b     (0 when no image has a valid pixel)
    lam = 1 makes L_b the standard deviation of delta: with offset 0, blind to a global scale of pred, as an
    evaluation that aligns each prediction's scale is (with an offset no lam is scale-blind); lam < 1 also asks
    for the scale. The variance term is clamped at 1e-12 before the square root, whose gradient is infinite at 0.
    offset 0 is the paper's loss. On min-max normalised targets the log then grows without bound towards the
    person's nearest point (a target of 0.002 weighs as much as the rest of the body), so a few pixels a model
    cannot place to the millimetre dominate the loss; an offset of 1 takes the log of depths in [1, 2], where
    every pixel counts about evenly, as in the scale-and-shift aligned metric.
    """
    if not 0 <= lam <= 1:  # also refuses nan; lam > 1 would reward a wrong scale
        raise ValueError(f"silog_loss: lam must be in [0, 1], got {lam}")
    if not (math.isfinite(offset) and offset >= 0):
        raise ValueError(f"silog_loss: offset must be a finite number >= 0, got {offset}")
    (pred, target), mask = _fp32(_dense_1ch(pred), _dense_1ch(target)), _dense_1ch(mask).bool()
    if pred.shape[1:] != target.shape[1:]:
        pred = F.interpolate(pred[:, None], size=target.shape[1:], mode="bilinear", align_corners=False)[:, 0]
    pred, target = pred + offset, target + offset
    valid = mask & (target > eps)
    count = valid.flatten(1).sum(1)  # (B,)
    has = (count > 0).to(pred.dtype)
    delta = torch.where(valid, torch.log(target.clamp(min=eps)) - torch.log(pred.clamp(min=eps)), 0.0)
    n = count.clamp(min=1).to(pred.dtype)
    mean_sq = delta.pow(2).flatten(1).sum(1) / n
    mean = delta.flatten(1).sum(1) / n
    per_image = torch.sqrt((mean_sq - lam * mean.pow(2)).clamp(min=1e-12))
    return _safe_divide((per_image * has).sum(), has.sum())


def ssi_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Shift-and-scale-invariant L1 (Ranftl et al. 2020, MiDaS), per image then averaged over images.

    pred, target, mask as in `silog_loss`. Each of pred and target is normalised over image b's M_b valid pixels
    (mask and a finite target) by its (lower) median m and mean absolute deviation d: x_hat = (x - m) / d; then
        L_b = mean(|pred_hat - target_hat|),   L = mean over images with M_b > 0 of L_b.
    Only the depth's shape is asked for, not its offset or scale: per-view min-max normalised targets change both
    with a single outlying pixel (a hand stretched towards the camera), and the relative-depth evaluation aligns
    them away anyway. Unlike a least-squares alignment, d > 0 keeps the sign: a model that swaps near and far pays.
    A flat prediction (d = 0) is scored with d clamped at 1e-6, so it pays the target's full spread.
    """
    residual, _, n, has = _ssi_residual(pred, target, mask)
    per_image = residual.abs().flatten(1).sum(1) / n
    return _safe_divide((per_image * has).sum(), has.sum())


def gradient_matching_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, scales: int = 4
) -> torch.Tensor:
    """Multi-scale gradient matching (Ranftl et al. 2020, MiDaS's second term), per image then averaged.

    pred, target, mask as in `ssi_loss`; R = pred_hat - target_hat, the difference of the two median / mean
    absolute deviation normalised maps (zero off the valid pixels). At scales k = 0 .. scales-1, on every 2^k-th
    pixel in each direction:
        G_b,k = (sum over neighbour pairs (x, x+1) both valid of |R(x+1) - R(x)|, along rows and columns)
                / (valid pixels at that scale)
        L_b = sum over k of G_b,k,   L = mean over images with a valid pixel of L_b.
    The L1 term is satisfied as well by a tilted plane as by a body: a plane through the person is most of the
    depth spread in a view from above. This term asks for the local steps instead, where one limb passes in front
    of another; blind to shift and scale as the L1 term is, and 0 when pred is a positive multiple of target
    plus a constant.
    """
    if scales < 1:
        raise ValueError(f"gradient_matching_loss: scales must be >= 1, got {scales}")
    residual, valid, _, has = _ssi_residual(pred, target, mask)
    per_image = torch.zeros_like(has)
    for k in range(scales):
        r, v = residual[:, :: 2**k, :: 2**k], valid[:, :: 2**k, :: 2**k]
        across = torch.where(v[:, :, 1:] & v[:, :, :-1], (r[:, :, 1:] - r[:, :, :-1]).abs(), 0.0)
        down = torch.where(v[:, 1:] & v[:, :-1], (r[:, 1:] - r[:, :-1]).abs(), 0.0)
        count = v.flatten(1).sum(1).clamp(min=1).to(r.dtype)
        per_image = per_image + (across.flatten(1).sum(1) + down.flatten(1).sum(1)) / count
    return _safe_divide((per_image * has).sum(), has.sum())


def _ssi_residual(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pred_hat - target_hat, zero off the valid pixels; valid; valid count per image clamped at 1; 1.0 where an
    image has a valid pixel) for `ssi_loss` and `gradient_matching_loss`."""
    (pred, target), mask = _fp32(_dense_1ch(pred), _dense_1ch(target)), _dense_1ch(mask).bool()
    if pred.shape[1:] != target.shape[1:]:
        pred = F.interpolate(pred[:, None], size=target.shape[1:], mode="bilinear", align_corners=False)[:, 0]
    valid = mask & torch.isfinite(target)
    count = valid.flatten(1).sum(1)
    has = (count > 0).to(pred.dtype)
    n = count.clamp(min=1).to(pred.dtype)

    def normalise(x: torch.Tensor) -> torch.Tensor:
        flat = torch.where(valid, x, torch.nan).flatten(1)
        median = flat.nanmedian(1).values.nan_to_num(0.0)[:, None, None]
        centred = torch.where(valid, x - median, 0.0)
        spread = (centred.abs().flatten(1).sum(1) / n).clamp(min=1e-6)[:, None, None]
        return centred / spread

    return torch.where(valid, normalise(pred) - normalise(target), 0.0), valid, n, has


def normal_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Surface-normal loss: L1 plus angular (1 - cosine), over valid pixels.

    pred: (B, 3, h, w) raw head output, resized bilinearly to the target's (H, W) when sizes differ, then
    normalised: n_hat = pred / max(|pred|, eps); target: (B, 3, H, W) unit normals; mask: (B, H, W) bool
    (valid = mask and |n| > 0).
        L = mean over valid pixels p of ( sum_c |n_pc - n_hat_pc| + (1 - n_p . n_hat_p) )
    Returns 0 when no pixel is valid.
    """
    if pred.ndim != 4 or pred.shape[1] != 3 or target.shape[:2] != pred.shape[:2]:
        raise ValueError(f"normal_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} must be (B, 3, ...)")
    pred, target = _fp32(pred, target)
    if pred.shape[2:] != target.shape[2:]:
        pred = F.interpolate(pred, size=target.shape[2:], mode="bilinear", align_corners=False)
    n_hat = pred / pred.norm(dim=1, keepdim=True).clamp(min=eps)
    valid = mask.bool() & (target.abs().sum(dim=1) > 0)  # (B, H, W)
    l1 = (target - n_hat).abs().sum(dim=1)
    angular = 1.0 - (target * n_hat).sum(dim=1)
    return _safe_divide(((l1 + angular) * valid).sum(), valid.sum().to(pred.dtype))


def _dense_1ch(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) or (B, H, W) -> (B, H, W)."""
    if x.ndim == 4 and x.shape[1] == 1:
        return x[:, 0]
    if x.ndim == 3:
        return x
    raise ValueError(f"expected a (B, 1, H, W) or (B, H, W) map, got {tuple(x.shape)}")
