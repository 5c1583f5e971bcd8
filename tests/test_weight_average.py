"""The weight average by hand: the TensorFlow ramp, then the set decay."""
import pytest
import torch

from sft.weight_average import WeightAverage


def test_weight_average_by_hand():
    p = torch.nn.Parameter(torch.zeros(2))
    avg = WeightAverage([p], decay=0.2)
    with torch.no_grad():
        p.fill_(1.0)
    avg.update()  # decay min(0.2, 2 / 11) = 0.1818: 0 * 0.1818 + 1 * 0.8182
    assert avg.shadow[0].tolist() == pytest.approx([9 / 11] * 2)
    with torch.no_grad():
        p.fill_(2.0)
    avg.update()  # decay min(0.2, 3 / 12) = 0.2
    assert avg.shadow[0].tolist() == pytest.approx([0.2 * 9 / 11 + 0.8 * 2] * 2)
    assert p.tolist() == [2.0, 2.0]  # the live weights are untouched until copy_to
    avg.copy_to()
    assert p.tolist() == pytest.approx([0.2 * 9 / 11 + 1.6] * 2)
