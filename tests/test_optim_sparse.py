"""Sparse gradients (nn.Embedding(sparse=True)): SGD and Adagrad step like torch.optim on them, only
the rows in the batch move, the sparse-features experiment shows AdaGrad's point, and the combinations
torch refuses are one-line config errors before training."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dlexp.data import load_splits
from dlexp.optim import OPTIMIZERS
from dlexp.train import train


# bit-level claims: one torch thread (conftest.one_thread says why)
pytestmark = pytest.mark.usefixtures("one_thread")


class Bag(nn.Module):
    """A toy embedding model: a bag of ids -> a sum of embeddings -> a linear readout."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(50, 4, sparse=True).to(dtype)
        self.out = nn.Linear(4, 1).to(dtype)

    def forward(self, ids):
        return self.out(self.emb(ids).sum(dim=1))


SPARSE_CASES = [
    ("sgd", dict(lr=0.1)),
    ("sgd", dict(lr=0.1, momentum=0.9)),
    ("sgd", dict(lr=0.1, momentum=0.9, nesterov=True, maximize=True)),
    ("adagrad", dict(lr=0.1)),
    ("adagrad", dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1, eps=1e-6)),
    ("adagrad", dict(lr=0.1, maximize=True)),
]


@pytest.mark.parametrize("foreach", [None, False], ids=["default", "per_tensor"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize(("name", "kwargs"), SPARSE_CASES, ids=lambda v: v if isinstance(v, str) else "-".join(v))
def test_sparse_embedding_steps_match_torch_bit_for_bit(name, kwargs, dtype, foreach):
    """nn.Embedding(sparse=True) trained 30 steps on random bags (ids repeat within a batch, so the
    gradient is uncoalesced) by dlexp and by torch.optim: parameters and state bit-identical."""
    spec = OPTIMIZERS[name]
    ours, theirs = Bag(dtype), Bag(dtype)
    opt_d = spec.cls(ours.parameters(), foreach=foreach, **kwargs)
    opt_t = spec.torch_cls(theirs.parameters(), foreach=foreach, **kwargs)
    gen = torch.Generator().manual_seed(1)
    for _ in range(30):
        ids = torch.randint(0, 50, (8, 3), generator=gen)
        target = torch.randn(8, 1, generator=gen, dtype=dtype)
        for model, opt in ((ours, opt_d), (theirs, opt_t)):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(ids), target)
            (-loss if kwargs.get("maximize") else loss).backward()
            assert model.emb.weight.grad.is_sparse
            opt.step()
    for p, q in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(p, q)
        for k, v in opt_t.state[q].items():
            mine = opt_d.state[p][k]
            assert mine.is_sparse == v.is_sparse and torch.equal(mine.to_dense(), v.to_dense()), k


def test_adagrad_moves_only_the_rows_of_the_batch_and_rare_rows_take_larger_steps():
    """d2l 12.7: AdaGrad's step for a feature is lr * g / sqrt(sum of its squared gradients): a row
    seen once moves by ~lr, a row seen in every step by ~lr / sqrt(t)."""
    emb = nn.Embedding(10, 1, sparse=True)
    nn.init.zeros_(emb.weight)
    opt = OPTIMIZERS["adagrad"].cls(emb.parameters(), lr=0.1)
    for t in range(25):
        opt.zero_grad()
        ids = torch.tensor([0, 1]) if t == 24 else torch.tensor([0])  # row 0 every step, row 1 once
        emb(ids).sum().backward()
        opt.step()
    w = emb.weight.detach().flatten()
    assert torch.equal(w[2:], torch.zeros(8))  # never in a batch: untouched, state too
    assert torch.equal(opt.state[emb.weight]["sum"][2:], torch.zeros(8, 1))
    step_rare = -w[1].item()  # one step, sum = 1: exactly lr (eps aside)
    step_frequent = -(w[0].item() - sum(-0.1 / (t + 1) ** 0.5 for t in range(24)))  # its 25th step
    assert step_rare == pytest.approx(0.1, rel=1e-6)
    assert step_frequent == pytest.approx(0.1 / 25**0.5, rel=1e-5)


def test_weight_decay_with_a_sparse_gradient_is_refused_as_torch_refuses_it():
    for name in ("sgd", "adagrad"):
        emb = nn.Embedding(5, 2, sparse=True)
        opt = OPTIMIZERS[name].cls(emb.parameters(), lr=0.1, weight_decay=0.1)
        emb(torch.tensor([1, 2])).sum().backward()
        with pytest.raises(RuntimeError, match="weight_decay option is not compatible with sparse gradients"):
            opt.step()


def test_optimizers_without_sparse_support_refuse_with_torchs_message():
    for name, message in (("adam", "Adam does not support sparse gradients"), ("rmsprop", "RMSprop does not support"),
                          ("adadelta", "Adadelta does not support"), ("adamw", "Adam does not support")):
        emb = nn.Embedding(5, 2, sparse=True)
        opt = OPTIMIZERS[name].cls(emb.parameters())
        emb(torch.tensor([1, 2])).sum().backward()
        with pytest.raises(RuntimeError, match=message):
            opt.step()
        assert OPTIMIZERS[name].sparse is False


# --- the experiment and its config ---------------------------------------------------------------


def _test_mse(make_cfg, *overrides):
    cfg = make_cfg("experiment=sparse_adagrad", "dataset.num_train=4000", "dataset.num_test=1000",
                   "dataset.num_features=500", "trainer.epochs=2", "trainer.batch_size=64", *overrides)
    result = train(cfg, load_splits(cfg.dataset))
    assert result.status == "ok", result.reason
    return next(r["value"] for r in reversed(result.records) if (r["split"], r["metric"]) == ("test", "loss"))


def test_adagrad_beats_sgd_at_its_best_lr_on_sparse_features(make_cfg):
    """The experiment's point, small: SGD at 0.1 (larger rates diverge: the frequent features set the
    limit) against AdaGrad at 0.3; both on sparse gradients."""
    sgd = min(_test_mse(make_cfg, "optimizer=sgd", f"optimizer.lr={lr}") for lr in (0.03, 0.1))
    adagrad = _test_mse(make_cfg)
    assert adagrad < 0.5 * sgd, (adagrad, sgd)


SMALL_SPARSE = ["dataset.num_train=200", "dataset.num_test=50"]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ([*SMALL_SPARSE, "optimizer=adam"], "model.sparse=true: optimizer=adam does not take sparse gradients"),
        ([*SMALL_SPARSE, "optimizer.weight_decay=0.01"], "optimizer.weight_decay: weight_decay_mode=coupled"),
        ([*SMALL_SPARSE, "optimizer.fused=true"], "optimizer.fused=true"),
        ([*SMALL_SPARSE, "model=mlp"], "model=mlp: the data set's samples are feature ids"),
        (["dataset=digits"], "Interpolation key 'dataset.num_features' not found"),
    ],
)
def test_combinations_torch_refuses_are_one_line_exit_2_before_training(cli, tmp_path, overrides, key):
    res = cli("run", "-q", "experiment=sparse_adagrad", *overrides, f"results_dir={tmp_path}")
    assert res.exit_code == 2, res.output
    assert len(res.stderr.strip().splitlines()) == 1 and key in res.stderr, res.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_decoupled_and_loss_decay_train_a_sparse_model(make_cfg):
    for mode in ("decoupled", "loss"):
        cfg = make_cfg("experiment=sparse_adagrad", "dataset.num_train=500", "dataset.num_test=100",
                       "optimizer.weight_decay=0.01", f"optimizer.weight_decay_mode={mode}")
        result = train(copy.deepcopy(cfg), load_splits(cfg.dataset))
        assert result.status == "ok", (mode, result.reason)
