"""`dlexp report` as a library: statistics, grouping, tables, plots and the HTML page over `results/`.

    stats.py    pure statistics (intervals, paired tests, Holm), tested against scipy and simulation
    runs.py     which runs a report is about: kinds, tasks, keys, metrics, filters, the baseline
    compare.py  groups: statistics per group, time to target, comparisons, the answer in sentences
    tables.py   the table as Markdown, CSV (spreadsheet-safe), LaTeX, JSON
    plots.py    learning curves, lr schedules, lr sensitivity, final metric per group
    page.py     the self-contained HTML page, answer first
    output.py   one folder per report, nothing stale beside fresh output
    study.py    a sweep's Optuna study

Inputs are the tables of `dlexp.results` (`load_runs`, `load_metrics`); nothing here trains or
reads anything but `results/`. The names below are the ones the CLI and the tests use.
"""

from dlexp.report.compare import (
    answer,
    assign_groups,
    compare_to_baseline,
    group_label,
    interval_notes,
    num,
    pvalue,
    report_table,
    summarize_groups,
    target_notes,
    time_to_target,
)
from dlexp.report.output import ReportFolder, default_folder, safe_name
from dlexp.report.page import html_page
from dlexp.report.plots import (
    PLOT_KINDS,
    figure_bytes,
    make_plots,
    parse_plots,
    parse_x,
    plot_curves,
    plot_final,
    plot_lr,
    plot_name,
    plot_sensitivity,
)
from dlexp.report.runs import (
    REPLICATE_KEYS,
    ReportError,
    best_notes,
    clip,
    default_metric,
    filter_runs,
    fold_ratios,
    lower_is_better,
    metric_columns,
    metric_label,
    parse_baseline,
    parse_target,
    pooled_keys,
    resolve_key,
    resolve_metric,
    run_kinds,
    select_kinds,
    select_section,
    varying_keys,
)
from dlexp.report.stats import bootstrap_interval, holm, t_interval
from dlexp.report.study import check_study_name, study_answer, study_plots, study_trials
from dlexp.report.tables import FORMATS, format_table, spreadsheet_safe

__all__ = [name for name in dir() if not name.startswith("_")]
