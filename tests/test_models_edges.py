"""Edge maps (§3.5 Eq. 6-8, Supplement A Eq. 10-12)."""
import math

import pytest
import torch

from models.edges import EdgeMap, edge_map, edge_map_dense


def test_parameters_start_as_in_supplement_a():
    e = EdgeMap(((0, 1),), 32)
    assert math.isclose(e.sigma2.item(), math.exp(1.0) / 1000, rel_tol=1e-6)     # Eq. 11, theta = 1
    assert math.isclose(e.alpha.item(), math.log1p(math.exp(-4.0)), rel_tol=1e-6)  # Eq. 12, gamma = -4


@pytest.mark.parametrize("certain", [True, False])
def test_edge_map_equals_the_closed_form_on_a_known_segment(certain):
    R = 32
    ka, kb = (-0.5, -0.25), (0.5, 0.25)
    va, vb = 2.0, -1.0
    sigma2, alpha = torch.tensor(0.01), torch.tensor(0.7)
    kp = torch.tensor([[ka, kb]])
    v = None if certain else torch.tensor([[va, vb]])
    S = edge_map(kp, v, torch.tensor([[0, 1]]), sigma2, alpha, R)[0, 0]
    ab = (kb[0] - ka[0], kb[1] - ka[1])
    for row, col in [(0, 0), (16, 16), (8, 3), (20, 27), (31, 31), (16, 2), (12, 28)]:
        px, py = 2 * (col + 0.5) / R - 1, 2 * (row + 0.5) / R - 1
        t = ((px - ka[0]) * ab[0] + (py - ka[1]) * ab[1]) / (ab[0] ** 2 + ab[1] ** 2)
        t = min(max(t, 0.0), 1.0)                                       # Eq. 7 / 10's three cases
        qx, qy = ka[0] + t * ab[0], ka[1] + t * ab[1]
        d2 = (px - qx) ** 2 + (py - qy) ** 2
        strength = 1.0 if certain else 1 / (1 + math.exp(-((1 - t) * va + t * vb)))
        expected = 0.7 * strength * math.exp(-d2 / 0.01)
        assert math.isclose(S[row, col].item(), expected, rel_tol=1e-5, abs_tol=1e-7), (row, col)


def test_uncertain_keypoints_draw_fainter_edges():
    kp = torch.tensor([[[-0.5, 0.0], [0.5, 0.0]]])
    links, s2, a = torch.tensor([[0, 1]]), torch.tensor(0.05), torch.tensor(1.0)
    sure = edge_map(kp, torch.tensor([[6.0, 6.0]]), links, s2, a, 32)
    unsure = edge_map(kp, torch.tensor([[-6.0, -6.0]]), links, s2, a, 32)
    assert sure.max() > 0.95 and unsure.max() < 0.01
    assert (unsure <= sure).all()


def test_fused_edge_map_matches_the_dense_max_in_value_and_gradient():
    torch.manual_seed(0)
    links = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 0], [0, 2], [4, 5], [5, 1]])
    kp = (torch.rand(3, 6, 2) * 1.6 - 0.8).requires_grad_()
    v = torch.randn(3, 6).requires_grad_()
    theta, gamma = torch.tensor(1.5, requires_grad=True), torch.tensor(-1.0, requires_grad=True)
    outs = []
    for fn in (edge_map, edge_map_dense):
        kwargs = {"chunk": 3} if fn is edge_map else {}
        S = fn(kp, v, links, torch.exp(theta) / 1000, torch.nn.functional.softplus(gamma), 24, **kwargs)
        w = torch.linspace(0, 1, S.numel()).reshape(S.shape)                       # any upstream gradient
        grads = torch.autograd.grad((S * w).sum(), (kp, v, theta, gamma))
        outs.append((S.detach(), grads))
    (S1, g1), (S2, g2) = outs
    assert torch.allclose(S1, S2, atol=1e-6)
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    assert all(g.abs().sum() > 0 for g in g1)


def test_edge_module_renders_at_its_resolution():
    e = EdgeMap(((0, 1), (1, 2)), 16)
    out = e(torch.zeros(2, 3, 2), None)
    assert out.shape == (2, 1, 16, 16)
    assert torch.isfinite(out).all()                 # coincident keypoints: a point, not a division by zero
