"""`dlexp report --plots trajectory`: contour lines of the objective and each run's path, from the run
folders that `dlexp run` writes; one panel per group and one overlay per function."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from conftest import run_dirs  # noqa: E402
from dlexp import trajectory  # noqa: E402
from dlexp.results import load_metrics, load_runs  # noqa: E402

TWO_D = ["trainer.device=cpu"]


@pytest.fixture(scope="module")
def objective_results(tmp_path_factory):
    """Three groups on the ill-conditioned function (two seeds of the noisy one) and one on rosenbrock."""
    from typer.testing import CliRunner

    from dlexp.cli import app

    root = tmp_path_factory.mktemp("traj") / "results"
    runner = CliRunner()
    for args in (
        ["-m", "experiment=d2l_2d_gd_lr04,d2l_2d_momentum_beta05"],
        ["-m", "experiment=d2l_2d_gd_lr04", "dataset.noise=1", "name=noisy", "seed=0,1"],
        ["experiment=d2l_2d_gd_lr04", "dataset.function=rosenbrock", "optimizer=adam", "optimizer.lr=0.2", "name=rosen"],
    ):
        res = runner.invoke(app, ["run", "-q", *args, *TWO_D, f"results_dir={root}"])
        assert res.exit_code == 0, res.output
    return root


def test_paths_start_at_init_and_follow_the_recorded_points(objective_results):
    metrics = load_metrics(objective_results)
    ps = trajectory.paths(metrics)
    assert len(ps) == 5
    for run_id, p in ps.items():
        assert p.shape == (21, 2) and tuple(p[0]) == (-5.0, -2.0)
        x1 = metrics[(metrics.run_id == run_id) & (metrics.metric == "x1")].sort_values("epoch")["value"].to_numpy()
        np.testing.assert_array_equal(p[:, 0], x1)


def test_one_panel_per_group_draws_every_run_of_the_group(objective_results):
    runs, metrics = load_runs(objective_results), load_metrics(objective_results)
    fig = trajectory.plot_panels(runs, metrics, ["name"])
    panels = [ax for ax in fig.axes if ax.get_visible()]
    titles = [ax.get_title() for ax in panels]
    assert len(panels) == 4 and sum("noisy" in t for t in titles) == 1 and sum("rosenbrock" in t for t in titles) == 1
    noisy = panels[[i for i, t in enumerate(titles) if "noisy" in t][0]]
    # a path is one line through its points (plus a marker at its start): the panel holds both seeds
    paths = [line for line in noisy.lines if len(line.get_xdata()) == 21]
    assert len(paths) == 2 and not np.array_equal(paths[0].get_ydata(), paths[1].get_ydata())
    assert len(noisy.collections) > 0  # the contour lines


def test_the_overlay_has_one_panel_per_function_with_a_legend_of_groups(objective_results):
    runs, metrics = load_runs(objective_results), load_metrics(objective_results)
    fig = trajectory.plot_overlay(runs, metrics, ["name"])
    assert len(fig.axes) == 2
    ill = [ax for ax in fig.axes if ax.get_title().startswith("ill_conditioned")][0]
    labels = [t.get_text() for t in ill.get_legend().get_texts()]
    assert sorted(labels) == sorted(["name=d2l_2d_gd_lr04", "name=d2l_2d_momentum_beta05", "name=noisy"])


def test_the_window_holds_the_books_view_and_the_paths_but_not_a_runaway(objective_results):
    assert trajectory.window("ill_conditioned", []) == ((-5.5, 1.0), (-3.0, 1.0))  # d2l's show_trace_2d
    (a1, b1), (a2, b2) = trajectory.window("ill_conditioned", [np.array([[-5.0, -2.0], [0.0, 1e6]])])
    # widened by at most one window height (4), plus a 5% margin of what is shown
    assert (a1, b1) == (-5.5, 1.0) and a2 == -3.0 and 4.0 < b2 <= 5.0 + 0.05 * 7


def test_report_writes_the_trajectory_plots_as_png_svg_and_into_the_html(objective_results, cli, tmp_path):
    out, page = tmp_path / "rep", tmp_path / "page.html"
    res = cli("report", "--results-dir", str(objective_results), "--by", "name", "--plots", "trajectory",
              "--out", str(out), "--html", str(page))
    assert res.exit_code == 0, res.output
    html = page.read_text()
    for stem in ("trajectory_per_group", "trajectory_overlay"):
        assert (out / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert b"<svg" in (out / f"{stem}.svg").read_bytes()[:500]
    # the page titles each figure by its caption and embeds it as a PNG
    for caption in ("one panel per group", "Paths of every group"):
        heading = next(h for h in html.split("<h2>")[1:] if caption in h.split("</h2>")[0])
        assert "src='data:image/png;base64," in heading


def test_trajectory_on_runs_without_an_objective_is_a_note_not_an_error(cli, results_dir, tmp_path):
    res = cli("run", "-q", "trainer.epochs=1", "trainer.batch_size=512", "trainer.device=cpu", f"results_dir={results_dir}")
    assert res.exit_code == 0, res.output
    res = cli("report", "--results-dir", str(results_dir), "--plots", "trajectory", "--out", str(tmp_path / "rep"))
    assert res.exit_code == 0, res.output
    assert "trajectory plot skipped" in res.stderr and not list((tmp_path / "rep").glob("trajectory*"))


@pytest.mark.slow
def test_every_plot_kind_draws_on_objective_runs(objective_results, cli, tmp_path):
    res = cli("report", "--results-dir", str(objective_results), "--where", "name=rosen,seed=0", "--plots", "all",
              "--out", str(tmp_path / "rep"))
    assert res.exit_code == 0, res.output
    assert {p.stem for p in (tmp_path / "rep").glob("*.png")} >= {"trajectory_per_group", "trajectory_overlay",
                                                                   "curves_train-loss_vs_epoch"}
    assert len(run_dirs(objective_results)) == 5
