"""Hierarchical correlation distillation (HiCD): correlation matrices and their losses.

Follows the description of "HiCD: Change Detection in Quality-Varied Images via Hierarchical
Correlation Distillation" (arXiv 2401.10752); its code and equations were not available, so
each choice below is a named option of `HiCDLossConfig`. A student `SiameseDeepLabV3Plus`
sees (before, degraded after), a frozen teacher of the same architecture sees (before, clean
after) of the same tile, and the student is asked to reproduce the teacher's *pixel
correlations* rather than its features one by one:

* SFD (semantic feature distillation), on the encoder stages in ``stages`` (``low`` = layer1,
  stride 4; ``high`` = layer4, stride 16):
  - self-correlation: the cosine similarity of every position of the after image's feature map
    with every other position (`self_correlation`), the student's degraded-image matrix
    matched to the teacher's clean-image one;
  - cross-correlation: positions of the before-image features against positions of the
    after-image features (`cross_correlation`), matched between student and teacher.
* CFD (change feature distillation): the self-correlation of the fused change features that
  enter the decoder (`DetectorFeatures.change`).
* Global correlation: ``global_pixels`` positions are sampled per image of the batch from the
  change features (the same positions for both networks); each network's sampled embeddings
  are correlated with the *teacher's* embeddings of the whole batch plus a bounded FIFO queue of
  recent teacher embeddings (`EmbeddingQueue`), and the two matrices are matched.

Matching (``distance``): ``mse`` = mean squared difference of the matrices; ``kl`` = mean over
rows of KL(softmax(teacher / tau) || softmax(student / tau)). Both are 0 for identical inputs.

Memory is bounded whatever the tile size: feature maps are average-pooled to at most
``max_side`` x ``max_side`` positions before any correlation (so a matrix holds at most
B x max_side^4 values: 16 x 1024 x 1024 float32 = 64 MiB at the default 32 and batch 16), the
global term uses B x ``global_pixels`` sampled positions against at most B x global_pixels +
``queue_size`` keys, the queue holds detached tensors only, and the teacher runs under
``torch.no_grad()`` (the caller's job; `HiCDLoss` detaches the teacher's tensors anyway).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..models import DetectorFeatures

MAX_SIDE = 32
STAGES = ("low", "high")
DISTANCES = ("mse", "kl")
_EPS = 1e-8


def pool_positions(x: torch.Tensor, max_side: int = MAX_SIDE) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, min(H, max_side), min(W, max_side)] by adaptive average pooling."""
    if max_side < 1:
        raise ValueError(f"max_side must be positive, got {max_side}")
    size = (min(x.shape[-2], max_side), min(x.shape[-1], max_side))
    return x if tuple(x.shape[-2:]) == size else F.adaptive_avg_pool2d(x, size)


def unit_positions(x: torch.Tensor, max_side: int = MAX_SIDE) -> torch.Tensor:
    """[B, C, H, W] -> [B, N, C]: the pooled positions' feature vectors, L2-normalised over C.

    N = min(H, max_side) * min(W, max_side). All-zero vectors stay zero (similarity 0).
    """
    pooled = pool_positions(x, max_side)
    return F.normalize(pooled.flatten(2).transpose(1, 2), dim=-1, eps=_EPS)


def self_correlation(x: torch.Tensor, max_side: int = MAX_SIDE) -> torch.Tensor:
    """[B, C, H, W] -> [B, N, N] cosine similarity between all pooled positions of each map."""
    u = unit_positions(x, max_side)
    return u @ u.transpose(1, 2)


def cross_correlation(a: torch.Tensor, b: torch.Tensor, max_side: int = MAX_SIDE) -> torch.Tensor:
    """a [B, C, H, W], b [B, C, H', W'] -> [B, N_a, N_b]: cosine similarity of every pooled
    position of `a` (e.g. the before image) with every pooled position of `b` (the after)."""
    return unit_positions(a, max_side) @ unit_positions(b, max_side).transpose(1, 2)


def correlation_distance(
    student: torch.Tensor, teacher: torch.Tensor, distance: str = "mse", tau: float = 0.1
) -> torch.Tensor:
    """Scalar distance between correlation matrices [..., N, M] of the same shape.

    ``mse``: mean of (student - teacher)^2. ``kl``: mean over rows of
    sum_j p_j (log p_j - log q_j), p = softmax(teacher / tau), q = softmax(student / tau).
    The teacher side is detached.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"correlation shapes differ: {tuple(student.shape)} vs {teacher.shape}")
    teacher = teacher.detach()
    if distance == "mse":
        return F.mse_loss(student, teacher)
    if distance == "kl":
        log_q = F.log_softmax(student / tau, dim=-1)
        log_p = F.log_softmax(teacher / tau, dim=-1)
        return (log_p.exp() * (log_p - log_q)).sum(dim=-1).mean()
    raise ValueError(f"unknown correlation distance {distance!r}; choose one of {DISTANCES}")


def sample_positions(
    batch: int, positions: int, count: int, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """[batch, min(count, positions)] flat position indices, distinct within each image."""
    count = min(count, positions)
    return torch.stack(
        [torch.randperm(positions, generator=generator)[:count] for _ in range(batch)]
    )


def pixel_embeddings(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [B, C, H, W], index [B, P] flat positions -> unit embeddings [B * P, C]."""
    flat = x.flatten(2)  # [B, C, H*W]
    picked = flat.gather(2, index.to(x.device)[:, None, :].expand(-1, x.shape[1], -1))
    return F.normalize(picked.transpose(1, 2).reshape(-1, x.shape[1]), dim=-1, eps=_EPS)


class EmbeddingQueue:
    """A FIFO of at most `size` detached teacher embeddings [<= size, D]."""

    def __init__(self, size: int):
        if size < 0:
            raise ValueError(f"queue size must be >= 0, got {size}")
        self.size = size
        self._keys: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return 0 if self._keys is None else int(self._keys.shape[0])

    def keys(self) -> Optional[torch.Tensor]:
        """The stored embeddings [n, D], newest first, or None when empty."""
        return self._keys

    def push(self, embeddings: torch.Tensor) -> None:
        """Add embeddings [M, D] (detached); the oldest beyond `size` are dropped."""
        if self.size == 0:
            return
        new = embeddings.detach()
        merged = new if self._keys is None else torch.cat([new, self._keys], dim=0)
        self._keys = merged[: self.size].clone()


def global_correlation(
    student: torch.Tensor, teacher: torch.Tensor, queue: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit embeddings student [M, D], teacher [M, D] (same pixels), queue [Q, D] or None ->
    (student @ K^T, teacher @ K^T), each [M, M + Q], with keys K = [teacher; queue]."""
    teacher = teacher.detach()
    keys = teacher if queue is None else torch.cat([teacher, queue.to(teacher)], dim=0)
    return student @ keys.T, teacher @ keys.T


def relative_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """mean((student - teacher)^2) / mean(teacher^2): feature MSE, free of the feature scale."""
    teacher = teacher.detach()
    return F.mse_loss(student, teacher) / (teacher.pow(2).mean() + _EPS)


def _stage(features: DetectorFeatures, stage: str, date: str) -> torch.Tensor:
    return getattr(features, f"{stage}_{date}")


@dataclass
class HiCDLossConfig:
    """Options of the HiCD distillation terms (see the module docstring).

    Total distillation loss: lambda_sfd * L_SFD + lambda_cfd * L_CFD + lambda_global * L_global,
    with L_SFD the mean over ``stages`` of (self term + cross term) for the enabled terms.
    The default weights (MSE distance) were chosen on synthetic validation scenes
    (`bench/hicd.py --tune`): at the start of training they give each term a gradient of the
    order of the cross-entropy's, scaled by 0.3, the best of x0.1 / x0.3 / x1. The
    self term covers the after image (``self_dates=("post",)``, the paper's description);
    ``("pre", "post")`` also matches the (clean for both networks) before image's.
    """

    stages: tuple[str, ...] = STAGES
    self_dates: tuple[str, ...] = ("post",)
    use_self: bool = True
    use_cross: bool = True
    use_cfd: bool = True
    use_global: bool = True
    distance: str = "mse"
    tau: float = 0.1
    max_side: int = MAX_SIDE
    lambda_sfd: float = 15.0
    lambda_cfd: float = 1.5
    lambda_global: float = 3.0
    global_pixels: int = 16
    queue_size: int = 1024

    def validate(self) -> HiCDLossConfig:
        unknown = sorted(set(self.stages) - set(STAGES))
        if unknown or not self.stages:
            raise ValueError(f"unknown HiCD stages {unknown or '()'}; choose from {STAGES}")
        if not self.self_dates or not set(self.self_dates) <= {"pre", "post"}:
            raise ValueError(f"self_dates must be 'pre' and/or 'post', not {self.self_dates}")
        if self.distance not in DISTANCES:
            raise ValueError(f"unknown HiCD distance {self.distance!r}; choose one of {DISTANCES}")
        if self.tau <= 0:
            raise ValueError(f"tau must be positive, got {self.tau}")
        if self.max_side < 1 or self.global_pixels < 1 or self.queue_size < 0:
            raise ValueError("max_side and global_pixels must be >= 1, queue_size >= 0")
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stages"], d["self_dates"] = list(self.stages), list(self.self_dates)
        return d


class HiCDLoss:
    """The HiCD distillation terms between a student's and a teacher's `DetectorFeatures`.

    Call with the student's features (with grad) and the teacher's (computed under no_grad)
    for the same tiles; returns a dict of scalar tensors: one per enabled term (``sfd_self``,
    ``sfd_cross``, ``cfd``, ``global``) and ``total`` (the weighted sum). The global term's
    queue is updated with the teacher's sampled embeddings after each call.
    """

    def __init__(self, config: Optional[HiCDLossConfig] = None):
        self.config = (config or HiCDLossConfig()).validate()
        self.queue = EmbeddingQueue(self.config.queue_size)

    def _distance(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return correlation_distance(student, teacher, self.config.distance, self.config.tau)

    def __call__(
        self,
        student: DetectorFeatures,
        teacher: DetectorFeatures,
        generator: Optional[torch.Generator] = None,
    ) -> dict[str, torch.Tensor]:
        c, side = self.config, self.config.max_side
        terms: dict[str, torch.Tensor] = {}
        if c.use_self:
            terms["sfd_self"] = sum(
                self._distance(
                    self_correlation(_stage(student, s, d), side),
                    self_correlation(_stage(teacher, s, d).detach(), side),
                )
                for s in c.stages
                for d in c.self_dates
            ) / (len(c.stages) * len(c.self_dates))
        if c.use_cross:
            terms["sfd_cross"] = sum(
                self._distance(
                    cross_correlation(_stage(student, s, "pre"), _stage(student, s, "post"), side),
                    cross_correlation(
                        _stage(teacher, s, "pre").detach(),
                        _stage(teacher, s, "post").detach(),
                        side,
                    ),
                )
                for s in c.stages
            ) / len(c.stages)
        if c.use_cfd:
            terms["cfd"] = self._distance(
                self_correlation(student.change, side),
                self_correlation(teacher.change.detach(), side),
            )
        if c.use_global:
            s_map = pool_positions(student.change, side)
            t_map = pool_positions(teacher.change.detach(), side)
            index = sample_positions(
                s_map.shape[0], s_map.shape[-2] * s_map.shape[-1], c.global_pixels, generator
            )
            s_emb, t_emb = pixel_embeddings(s_map, index), pixel_embeddings(t_map, index)
            s_corr, t_corr = global_correlation(s_emb, t_emb, self.queue.keys())
            terms["global"] = self._distance(s_corr, t_corr)
            self.queue.push(t_emb)
        device = student.logits.device
        total = torch.zeros((), device=device)
        sfd = [terms[k] for k in ("sfd_self", "sfd_cross") if k in terms]
        if sfd:
            total = total + c.lambda_sfd * sum(sfd)
        if "cfd" in terms:
            total = total + c.lambda_cfd * terms["cfd"]
        if "global" in terms:
            total = total + c.lambda_global * terms["global"]
        terms["total"] = total
        return terms


def feature_mse_loss(
    student: DetectorFeatures, teacher: DetectorFeatures, stages: tuple[str, ...] = STAGES
) -> torch.Tensor:
    """The feature-MSE baseline: mean `relative_mse` over the same tensors HiCD looks at
    (before and after features of each stage, and the change features), position by position."""
    pairs = [
        (_stage(student, s, d), _stage(teacher, s, d)) for s in stages for d in ("pre", "post")
    ]
    pairs.append((student.change, teacher.change))
    return sum(relative_mse(s, t) for s, t in pairs) / len(pairs)
