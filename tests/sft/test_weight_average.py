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


def test_bfloat16_weights_average_in_float32():
    p = torch.nn.Parameter(torch.ones(1, dtype=torch.bfloat16))
    avg = WeightAverage([p], decay=0.999)
    avg.updates = 10_000  # past the ramp: each update moves the average by 0.1% of the gap
    with torch.no_grad():
        p.fill_(2.0)
    for _ in range(100):
        avg.update()  # in bfloat16, 1 + 0.001 rounds back to 1 every time
    assert avg.shadow[0].dtype == torch.float32
    assert avg.shadow[0].item() == pytest.approx(2 - 0.999 ** 100)
    avg.copy_to()
    assert p.dtype == torch.bfloat16 and p.item() == pytest.approx(2 - 0.999 ** 100, rel=0.01)


def test_swapped_in_lends_the_average_and_gives_the_trained_weights_back():
    p = torch.nn.Parameter(torch.zeros(2))
    avg = WeightAverage([p], decay=0.5)
    with torch.no_grad():
        p.fill_(1.0)
    avg.update()  # decay min(0.5, 2 / 11): shadow 9 / 11
    with avg.swapped_in():
        assert p.tolist() == pytest.approx([9 / 11] * 2)
    assert p.tolist() == [1.0, 1.0]
