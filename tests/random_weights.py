"""Random weights for the ADL and SPG oracle tests: one helper, so both fill a model the same way."""

from __future__ import annotations

import torch


def randomize(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """He-scaled conv weights, BN scales and running variances in [0.5, 1.5), small biases and means; loads
    them into `module` and returns the state dict (BN's batch counters kept)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in module.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = value
        elif key.endswith("running_var") or (value.dim() == 1 and key.endswith("weight")):
            state[key] = 0.5 + torch.rand(value.shape, generator=generator)
        elif value.dim() == 1:
            state[key] = 0.1 * torch.randn(value.shape, generator=generator)
        else:
            state[key] = torch.randn(value.shape, generator=generator) * (2.0 / value[0].numel()) ** 0.5
    module.load_state_dict(state)
    return state
