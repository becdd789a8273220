"""The engine's bulk CPU dropout: the same distribution as nn.Dropout, replayable from torch's RNG."""

from __future__ import annotations

import torch

from tunery_engine.modeling import CpuDropout, use_cpu_dropout


def test_training_mask_drops_p_and_rescales_the_rest():
    module = CpuDropout(0.1)
    x = torch.ones(64, 32, 384)
    y = module(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.005  # 786k draws: the standard error is 0.0003
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.9))
    assert torch.equal(x, torch.ones_like(x))  # not in place


def test_masks_replay_from_torch_seed_and_differ_between_calls():
    module = CpuDropout(0.3)
    x = torch.randn(8, 40)
    torch.manual_seed(5)
    first, second = module(x), module(x)
    torch.manual_seed(5)
    assert torch.equal(module(x), first)
    assert not torch.equal(first, second)


def test_eval_mode_and_zero_p_are_the_identity():
    x = torch.randn(4, 16)
    assert torch.equal(CpuDropout(0.5).eval()(x), x)
    assert torch.equal(CpuDropout(0.0)(x), x)


def test_switching_a_model_changes_no_weights_and_no_eval_output():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 2), torch.nn.Dropout(0)
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 8)
    expected = model.eval()(x)
    assert use_cpu_dropout(model) == 1  # p == 0 stays a plain nn.Dropout
    assert isinstance(model[1], CpuDropout)
    assert type(model[3]) is torch.nn.Dropout
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert torch.equal(model.eval()(x), expected)
