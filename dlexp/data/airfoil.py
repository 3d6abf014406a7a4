"""UCI Airfoil Self-Noise as d2l's optimization chapter uses it (d2l 12.5, `get_data_ch11`).

d2l reads all 1503 rows, standardizes every column, the target (sound pressure) included, with
`(data - data.mean(axis=0)) / data.std(axis=0)` (numpy's population std, statistics over all 1503
rows), keeps the first 1500 rows and trains on all of them; it has no test set. We do exactly the
same transform so that losses are comparable with d2l's plots, then hold out a fixed, seeded
`test_fraction` of the 1500 rows as the test set (the same rows for every run). The statistics are
d2l's, computed before any split: the test rows share them (a mild, deliberate leak that keeps the
numbers d2l's). `test_fraction: 0` trains on d2l's 1500 rows exactly.
"""

from __future__ import annotations

import numpy as np
import torch

from dlexp.data import REGRESSION, Source, register
from dlexp.data.download import RemoteFile, fetch
from dlexp.errors import ConfigError

# d2l's DATA_HUB['airfoil'] (SHA-1)
FILES = [RemoteFile("airfoil_self_noise.dat", "sha1", "76e5be1548fd8222e5074cf0faae75edff8cf93f", 59984)]
N_ROWS = 1500  # d2l's n=1500


@register("airfoil")
def airfoil(cfg) -> Source:
    path = fetch("airfoil", FILES, cfg.get("root"))[FILES[0].name]
    data = np.genfromtxt(path, dtype=np.float32, delimiter="\t")  # (1503, 6), as d2l
    data = (data - data.mean(axis=0)) / data.std(axis=0)
    data = torch.from_numpy(np.ascontiguousarray(data[:N_ROWS]))
    x, y = data[:, :-1].contiguous(), data[:, -1:].contiguous()  # (1500, 5), (1500, 1)
    test_fraction = float(cfg.get("test_fraction", 0.1))
    if not 0 <= test_fraction < 1:
        raise ConfigError(f"dataset.test_fraction: must be in [0, 1), got {test_fraction}")
    n_test = int(round(test_fraction * N_ROWS))
    if n_test == 0:
        return Source(name="airfoil", task=REGRESSION, x=x, y=y, num_outputs=1)
    perm = np.random.default_rng(int(cfg.get("split_seed", 0))).permutation(N_ROWS)
    test, pool = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    return Source(
        name="airfoil", task=REGRESSION, x=x[pool], y=y[pool], x_test=x[test], y_test=y[test], num_outputs=1,
    )
