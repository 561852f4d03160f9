"""The one training loop (`kdmsi.training.loop.run_epochs`) with a toy method: what it owns
(schedule, records, selection, cancel, progress) is tested here once for the three methods."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from kdmsi.progress import Cancelled
from kdmsi.training.common import make_optimizer
from kdmsi.training.loop import LAST_EPOCH, run_epochs


class Toy:
    """Fits y = 3x with one weight; scores epochs by a fixed list (to test the selection)."""

    name = "toy"
    step_keys = ("mse",)

    def __init__(self, scores=None, skip_all=False):
        self.net = torch.nn.Linear(1, 1, bias=False)
        self.networks = [self.net]
        self.scores, self.skip_all, self.epochs_begun, self.weights = scores, skip_all, [], []

    def begin_epoch(self, epoch):
        self.epochs_begun.append(epoch)

    def step(self, batch):
        if self.skip_all:
            return None
        x, y = batch
        loss = torch.mean((self.net(x) - y) ** 2)
        return loss, {"mse": loss, "half": loss / 2}

    def score(self, record):
        self.weights.append(float(self.net.weight.detach()))
        if self.scores is None:
            return None
        record["toy_score"] = self.scores[record["epoch"] - 1]
        return record["toy_score"]


def _run(method, epochs=3, **kw):
    x = torch.linspace(-1, 1, 12)[:, None]
    loader = DataLoader(TensorDataset(x, 3 * x), batch_size=4)
    groups = [{"params": list(method.net.parameters()), "lr": 0.1, "base_lr": 0.1}]
    optimizer = make_optimizer(groups, "sgd", 0.5, 0.0)
    return run_epochs(method, loader, optimizer, epochs=epochs, channels_last=False, **kw)


def test_the_loop_records_steps_epochs_and_keeps_the_best_epoch():
    method = Toy(scores=[0.1, 0.9, 0.5])
    messages = []
    result = _run(method, criterion="toy_score", progress=lambda f, m: messages.append((f, m)))
    assert method.epochs_begun == [1, 2, 3]
    assert [s["step"] for s in result.steps] == list(range(1, 10))
    assert set(result.steps[0]) == {"step", "epoch", "mse"}  # only the method's step keys
    assert result.steps[-1]["epoch"] == pytest.approx(3.0)
    assert result.history[0]["train_half"] == pytest.approx(result.history[0]["train_mse"] / 2)
    assert result.history[-1]["train_mse"] < result.history[0]["train_mse"]
    assert result.selection == {"criterion": "toy_score", "epoch": 2, "value": 0.9}
    assert float(method.net.weight.detach()) == method.weights[1]  # the best epoch's weights
    assert not method.net.training
    assert messages[0][1] == "toy epoch 1/3, tile 4/12: loss " + messages[0][1].split()[-1]
    assert messages[-1][0] == pytest.approx(1.0) and messages[-1][1].startswith("toy epoch 3/3:")


def test_without_a_score_the_last_epoch_is_kept():
    method = Toy()
    result = _run(method, criterion=LAST_EPOCH)
    assert result.selection == {"criterion": LAST_EPOCH, "epoch": 3, "value": None}
    assert float(method.net.weight.detach()) == method.weights[-1]


def test_the_loop_cancels_and_refuses_to_run_no_step():
    with pytest.raises(Cancelled):
        _run(Toy(), criterion=LAST_EPOCH, cancelled=lambda: True)
    with pytest.raises(ValueError, match="no training step ran"):
        _run(Toy(skip_all=True), criterion=LAST_EPOCH)
