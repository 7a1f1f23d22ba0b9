"""A resume puts the optimizer's state where the parameters are: the order of device placement and restore.

The CPU suite has no GPU. `Module.to("cuda")` swaps each parameter's data in place (the optimizer keeps the
same parameter objects), and `Optimizer.load_state_dict` casts the state to each parameter's device *and*
dtype; so a placement to float64 on the CPU behaves as a move to the GPU does. In the old order (restore, then
place) SGD's momentum buffers stay float32 here, as they stayed on the CPU on a GPU worker (`meta` cannot stand
in: moving to it makes new parameter objects).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from acol.config import TrainParams
from acol.distributed.train import _save_checkpoint, _WorkerState, place_and_restore
from acol.models import build_model
from acol.training.engine import build_optimizer, build_scheduler


def _run() -> _WorkerState:
    torch.manual_seed(0)
    model = build_model("small", 4, "acol", head_channels=8)
    optimizer = build_optimizer(model, TrainParams(optimizer="sgd", lr=0.1, momentum=0.9))
    scheduler = build_scheduler(optimizer, TrainParams(epochs=2), 3)
    return _WorkerState(model, optimizer, scheduler, lambda epoch: [], None, torch.device("cpu"), epochs=2)  # type: ignore[arg-type]


def _checkpoint(folder: Path) -> object:
    """A real checkpoint of one SGD step (momentum buffers exist), as rank 0 writes it."""
    from ray.train import Checkpoint

    run = _run()
    images, labels = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
    out = run.model(images, labels)
    loss = nn.functional.cross_entropy(out.logits, labels)
    loss.backward()
    run.optimizer.step()
    run.scheduler.step()
    _save_checkpoint(
        folder, run.model, run.optimizer, run.scheduler, {"epoch": 1, "restarts": 0, "history": []}
    )
    return Checkpoint.from_directory(folder)


def _place(model: nn.Module) -> nn.Module:
    """The stand-in for ``prepare_model``'s move to the GPU: parameters change in place, as for CUDA."""
    return model.to(torch.float64)


def test_optimizer_state_follows_the_parameters_to_their_device(tmp_path: Path) -> None:
    checkpoint = _checkpoint(tmp_path)
    run = _run()
    place_and_restore(run, _place, checkpoint, world_size=1, rank=0)
    buffers = [s["momentum_buffer"] for s in run.optimizer.state.values()]
    assert buffers, "the checkpoint's SGD momentum buffers were not restored"
    assert {b.dtype for b in buffers} == {torch.float64}  # where the parameters are
    assert {p.dtype for p in run.model.parameters()} == {torch.float64}
    restored = torch.load(tmp_path / "optim.pt", weights_only=True)["optimizer"]["state"]
    for index, saved in restored.items():  # the checkpoint's values, not fresh zeros
        torch.testing.assert_close(run.optimizer.state_dict()["state"][index]["momentum_buffer"].float(),
                                   saved["momentum_buffer"])  # fmt: skip
    assert run.start_epoch == 1 and run.restarts == 1
    assert json.loads((tmp_path / "state.json").read_text())["epoch"] == 1


def test_no_checkpoint_only_places_the_model() -> None:
    run = _run()
    place_and_restore(run, _place, None, world_size=1, rank=0)
    assert {p.dtype for p in run.model.parameters()} == {torch.float64}
    assert not run.optimizer.state and run.start_epoch == 0
