"""Fashion-MNIST and MNIST from the original gzipped IDX files.

Images are float32 in [0, 1] of shape (n, 1, 28, 28): one copy in memory; the MLP and softmax models
flatten, LeNet takes 1x28x28 as it is. The test set is the official 10,000 `t10k` images.
The decoded uint8 arrays are cached as one .npz in the user cache, named by the published checksums
of the raw files (which are verified on every load), so a later load skips the gzip decoding.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from dlexp.data import CLASSIFICATION, Source, register
from dlexp.data.cache import cache_dir, cached_arrays
from dlexp.data.download import RemoteFile, fetch
from dlexp.data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx
from dlexp.errors import ConfigError

DECODED_FORMAT = 1  # bump when the cached arrays change meaning

# name, MD5 (torchvision's FashionMNIST.resources / MNIST.resources), size, MD5 of the gunzipped data
FILES: dict[str, list[RemoteFile]] = {
    "fashion-mnist": [
        RemoteFile("train-images-idx3-ubyte.gz", "md5", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", 26421880,
                   "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
        RemoteFile("train-labels-idx1-ubyte.gz", "md5", "25c81989df183df01b3e8a0aad5dffbe", 29515,
                   "9018921c3c673c538a1fc5bad174d6f9"),
        RemoteFile("t10k-images-idx3-ubyte.gz", "md5", "bef4ecab320f06d8554ea6380940ec79", 4422102,
                   "8181f5470baa50b63fa0f6fddb340f0a"),
        RemoteFile("t10k-labels-idx1-ubyte.gz", "md5", "bb300cfdad3c16e7a12a480ee83cd310", 5148,
                   "15d484375f8d13e6eb1aabb0c3f46965"),
    ],
    "mnist": [
        RemoteFile("train-images-idx3-ubyte.gz", "md5", "f68b3c2dcbeaaa9fbdd348bbdeb94873", 9912422,
                   "6bbc9ace898e44ae57da46a324031adb"),
        RemoteFile("train-labels-idx1-ubyte.gz", "md5", "d53e105ee54ea40749a09fcbcd1e9432", 28881,
                   "a25bea736e30d166cdddb491f175f624"),
        RemoteFile("t10k-images-idx3-ubyte.gz", "md5", "9fb629c4189551a2d022fa330f9573f3", 1648877,
                   "2646ac647ad5339dbf082846283269ea"),
        RemoteFile("t10k-labels-idx1-ubyte.gz", "md5", "ec29112dd5afa0611ce80d1b7f02629c", 4542,
                   "27ae3e4e09519cfbb04c329615203637"),
    ],
}

CLASSES = {
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    "mnist": [str(d) for d in range(10)],
}


def decode(paths: dict) -> dict[str, np.ndarray]:
    """The four IDX files as uint8 arrays, with image and label counts checked against each other."""
    arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(paths[f"{prefix}-images-idx3-ubyte.gz"], IMAGES_MAGIC)
        labels = read_idx(paths[f"{prefix}-labels-idx1-ubyte.gz"], LABELS_MAGIC)
        if len(images) != len(labels) or images.shape[1:] != (28, 28) or labels.max(initial=0) > 9:
            raise ConfigError(
                f"{paths[f'{prefix}-images-idx3-ubyte.gz']}: {images.shape} images do not fit "
                f"{labels.shape} labels of 10 classes"
            )
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    return arrays


def load_arrays(folder: str, root=None) -> dict[str, np.ndarray]:
    """Find/download, verify and decode the files of `folder` (cached after the first time)."""
    files = FILES[folder]
    paths = fetch(folder, files, root)
    key = hashlib.sha1(f"{DECODED_FORMAT}:" .encode() + ",".join(f.digest for f in files).encode()).hexdigest()[:16]
    return cached_arrays(cache_dir(folder) / f"decoded-{key}.npz", lambda: decode(paths))


def _images(a: np.ndarray, n) -> torch.Tensor:
    a = a[: int(n)] if n is not None else a
    x = torch.from_numpy(a.astype(np.float32)).div_(255.0)  # the one float copy, as d2l's ToTensor
    return x.unsqueeze(1)  # (n, 1, 28, 28), a view


def _labels(a: np.ndarray, n) -> torch.Tensor:
    a = a[: int(n)] if n is not None else a
    return torch.from_numpy(a.astype(np.int64))


def _source(cfg, name: str, folder: str) -> Source:
    arrays = load_arrays(folder, cfg.get("root"))
    # num_train / num_test: the first n samples only (quick tests); null = all
    n_train, n_test = cfg.get("num_train"), cfg.get("num_test")
    return Source(
        name=name, task=CLASSIFICATION,
        x=_images(arrays["train_images"], n_train), y=_labels(arrays["train_labels"], n_train),
        x_test=_images(arrays["test_images"], n_test), y_test=_labels(arrays["test_labels"], n_test),
        num_outputs=10, extra={"classes": CLASSES[folder]},
        # the files are verified against these checksums on every load
        fingerprint=f"{folder}:" + ",".join(f.digest for f in FILES[folder]) + f":{n_train}:{n_test}",
        finite=True,  # uint8 / 255
    )


@register("fashion_mnist")
def fashion_mnist(cfg) -> Source:
    """Zalando's Fashion-MNIST: 60,000 + 10,000 28x28 grey images of 10 clothing classes."""
    return _source(cfg, "fashion_mnist", "fashion-mnist")


@register("mnist")
def mnist(cfg) -> Source:
    """LeCun, Cortes and Burges' MNIST handwritten digits: 60,000 + 10,000 28x28 grey images."""
    return _source(cfg, "mnist", "mnist")
