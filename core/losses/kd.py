"""KD-MSI losses: teacher classification, teacher CAM, and CAM-to-student distillation.

All maps are [B, 1, h, w] logit maps G produced by `SiameseCAMNet`; labels are [B] in {0, 1}.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CAM_EPS = 1e-5
DEFAULT_KD_WEIGHT = 10.0


def cam(g: torch.Tensor) -> torch.Tensor:
    """Class activation map: ReLU(g) / (max over each image of ReLU(g) + 1e-5).

    g: [B, 1, h, w] -> [B, 1, h, w] in [0, 1); an all-non-positive map stays all zero.
    """
    r = F.relu(g)
    peak = r.flatten(1).amax(dim=1).view(-1, *([1] * (g.dim() - 1)))
    return r / (peak + CAM_EPS)


def image_logit(g: torch.Tensor) -> torch.Tensor:
    """Global average pooling of the logit map: [B, 1, h, w] -> [B] image-level change logits."""
    return g.mean(dim=(1, 2, 3))


def classification_loss(g_teacher: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits of GAP(G_teacher) against the image labels [B] (1 = changed)."""
    return F.binary_cross_entropy_with_logits(image_logit(g_teacher), labels.float())


def distillation_target(g_teacher: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Detached teacher CAM times the image label, so unchanged pairs get an all-zero target.

    g_teacher: [B, 1, h, w], labels: [B] -> [B, 1, h, w].
    """
    return cam(g_teacher.detach()) * labels.float().view(-1, 1, 1, 1)


def distillation_loss(
    g_teacher: torch.Tensor, g_student: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Mean squared error between the teacher's (masked, detached) CAM and sigmoid(G_student)."""
    return F.mse_loss(torch.sigmoid(g_student), distillation_target(g_teacher, labels))


def kd_loss(
    g_teacher: torch.Tensor,
    g_student: torch.Tensor,
    labels: torch.Tensor,
    kd_weight: float = DEFAULT_KD_WEIGHT,
) -> dict[str, torch.Tensor]:
    """The joint objective L = L_cls + kd_weight * L_kd (the student has no classification loss).

    Returns a dict with ``total``, ``cls`` and ``kd`` (scalars; ``total`` carries the gradient).
    """
    l_cls = classification_loss(g_teacher, labels)
    l_kd = distillation_loss(g_teacher, g_student, labels)
    return {"total": l_cls + kd_weight * l_kd, "cls": l_cls, "kd": l_kd}
