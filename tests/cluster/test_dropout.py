"""The CPU dropout kernel (cluster.device.dropout) against the rule of inverted dropout."""
import torch

from cluster.device import MASK_LEVELS, dropout


def test_drops_at_rate_p_and_scales_what_it_keeps():
    torch.manual_seed(0)
    x = torch.ones(1_000_000, requires_grad=True)
    y = dropout(x, 0.3, True)
    kept = y != 0
    # 1e6 draws: the share dropped lies within 5 standard errors (0.0023) of p.
    assert abs(1 - kept.float().mean().item() - 0.3) < 0.0023
    scale = MASK_LEVELS / (MASK_LEVELS - round(0.3 * MASK_LEVELS))
    assert torch.allclose(y[kept], torch.full_like(y[kept], scale))
    y.sum().backward()  # the gradient passes through kept units only, with the same scale
    assert torch.equal(x.grad, y.detach())


def test_identity_outside_training_and_at_p_zero():
    x = torch.randn(4, 5)
    assert dropout(x, 0.5, False) is x
    assert torch.equal(dropout(x, 0.0, True), x)


def test_the_mask_follows_torch_seed():
    x = torch.randn(64, 32)
    torch.manual_seed(7)
    first = dropout(x, 0.2, True)
    torch.manual_seed(7)
    assert torch.equal(dropout(x, 0.2, True), first)
    assert not torch.equal(dropout(x, 0.2, True), first)
