import math

import torch

from kdmsi.losses.kd import (
    cam,
    classification_loss,
    distillation_loss,
    distillation_target,
    image_logit,
    kd_loss,
)


def test_cam_normalises_each_image_by_its_own_peak():
    g = torch.tensor([[[[-1.0, 2.0], [4.0, 0.0]]], [[[0.5, -3.0], [0.25, 0.0]]]])
    out = cam(g)
    expected0 = torch.tensor([[0.0, 2.0], [4.0, 0.0]]) / (4.0 + 1e-5)
    expected1 = torch.tensor([[0.5, 0.0], [0.25, 0.0]]) / (0.5 + 1e-5)
    assert torch.allclose(out[0, 0], expected0)
    assert torch.allclose(out[1, 0], expected1)


def test_cam_of_a_non_positive_map_stays_zero():
    g = -torch.rand(2, 1, 3, 3)
    assert torch.equal(cam(g), torch.zeros_like(g))


def test_classification_loss_is_bce_of_the_global_average():
    g = torch.tensor([[[[1.0, 3.0], [-1.0, 1.0]]], [[[-2.0, -2.0], [-2.0, -2.0]]]])
    assert torch.allclose(image_logit(g), torch.tensor([1.0, -2.0]))
    labels = torch.tensor([1, 0])

    def bce(z, y):
        p = 1 / (1 + math.exp(-z))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    expected = (bce(1.0, 1) + bce(-2.0, 0)) / 2
    assert math.isclose(float(classification_loss(g, labels)), expected, rel_tol=1e-6)


def test_distillation_target_is_zero_for_unchanged_pairs_and_detached():
    g_t = torch.randn(2, 1, 4, 4, requires_grad=True)
    target = distillation_target(g_t, torch.tensor([1.0, 0.0]))
    assert not target.requires_grad
    assert torch.equal(target[1], torch.zeros(1, 4, 4))
    assert torch.allclose(target[0], cam(g_t.detach())[0])


def test_distillation_loss_hand_computed():
    g_t = torch.tensor([[[[2.0, 0.0]]]])  # CAM = [2/(2+eps), 0]
    g_s = torch.tensor([[[[0.0, 0.0]]]])  # sigmoid = [0.5, 0.5]
    c = 2.0 / (2.0 + 1e-5)
    expected = ((0.5 - c) ** 2 + 0.5**2) / 2
    assert math.isclose(
        float(distillation_loss(g_t, g_s, torch.tensor([1]))), expected, rel_tol=1e-6
    )
    # unchanged: the target is all zero
    assert math.isclose(float(distillation_loss(g_t, g_s, torch.tensor([0]))), 0.25, rel_tol=1e-6)


def test_total_loss_is_cls_plus_lambda_kd_and_only_the_student_learns_from_kd():
    g_t = torch.randn(3, 1, 4, 4, requires_grad=True)
    g_s = torch.randn(3, 1, 4, 4, requires_grad=True)
    y = torch.tensor([1.0, 0.0, 1.0])
    losses = kd_loss(g_t, g_s, y)
    assert torch.allclose(losses["total"], losses["cls"] + 10.0 * losses["kd"])
    losses["kd"].backward()
    assert g_t.grad is None and g_s.grad is not None
