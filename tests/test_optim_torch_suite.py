"""`dlexp check-optimizers --suite torch`: PyTorch's own optimizer test inputs (torch's optim_db and
the generic behaviours of its test_optim.py) run against dlexp, case by case.

Importing torch's `common_optimizers` takes 5-15 s (it loads dynamo); it happens once per module.
The fast test runs every optim_db sample (fused=True ones included: dlexp's fused kernels are built
once per machine, see tests/test_optim_fused.py) in float32 and complex64, every error input, and the
deliberate differences; the slow one runs the whole suite.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import typer
from typer.testing import CliRunner

from dlexp.cli.check_optimizers import check_optimizers as check_optimizers_command
from dlexp.optim import OPTIMIZERS, SGD, Adam
from dlexp.optim import suite


@pytest.fixture(scope="module")
def co():
    return suite.load_optim_db()


def _mismatches(rows) -> str:
    return "\n".join(f"{r.optimizer} {r.case} {r.dtype} {r.variant}: {r.note}" for r in rows if r.verdict == "MISMATCH")


def test_every_optim_db_sample_and_error_input_agrees_with_torch(co):
    rows = []
    for name in OPTIMIZERS:
        rows += suite.parity_rows(co, name, dtypes=(torch.float32, torch.complex64))
        rows += suite.error_rows(co, name)
        rows += suite.deliberate_rows(name)
    assert not _mismatches(rows), _mismatches(rows)
    # not vacuous: every optimizer has samples and error inputs, and most samples are bit for bit
    parity = [r for r in rows if r.case == "step_parity"]
    assert {r.optimizer for r in parity} == set(OPTIMIZERS) == {r.optimizer for r in rows if r.case == "errors"}
    assert len(parity) > 200 and sum(r.max_diff == 0.0 for r in parity) > 0.6 * len(parity)
    deliberate = [r for r in rows if r.verdict == "deliberate"]
    assert deliberate and all(r.note for r in deliberate)
    assert any("fused=True" in r.variant and r.verdict == "ok" for r in parity)


@pytest.mark.slow
def test_the_whole_torch_suite_agrees_with_torch(co):
    rows = suite.run_suite()
    assert not _mismatches(rows), _mismatches(rows)
    cases = {r.case for r in rows}
    for case in ("state_dict_round_trip_torch_dlexp_torch", "hooks", "deepcopy_copies_all_public_attrs",
                 "lr_schedulers", "step_is_noop_without_or_with_zero_grads", "add_param_group", "tensor_lr",
                 "complex_2d", "rosenbrock_sparse", "load_nontensor_step", "can_load_older_state_dict"):
        assert case in cases, case


class _Drifting(Adam):
    """A wrong Adam: its first parameter drifts by one part in 1e9 per step."""

    def step(self, closure=None):
        loss = super().step(closure)
        with torch.no_grad():
            self.param_groups[0]["params"][0].mul_(1 + 1e-9)
        return loss


class _Lax(SGD):
    """A wrong SGD: accepts a negative momentum (torch raises)."""

    def __init__(self, params, lr=1e-3, momentum=0, *args, **kwargs):
        super().__init__(params, lr, abs(momentum), *args, **kwargs)


def test_the_suite_catches_a_drifting_rule_and_a_missing_error(co, monkeypatch):
    monkeypatch.setitem(OPTIMIZERS, "adam", dataclasses.replace(OPTIMIZERS["adam"], cls=_Drifting))
    rows = suite.parity_rows(co, "adam", dtypes=(torch.float64,), fused=False)
    # every case is caught (the differentiable ones have a deliberate 1e-6 bound: 7e-9 is below it)
    assert all(r.verdict == "MISMATCH" for r in rows if "differentiable=True" not in r.variant)
    monkeypatch.setitem(OPTIMIZERS, "sgd", dataclasses.replace(OPTIMIZERS["sgd"], cls=_Lax))
    errors = {r.variant: r for r in suite.error_rows(co, "sgd")}
    assert errors["momentum should be between 0 and 1"].verdict == "MISMATCH"
    assert "Invalid momentum value: -0.5" in errors["momentum should be between 0 and 1"].note


def _app():
    app = typer.Typer()
    app.command()(check_optimizers_command)
    return app


def test_suite_torch_command_prints_a_row_per_case_and_a_summary(monkeypatch):
    real = suite.run_suite
    monkeypatch.setattr(suite, "run_suite", lambda names, **kw: real(names, fused=False, behaviours=False))
    result = CliRunner().invoke(_app(), ["--suite", "torch", "--only", "sgd"])
    assert result.exit_code == 0, result.output
    assert "step_parity" in result.output and "errors" in result.output
    assert "MISMATCH" not in result.output.replace("0 MISMATCH", "")
    summary = result.output.strip().splitlines()[-1]
    assert summary.endswith("0 MISMATCH") and " ok (" in summary


def test_suite_torch_command_exits_1_on_a_mismatch(monkeypatch):
    real = suite.run_suite
    monkeypatch.setattr(suite, "run_suite", lambda names, **kw: real(names, fused=False, behaviours=False))
    monkeypatch.setitem(OPTIMIZERS, "adam", dataclasses.replace(OPTIMIZERS["adam"], cls=_Drifting))
    result = CliRunner().invoke(_app(), ["--suite", "torch", "--only", "adam"])
    assert result.exit_code == 1
    assert "MISMATCH" in result.output


def test_suite_and_only_options_refuse_bad_values():
    for args in (["--suite", "nope"], ["--only", "adamx"], ["--suite", "torch", "--device", "cuda"]):
        result = CliRunner().invoke(_app(), args)
        assert result.exit_code == 2, args
