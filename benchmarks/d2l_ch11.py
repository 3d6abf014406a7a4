"""The reference loop: d2l's `train_ch11` (12.5) and the chapter's optimizers, written the way the book
writes them (PyTorch tab of d2l 1.0), so that dlexp's runs of the same settings can be measured beside
it, the same day on the same machine (`benchmarks/d2l_chapter.py` does).

Kept as in the book: the data (`get_data_ch11`: 1,500 standardized airfoil rows in a shuffled
DataLoader), the model (`linreg` with w ~ N(0, 0.01^2), b = 0), the loss (`squared_loss`, half the
squared error), the update rules (`sgd`, `sgd_momentum`, `adagrad`, `rmsprop`, `adadelta`, `adam`, eps
inside the square roots where the book puts it), the evaluation of the whole training set every 200
examples, and the timer that stops during those evaluations. Added: a seed, the examples count at each
evaluation, and a return value instead of the animator.

    python benchmarks/d2l_ch11.py [--seed 0]      # prints "loss: ..., ... sec/epoch" per setting
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


# ---------------------------------------------------------------- d2l's helpers


class Timer:
    """Record multiple running times (d2l.Timer)."""

    def __init__(self):
        self.times = []
        self.start()

    def start(self):
        self.tik = time.time()

    def stop(self):
        self.times.append(time.time() - self.tik)
        return self.times[-1]

    def sum(self):
        return sum(self.times)

    def cumsum(self):
        return np.array(self.times).cumsum().tolist()


def airfoil_path() -> str:
    """Where airfoil_self_noise.dat is ($DLEXP_DATA/airfoil, the cache, ...), found the way dlexp finds it."""
    from dlexp.data.airfoil import FILES
    from dlexp.data.download import fetch

    return str(fetch("airfoil", FILES, None)[FILES[0].name])


def load_array(data_arrays, batch_size, is_train=True):
    dataset = torch.utils.data.TensorDataset(*data_arrays)
    return torch.utils.data.DataLoader(dataset, batch_size, shuffle=is_train)


def get_data_ch11(batch_size=10, n=1500):
    data = np.genfromtxt(airfoil_path(), dtype=np.float32, delimiter="\t")
    data = torch.from_numpy((data - data.mean(axis=0)) / data.std(axis=0))
    data_iter = load_array((data[:n, :-1], data[:n, -1]), batch_size, is_train=True)
    return data_iter, data.shape[1] - 1


def linreg(X, w, b):
    return torch.matmul(X, w) + b


def squared_loss(y_hat, y):
    return (y_hat - y.reshape(y_hat.shape)) ** 2 / 2


def evaluate_loss(net, data_iter, loss):
    total, count = 0.0, 0
    for X, y in data_iter:
        out = net(X)
        l = loss(out, y.reshape(out.shape))
        total, count = total + float(l.sum()), count + l.numel()
    return total / count


def train_ch11(trainer_fn, states, hyperparams, data_iter, feature_dim, num_epochs=2):
    """d2l's train_ch11. Returns (seconds at each evaluation, loss at each evaluation, examples at each
    evaluation, seconds per epoch); the seconds leave the evaluations out, as the book's timer does."""
    w = torch.normal(mean=0.0, std=0.01, size=(feature_dim, 1), requires_grad=True)
    b = torch.zeros((1), requires_grad=True)
    net, loss = lambda X: linreg(X, w, b), squared_loss
    losses, seen = [], []
    n, timer = 0, Timer()
    for _ in range(num_epochs):
        for X, y in data_iter:
            l = loss(net(X), y).mean()
            l.backward()
            trainer_fn([w, b], states, hyperparams)
            n += X.shape[0]
            if n % 200 == 0:
                timer.stop()
                with torch.no_grad():
                    losses.append(evaluate_loss(net, data_iter, loss))
                seen.append(n)
                timer.start()
    timer.stop()  # the book's timer keeps running after the last evaluation and is never read again
    return timer.cumsum()[: len(losses)], losses, seen, sum(timer.times[: len(losses)]) / num_epochs


# ---------------------------------------------------------------- the chapter's optimizers (12.5-12.10)


def sgd(params, states, hyperparams):
    for p in params:
        p.data.sub_(hyperparams["lr"] * p.grad)
        p.grad.data.zero_()


def init_momentum_states(feature_dim):
    return (torch.zeros((feature_dim, 1)), torch.zeros(1))


def sgd_momentum(params, states, hyperparams):
    for p, v in zip(params, states):
        with torch.no_grad():
            v[:] = hyperparams["momentum"] * v + p.grad
            p[:] -= hyperparams["lr"] * v
        p.grad.data.zero_()


def init_adagrad_states(feature_dim):
    return (torch.zeros((feature_dim, 1)), torch.zeros(1))


def adagrad(params, states, hyperparams):
    eps = 1e-6
    for p, s in zip(params, states):
        with torch.no_grad():
            s[:] += torch.square(p.grad)
            p[:] -= hyperparams["lr"] * p.grad / torch.sqrt(s + eps)
        p.grad.data.zero_()


def init_rmsprop_states(feature_dim):
    return (torch.zeros((feature_dim, 1)), torch.zeros(1))


def rmsprop(params, states, hyperparams):
    gamma, eps = hyperparams["gamma"], 1e-6
    for p, s in zip(params, states):
        with torch.no_grad():
            s[:] = gamma * s + (1 - gamma) * torch.square(p.grad)
            p[:] -= hyperparams["lr"] * p.grad / torch.sqrt(s + eps)
        p.grad.data.zero_()


def init_adadelta_states(feature_dim):
    return ((torch.zeros((feature_dim, 1)), torch.zeros((feature_dim, 1))), (torch.zeros(1), torch.zeros(1)))


def adadelta(params, states, hyperparams):
    rho, eps = hyperparams["rho"], 1e-5
    for p, (s, delta) in zip(params, states):
        with torch.no_grad():
            s[:] = rho * s + (1 - rho) * torch.square(p.grad)
            g = (torch.sqrt(delta + eps) / torch.sqrt(s + eps)) * p.grad
            p[:] -= g
            delta[:] = rho * delta + (1 - rho) * g * g
        p.grad.data.zero_()


def init_adam_states(feature_dim):
    return ((torch.zeros((feature_dim, 1)), torch.zeros((feature_dim, 1))), (torch.zeros(1), torch.zeros(1)))


def adam(params, states, hyperparams):
    beta1, beta2, eps = 0.9, 0.999, 1e-6
    for p, (v, s) in zip(params, states):
        with torch.no_grad():
            v[:] = beta1 * v + (1 - beta1) * p.grad
            s[:] = beta2 * s + (1 - beta2) * torch.square(p.grad)
            v_bias_corr = v / (1 - beta1 ** hyperparams["t"])
            s_bias_corr = s / (1 - beta2 ** hyperparams["t"])
            p[:] -= hyperparams["lr"] * v_bias_corr / (torch.sqrt(s_bias_corr) + eps)
        p.grad.data.zero_()
    hyperparams["t"] += 1


# setting -> (trainer, states factory, hyperparameters, batch size, epochs), as each section calls train_ch11;
# the names are dlexp's experiment files (conf/experiment/<name>.yaml), with overrides for the book's
# second and third momentum runs
SETTINGS = {
    "d2l_airfoil_gd": (sgd, None, {"lr": 1.0}, 1500, 10),
    "d2l_airfoil_sgd": (sgd, None, {"lr": 0.005}, 1, 2),
    "d2l_airfoil_minibatch100": (sgd, None, {"lr": 0.4}, 100, 2),
    "d2l_airfoil_minibatch10": (sgd, None, {"lr": 0.05}, 10, 2),
    "d2l_airfoil_momentum": (sgd_momentum, init_momentum_states, {"lr": 0.02, "momentum": 0.5}, 10, 2),
    "d2l_airfoil_momentum lr=0.01 momentum=0.9": (sgd_momentum, init_momentum_states, {"lr": 0.01, "momentum": 0.9}, 10, 2),
    "d2l_airfoil_momentum lr=0.005 momentum=0.9": (sgd_momentum, init_momentum_states, {"lr": 0.005, "momentum": 0.9}, 10, 2),
    "d2l_airfoil_adagrad": (adagrad, init_adagrad_states, {"lr": 0.1}, 10, 2),
    "d2l_airfoil_rmsprop": (rmsprop, init_rmsprop_states, {"lr": 0.01, "gamma": 0.9}, 10, 2),
    "d2l_airfoil_adadelta": (adadelta, init_adadelta_states, {"rho": 0.9}, 10, 2),
    "d2l_airfoil_adam": (adam, init_adam_states, {"lr": 0.01, "t": 1}, 10, 2),
}


def run(setting: str, seed: int):
    """One run of `setting` with torch seeded by `seed` (the weights and the DataLoader's shuffle)."""
    trainer, states, hyperparams, batch_size, epochs = SETTINGS[setting]
    torch.manual_seed(seed)
    data_iter, feature_dim = get_data_ch11(batch_size)
    return train_ch11(trainer, states(feature_dim) if states else None, dict(hyperparams), data_iter, feature_dim, epochs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for setting in SETTINGS:
        _, losses, _, per_epoch = run(setting, args.seed)
        print(f"{setting}: loss: {losses[-1]:.3f}, {per_epoch:.3f} sec/epoch")


if __name__ == "__main__":
    main()
