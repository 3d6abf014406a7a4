"""`fused=True`: dlexp's own fused CPU kernels (`fused.cpp`), built with the C++ compiler on first use.

torch's CPU `fused=True` kernels do one pass over memory per tensor where the foreach path does one
per operation (Adam: nine). `fused.cpp` does the same for dlexp: each optimizer's per-tensor rule
written once more in C++, element by element, so that every element of param, grad and state is read
and written once a step, and one call steps a whole param group. The results are bitwise those of
the per-tensor rule (same operations, same order, same roundings; `fused.cpp` says how), which
`tests/test_optim_fused.py` checks for every option of every optimizer.

- **Build**: the first use in a process compiles `fused.cpp` into a shared library under
  `${XDG_CACHE_HOME:-~/.cache}/dlexp/kernels/` (about 2-5 s: the file includes no torch headers), for
  the instruction set torch's own CPU kernels use here (`torch.backends.cpu.get_cpu_capability()`:
  AVX-512, AVX2 or the baseline), keyed by a hash of the source, the compiler and its flags; later
  processes load it. A run that does not ask for `fused=True` never builds or loads it. It needs a
  C++ compiler with OpenMP: `$CXX`, else `c++`/`g++`; without one, the optimizer's constructor says
  so in one line (`ConfigError`: exit 2 from the CLI).
- **Calling**: one ctypes call per (param group, dtype), with the data pointers of every tensor, after
  checking each one (on the CPU, contiguous, the param's dtype and size; float32 step counters):
  a pointer is only handed to C++ for memory it may read and write. Tensors the kernels cannot
  take (another device: CUDA; a non-contiguous grad) run the foreach rule instead, which gives the
  same results; so CUDA is correct by construction, without a fused kernel of dlexp's own.
- **Threads**: `torch.get_num_threads()`, through the OpenMP runtime torch itself loaded; a group of
  fewer than 32,768 elements runs on one (as ATen's grain size). Elements are independent, so the
  thread count never changes a result.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shlex
import shutil
import subprocess
import threading
from array import array
from pathlib import Path

import torch
from torch import Tensor

from dlexp.errors import ConfigError

SOURCE = Path(__file__).with_name("fused.cpp")
KERNELS = ("sgd", "adagrad", "rmsprop", "adadelta", "adam")

# the option bits `fused.cpp` reads
OPTION_BITS = {"maximize": 1, "weight_decay": 2, "momentum": 4, "nesterov": 8, "centered": 16, "amsgrad": 32,
               "decoupled": 64}

# the instruction sets torch's CPU kernels are built for, by `get_cpu_capability()` (x86); each
# with FMA, so `madd` rounds once where ATen's kernels do (anything else: the compiler's baseline)
ISA_FLAGS = {
    # 256-bit vectors preferred: measured on this project's Xeon, 10-15% faster than 512-bit ones
    # for SGD and Adam on d2l's MLP; the vector width changes no result (elements are independent)
    "AVX512": ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mfma", "-mprefer-vector-width=256"],
    "AVX2": ["-mavx2", "-mfma"],
}
# -ffp-contract=off: no multiply-add fused unless the source says so (fused.cpp's `madd`);
# -fno-math-errno and -fno-trapping-math change no result, they let loops with sqrt be vectorised
CXX_FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-fopenmp", "-ffp-contract=off", "-fno-math-errno",
             "-fno-trapping-math"]
# torch's CPU sqrt calls MKL's vector square root with these mode bits (ATen/cpu/vml.h):
# VML_HA | VML_FTZDAZ_OFF | VML_ERRMODE_IGNORE
MKL_SQRT_MODE = 0x2 | 0x140000 | 0x100

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_sqrt_as_torch: bool = False


def option_bits(**options: bool) -> int:
    """The `flags` argument of a kernel: `option_bits(maximize=True, amsgrad=False)` -> 1."""
    return sum(OPTION_BITS[name] for name, on in options.items() if on)


def leave(left: tuple[list, list, list], params: list[Tensor], grads: list[Tensor], states: list) -> None:
    """Add a bucket the kernels could not take to `left`, the (params, grads, states) a fused rule
    returns for the foreach rule."""
    for seq, part in zip(left, (params, grads, states)):
        seq.extend(part)


def check_fused_params(params: list[Tensor]) -> None:
    """torch's fused optimizers take floating point params on their devices only, with this message
    (complex params included: torch's fused kernels do not take them)."""
    for p in params:
        if p.is_cpu and torch.is_floating_point(p):
            continue  # the usual case, without building torch's device list each step
        devices = _fused_devices()
        if not (torch.is_floating_point(p) and p.device.type in devices):
            raise RuntimeError(
                "`fused=True` requires all the params to be floating point Tensors of "
                f"supported devices: {devices} but {p.dtype} and {p.device.type}"
            )


def _fused_devices() -> list[str]:
    """The devices torch's fused kernels take (torch's own list, for torch's own error message)."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        return _get_fused_kernels_supported_devices()
    except ImportError:  # a torch release that moved it
        return ["mps", "cuda", "xpu", "hpu", "cpu"]


def compiler() -> list[str] | None:
    """The C++ compiler command: `$CXX` (may carry arguments, e.g. `ccache g++`), else c++ or g++."""
    if os.environ.get("CXX"):
        return shlex.split(os.environ["CXX"])
    found = shutil.which("c++") or shutil.which("g++")
    return [found] if found else None


def library() -> ctypes.CDLL:
    """The kernels, built on first use (once per machine and source) and loaded (once per process)."""
    global _library
    if _library is None:
        with _lock:
            if _library is None:
                _library = _load(_build())
    return _library


def sqrt_as_torch() -> bool:
    """Do the kernels' square roots equal torch's `sqrt` bit for bit here (checked when loaded)?"""
    library()
    return _sqrt_as_torch


def _build() -> Path:
    from dlexp.data.cache import cache_dir  # the user cache folder (no torch or data loading)

    cxx = compiler()
    if cxx is None:
        raise ConfigError(
            "fused=True: dlexp builds its fused CPU kernels with a C++ compiler on first use, and none "
            "was found (install g++, or set CXX to one); without fused=True the foreach path needs none"
        )
    capability = torch.backends.cpu.get_cpu_capability()
    command = [*cxx, *CXX_FLAGS, *ISA_FLAGS.get(capability, [])]
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + "\0".join(command).encode()).hexdigest()[:16]
    folder = cache_dir("kernels")
    target = folder / f"fused-{capability.lower().replace(' ', '')}-{key}.so"
    if target.exists():
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a read-only home on a cluster node, a file where the folder should be
        raise ConfigError(f"fused=True: cannot create {folder} for the built kernels ({e.strerror}); "
                          "set XDG_CACHE_HOME to a writable folder") from None
    # built under a name of its own and renamed into place: processes that build at once (workers
    # of a grid) each get a whole file, and a reader never sees half of one
    partial = folder / f".{target.name}.{os.getpid()}.{threading.get_ident()}"
    try:
        done = subprocess.run([*command, str(SOURCE), "-o", str(partial)], capture_output=True, text=True)
    except OSError as e:
        raise ConfigError(f"fused=True: could not run the C++ compiler {cxx[0]!r}: {e}") from None
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        first = next((line for line in done.stderr.splitlines() if "error" in line),
                     done.stderr.strip()[:200] or f"exit status {done.returncode}")
        raise ConfigError(f"fused=True: building dlexp's fused CPU kernels with {cxx[0]} failed: {first}")
    os.replace(partial, target)
    return target


def _load(path: Path) -> ctypes.CDLL:
    global _sqrt_as_torch
    lib = ctypes.CDLL(str(path))
    for name in KERNELS:
        for dtype in ("f32", "f64"):
            fn = getattr(lib, f"dlexp_{name}_{dtype}")
            fn.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
            fn.restype = None
    lib.dlexp_set_sqrt.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_longlong]
    lib.dlexp_set_sqrt.restype = None
    f32, f64 = _mkl_sqrt()
    lib.dlexp_set_sqrt(f32, f64, MKL_SQRT_MODE)
    _sqrt_as_torch = _sqrt_matches_torch(lib)
    if not _sqrt_as_torch and f32 is not None:  # MKL's function found but not torch's: the C library's
        lib.dlexp_set_sqrt(None, None, 0)
        _sqrt_as_torch = _sqrt_matches_torch(lib)
    return lib


def _mkl_sqrt() -> tuple[int | None, int | None]:
    """The addresses of MKL's vmsSqrt and vmdSqrt in torch's CPU library, if torch is built with MKL
    and exports them (Linux x86 wheels); (None, None) otherwise."""
    if not torch.backends.mkl.is_available():
        return None, None
    folder = Path(torch.__file__).parent / "lib"
    for name in ("libtorch_cpu.so", "libtorch_cpu.dylib", "torch_cpu.dll"):
        if (folder / name).exists():
            try:
                lib = ctypes.CDLL(str(folder / name))  # already loaded by torch: the same handle
                f32, f64 = lib.vmsSqrt, lib.vmdSqrt
            except (OSError, AttributeError):
                return None, None
            return ctypes.cast(f32, ctypes.c_void_p).value, ctypes.cast(f64, ctypes.c_void_p).value
    return None, None


def _sqrt_matches_torch(lib: ctypes.CDLL) -> bool:
    """One Adagrad step (s = g^2, p -= g / (sqrt(s) + 0)) on 4,096 values spread over 60 binades,
    against the same step in torch's ops: equal only if the square roots are."""
    for dtype in (torch.float32, torch.float64):
        g = torch.logspace(-30, 30, 4096, dtype=dtype) * torch.linspace(1, 3, 4096, dtype=dtype)
        p, total, step = torch.zeros_like(g), torch.zeros_like(g), torch.zeros((), dtype=torch.float32)
        expected = -g / (g * g).sqrt()
        _call(lib, "adagrad", [[p], [g], [total], [step]], (1.0, 0.0, 0.0, 0.0), 0, dtype)
        if not torch.equal(p, expected):
            return False
    return True


def _call(lib: ctypes.CDLL, kernel: str, columns: list[list[Tensor]], hp: tuple[float, ...], flags: int,
          dtype: torch.dtype) -> None:
    """The kernel call itself, with no checks (`run` makes them)."""
    ptrs = array("q", [t.data_ptr() for column in columns for t in column])
    _invoke(lib, kernel, len(columns[0]), ptrs, array("q", [t.numel() for t in columns[0]]), hp, flags, dtype)


def _invoke(lib: ctypes.CDLL, kernel: str, n: int, ptrs: array, numels: array, hp: tuple[float | Tensor, ...],
            flags: int, dtype: torch.dtype) -> None:
    hps = array("d", [float(v) for v in hp])  # a tensor lr by its value, as torch's fused kernels
    fn = getattr(lib, f"dlexp_{kernel}_{'f32' if dtype is torch.float32 else 'f64'}")
    fn(n, ptrs.buffer_info()[0], numels.buffer_info()[0], hps.buffer_info()[0], flags, torch.get_num_threads())


def run(kernel: str, columns: list[list[Tensor]], hp: tuple[float | Tensor, ...], flags: int,
        step_column: int | None) -> bool:
    """Step one (device, dtype) bucket with `kernel`: columns[0] the params, [1] their grads, then the
    state tensors `fused.cpp` lists for it (same size as the params), and at `step_column` the
    float32 step counters. Returns False, having touched nothing, when some tensor is not one the
    kernel can take (not on the CPU, not contiguous, another dtype or size): the caller then runs
    the foreach rule."""
    params = columns[0]
    dtype = params[0].dtype
    if not params[0].is_cpu or dtype not in (torch.float32, torch.float64):
        return False
    numels = array("q", [p.numel() for p in params])
    ptrs = array("q")
    # one plain loop that checks each tensor and takes its pointer (this runs every step: a
    # generator per check cost 15 us a step on d2l's MLP)
    f32 = torch.float32
    for c, column in enumerate(columns):
        if len(column) != len(numels):
            return False
        if c == step_column:
            for s in column:
                if not (s.is_cpu and s.dtype is f32 and s.numel() == 1):
                    return False
                ptrs.append(s.data_ptr())
        else:
            for t, k in zip(column, numels):
                if not (t.is_cpu and t.dtype is dtype and t.numel() == k and t.is_contiguous()):
                    return False
                ptrs.append(t.data_ptr())
    _invoke(library(), kernel, len(params), ptrs, numels, hp, flags, dtype)
    # what an in-place ATen op does: autograd then refuses a backward through a param changed since
    torch.autograd.graph.increment_version([t for c, column in enumerate(columns) if c != 1 for t in column])
    return True
