"""trainer.amp and trainer.compile: off by default, recorded in meta.json, bf16 autocast trains on CPU."""

from __future__ import annotations

import json

import torch

from conftest import run_dirs


def test_amp_and_compile_default_off_and_are_recorded_in_meta(cli, small_overrides, results_dir):
    res = cli("run", "-q", *small_overrides)
    assert res.exit_code == 0, res.output
    meta = json.loads((run_dirs(results_dir)[0] / "meta.json").read_text())
    assert meta["amp"] == "none" and meta["compile"] is False


def test_bf16_autocast_trains_and_differs_from_float32(make_cfg):
    """bf16 changes the arithmetic (so the loss differs from float32) but still learns."""
    from dlexp.data import load_splits
    from dlexp.train import train

    def final_loss(*overrides):
        cfg = make_cfg("trainer.epochs=3", "trainer.batch_size=64", "optimizer=adam", *overrides)
        res = train(cfg, load_splits(cfg.dataset))
        losses = [r["value"] for r in res.records if r["split"] == "train" and r["metric"] == "loss"]
        return losses

    fp32, bf16 = final_loss(), final_loss("trainer.amp=bf16")
    assert bf16[-1] < bf16[0]  # it learns
    assert bf16 != fp32  # and the autocast really ran in bfloat16
    assert abs(bf16[-1] - fp32[-1]) < 0.1 * fp32[-1]  # close to the float32 run


def test_bad_amp_value_is_a_one_line_error(cli, small_overrides, results_dir):
    res = cli("run", *small_overrides, "trainer.amp=fp8")
    assert res.exit_code == 2 and "trainer.amp" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert run_dirs(results_dir) == []


def test_autocast_dtype_is_bfloat16_inside_the_forward(make_cfg):
    from dlexp.train import mixed_precision

    with mixed_precision("bf16", torch.device("cpu"))():
        out = torch.nn.Linear(4, 3)(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16
