// dlexp's fused CPU kernels: `fused=True` on the CPU (built and loaded by fused.py).
//
// Each kernel is the per-tensor rule of its optimizer file (`sgd`, `adagrad`, `rmsprop`,
// `adadelta`, `adam`; AdamW is `adam` with decoupled decay), written once more as a single pass
// over memory: where the rule runs one ATen operation after another over whole tensors (Adam:
// nine passes), a kernel reads each element of param, grad and state once, applies every
// operation of the rule to it, and writes it back. One call steps every tensor of a param group.
//
// The results are bitwise those of the per-tensor rule, because every element sees the same
// operations in the same order, rounded the same way:
// - hyperparameters are rounded to the tensor's dtype where the rule passes a Python float to an
//   ATen operation, and combined in double where the rule combines Python floats
//   (`lr / bias_correction1`), with the same C library calls (`pow`);
// - `madd(a, b, c)` = a * b + c, rounded once (fused multiply-add) on the CPUs where ATen's own
//   kernels round it once (x86 with AVX2 or AVX-512, where its kernels are built with FMA, and
//   aarch64), twice elsewhere: `add(x, alpha=a)`, `addcmul` and `lerp` are such operations;
//   everything else (mul, div, sqrt, addcdiv) is rounded after each operation, as there. The file
//   is compiled with -ffp-contract=off, so the compiler fuses nothing on its own;
// - square roots: torch's CPU `sqrt` is MKL's vector square root (`vmsSqrt` in its "high
//   accuracy" mode, which differs from the correctly rounded root in the last bit of ~0.6% of
//   values) when torch is built with MKL; fused.py hands the kernels MKL's function from torch's
//   own library, and `std::sqrt` (what torch uses without MKL) otherwise.
//
// The interface is plain C, called through ctypes: `n` tensors, `ptrs` their data pointers as
// columns (column c of tensor j at ptrs[c * n + j]: param, grad, then the state the optimizer
// keeps), `numels`, the hyperparameters `hp` as doubles, option bits `flags`, and the number of
// threads. fused.py checks every tensor (CPU, contiguous, dtype, size) before passing a pointer.

#include <cmath>
#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

namespace {

#if defined(__FMA__) || defined(__aarch64__)
template <typename T> inline T madd(T a, T b, T c) { return std::fma(a, b, c); }
#else
template <typename T> inline T madd(T a, T b, T c) { return a * b + c; }
#endif

// ATen's `lerp(self, end, weight)` for a scalar weight, in the form it picks by the weight (one that
// keeps a weight near 1 precise): self + w (end - self) if |w| < 0.5, else end + (w - 1) (end - self)
template <typename T> struct Lerp {
  bool small;
  T coeff;
  explicit Lerp(T weight) : small(std::abs(weight) < T(0.5)), coeff(small ? weight : weight - T(1)) {}
  T operator()(T self, T end) const { return madd(coeff, end - self, small ? self : end); }
};

// torch.maximum: NaN if either is NaN
template <typename T> inline T maximum(T a, T b) {
  return (a != a || b != b) ? std::numeric_limits<T>::quiet_NaN() : (a < b ? b : a);
}

// ---------------------------------------------------------------- square roots as torch takes them

using SqrtF32 = void (*)(int, const float*, float*, long long);
using SqrtF64 = void (*)(int, const double*, double*, long long);
SqrtF32 mkl_sqrt_f32 = nullptr;
SqrtF64 mkl_sqrt_f64 = nullptr;
long long mkl_mode = 0;

// out[i] = sqrt(in[i]) for i < n (n <= BLOCK), in place allowed
inline void sqrt_block(const float* in, float* out, int64_t n) {
  if (mkl_sqrt_f32) {
    mkl_sqrt_f32(static_cast<int>(n), in, out, mkl_mode);
  } else {
    for (int64_t i = 0; i < n; i++) out[i] = std::sqrt(in[i]);
  }
}
inline void sqrt_block(const double* in, double* out, int64_t n) {
  if (mkl_sqrt_f64) {
    mkl_sqrt_f64(static_cast<int>(n), in, out, mkl_mode);
  } else {
    for (int64_t i = 0; i < n; i++) out[i] = std::sqrt(in[i]);
  }
}

// ---------------------------------------------------------------- splitting the work

// Elements per block: the unit of the square-root calls (scratch space on the stack) ...
constexpr int64_t BLOCK = 256;  // measured on d2l's MLP: 256 beat 1024 (Adam 15% faster), 4096 lost
// ... and per piece of work a thread takes; a group with fewer elements than GRAIN runs on one
// thread (ATen's grain size: below it, waking threads costs more than it saves)
constexpr int64_t CHUNK = 16384;
constexpr int64_t GRAIN = 32768;

// f(j, begin, end) over every tensor j, in pieces of at most CHUNK elements spread over `threads`
// threads (contiguous runs of pieces per thread). Elements are independent: the split does not
// change any result.
template <typename F>
void for_each_piece(int64_t n, const int64_t* numels, int threads, const F& f) {
  int64_t total = 0;
  for (int64_t j = 0; j < n; j++) total += numels[j];
  if (threads <= 1 || total <= GRAIN) {
    for (int64_t j = 0; j < n; j++) f(j, int64_t(0), numels[j]);
    return;
  }
  struct Piece { int64_t j, begin, end; };
  std::vector<Piece> pieces;
  for (int64_t j = 0; j < n; j++)
    for (int64_t b = 0; b < numels[j]; b += CHUNK) pieces.push_back({j, b, std::min(b + CHUNK, numels[j])});
  const int64_t count = static_cast<int64_t>(pieces.size());
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t k = 0; k < count; k++) f(pieces[k].j, pieces[k].begin, pieces[k].end);
}

template <typename T> inline T* column(void* const* ptrs, int64_t n, int c, int64_t j) {
  return static_cast<T*>(ptrs[c * n + j]);
}

// `state["step"] += 1` for every tensor (float32 counters, as torch's fused optimizers keep them),
// returning t of each as the Python float the rule reads with `.item()`
inline std::vector<double> increment_steps(void* const* ptrs, int64_t n, int c) {
  std::vector<double> t(n);
  for (int64_t j = 0; j < n; j++) {
    float* step = column<float>(ptrs, n, c, j);
    *step += 1.0f;
    t[j] = static_cast<double>(*step);
  }
  return t;
}

enum : int {
  MAXIMIZE = 1,
  WEIGHT_DECAY = 2,
  MOMENTUM = 4,    // sgd, rmsprop
  NESTEROV = 8,    // sgd
  CENTERED = 16,   // rmsprop
  AMSGRAD = 32,    // adam
  DECOUPLED = 64,  // adam: AdamW's decay
};

// g_t: the gradient, negated if maximizing, plus weight_decay * param (`grad.add(param, alpha=wd)`)
template <typename T> inline T gradient(T g, T p, bool maximize, bool has_wd, T wd) {
  g = maximize ? -g : g;
  return has_wd ? madd(p, wd, g) : g;
}

// ---------------------------------------------------------------- the rules
//
// Each rule is a function of one tensor's range [begin, end) whose arguments are all values (the
// pointers, the hyperparameters as the rule rounds them, the options), so the compiler sees that
// nothing it writes can change them, and vectorises every loop; the options are loop-invariant.

// sgd.py `sgd`, after the first step (the momentum buffers exist). Columns: param, grad,
// momentum_buffer. hp: lr, momentum, dampening, weight_decay.
template <typename T>
void sgd_range(T* __restrict p, const T* __restrict g, T* __restrict buf, int64_t begin, int64_t end,
               const T minus_lr, const T momentum, const T one_minus_dampening, const T wd, const bool maximize,
               const bool has_wd, const bool has_momentum, const bool nesterov) {
  if (!has_momentum) {
#pragma omp simd
    for (int64_t i = begin; i < end; i++) p[i] = madd(gradient(g[i], p[i], maximize, has_wd, wd), minus_lr, p[i]);
    return;
  }
#pragma omp simd
  for (int64_t i = begin; i < end; i++) {
    const T d = gradient(g[i], p[i], maximize, has_wd, wd);
    const T b = madd(d, one_minus_dampening, buf[i] * momentum);  // buf.mul_(m).add_(g, alpha=1 - dampening)
    buf[i] = b;
    p[i] = madd(nesterov ? madd(b, momentum, d) : b, minus_lr, p[i]);  // param.add_(d, alpha=-lr)
  }
}

template <typename T>
void sgd(int64_t n, void* const* ptrs, const int64_t* numels, const double* hp, int flags, int threads) {
  for_each_piece(n, numels, threads, [=](int64_t j, int64_t begin, int64_t end) {
    sgd_range<T>(column<T>(ptrs, n, 0, j), column<T>(ptrs, n, 1, j),
                 flags & MOMENTUM ? column<T>(ptrs, n, 2, j) : nullptr, begin, end, T(-hp[0]), T(hp[1]),
                 T(1 - hp[2]), T(hp[3]), flags & MAXIMIZE, flags & WEIGHT_DECAY, flags & MOMENTUM, flags & NESTEROV);
  });
}

// adagrad.py `adagrad` (dense). Columns: param, grad, sum, step. hp: lr, lr_decay, weight_decay, eps.
template <typename T>
void adagrad_range(T* __restrict p, const T* __restrict g, T* __restrict sum, int64_t begin, int64_t end,
                   const T minus_clr, const T wd, const T eps, const bool maximize, const bool has_wd) {
  T root[BLOCK];
  for (int64_t b = begin; b < end; b += BLOCK) {
    const int64_t e = std::min(b + BLOCK, end);
#pragma omp simd
    for (int64_t i = b; i < e; i++) {
      const T d = gradient(g[i], p[i], maximize, has_wd, wd);
      sum[i] = madd(d, d, sum[i]);  // state_sum.addcmul_(g, g, value=1)
    }
    sqrt_block(sum + b, root, e - b);
#pragma omp simd
    for (int64_t i = b; i < e; i++) {
      const T d = gradient(g[i], p[i], maximize, has_wd, wd);
      p[i] = (minus_clr * d) / (root[i - b] + eps) + p[i];  // param.addcdiv_(g, sqrt(s) + eps, value=-clr)
    }
  }
}

template <typename T>
void adagrad(int64_t n, void* const* ptrs, const int64_t* numels, const double* hp, int flags, int threads) {
  const std::vector<double> t = increment_steps(ptrs, n, 3);
  const double lr = hp[0], lr_decay = hp[1];
  for_each_piece(n, numels, threads, [&](int64_t j, int64_t begin, int64_t end) {
    const T minus_clr = T(-(lr / (1 + (t[j] - 1) * lr_decay)));  // -lr / (1 + (t - 1) lr_decay)
    adagrad_range<T>(column<T>(ptrs, n, 0, j), column<T>(ptrs, n, 1, j), column<T>(ptrs, n, 2, j), begin, end,
                     minus_clr, T(hp[2]), T(hp[3]), flags & MAXIMIZE, flags & WEIGHT_DECAY);
  });
}

// rmsprop.py `rmsprop`. Columns: param, grad, square_avg, step, [grad_avg if centered],
// [momentum_buffer if momentum]. hp: lr, alpha, eps, weight_decay, momentum.
template <typename T>
void rmsprop_range(T* __restrict p, const T* __restrict g, T* __restrict square_avg, T* __restrict grad_avg,
                   T* __restrict buf, int64_t begin, int64_t end, const T minus_lr, const T alpha,
                   const T one_minus_alpha, const T eps, const T wd, const T momentum, const bool maximize,
                   const bool has_wd, const bool centered, const bool has_momentum) {
  const Lerp<T> towards_g(one_minus_alpha);
  T avg[BLOCK];
  for (int64_t b = begin; b < end; b += BLOCK) {
    const int64_t e = std::min(b + BLOCK, end);
    if (centered) {
#pragma omp simd
      for (int64_t i = b; i < e; i++) {
        const T d = gradient(g[i], p[i], maximize, has_wd, wd);
        const T s = madd(one_minus_alpha * d, d, square_avg[i] * alpha);  // s_t
        square_avg[i] = s;
        const T v = towards_g(grad_avg[i], d);  // v_t: grad_avg.lerp_(g, 1 - alpha)
        grad_avg[i] = v;
        avg[i - b] = madd(-v, v, s);  // square_avg.addcmul(v, v, value=-1)
      }
    } else {
#pragma omp simd
      for (int64_t i = b; i < e; i++) {
        const T d = gradient(g[i], p[i], maximize, has_wd, wd);
        const T s = madd(one_minus_alpha * d, d, square_avg[i] * alpha);  // s_t
        square_avg[i] = s;
        avg[i - b] = s;
      }
    }
    sqrt_block(avg, avg, e - b);
    if (has_momentum) {
#pragma omp simd
      for (int64_t i = b; i < e; i++) {
        const T d = gradient(g[i], p[i], maximize, has_wd, wd);
        const T m = buf[i] * momentum + d / (avg[i - b] + eps);  // buf.mul_(momentum).addcdiv_(g, avg)
        buf[i] = m;
        p[i] = madd(m, minus_lr, p[i]);  // param.add_(buf, alpha=-lr)
      }
    } else {
#pragma omp simd
      for (int64_t i = b; i < e; i++) {
        const T d = gradient(g[i], p[i], maximize, has_wd, wd);
        p[i] = (minus_lr * d) / (avg[i - b] + eps) + p[i];  // param.addcdiv_(g, avg, value=-lr)
      }
    }
  }
}

template <typename T>
void rmsprop(int64_t n, void* const* ptrs, const int64_t* numels, const double* hp, int flags, int threads) {
  increment_steps(ptrs, n, 3);
  const bool centered = flags & CENTERED, has_momentum = flags & MOMENTUM;
  for_each_piece(n, numels, threads, [=](int64_t j, int64_t begin, int64_t end) {
    rmsprop_range<T>(column<T>(ptrs, n, 0, j), column<T>(ptrs, n, 1, j), column<T>(ptrs, n, 2, j),
                     centered ? column<T>(ptrs, n, 4, j) : nullptr,
                     has_momentum ? column<T>(ptrs, n, centered ? 5 : 4, j) : nullptr, begin, end, T(-hp[0]),
                     T(hp[1]), T(1 - hp[1]), T(hp[2]), T(hp[3]), T(hp[4]), flags & MAXIMIZE, flags & WEIGHT_DECAY,
                     centered, has_momentum);
  });
}

// adadelta.py `adadelta`. Columns: param, grad, square_avg, acc_delta, step.
// hp: lr, rho, eps, weight_decay.
template <typename T>
void adadelta_range(T* __restrict p, const T* __restrict g, T* __restrict square_avg, T* __restrict acc_delta,
                    int64_t begin, int64_t end, const T minus_lr, const T rho, const T one_minus_rho, const T eps,
                    const T wd, const bool maximize, const bool has_wd) {
  T std_[BLOCK], delta[BLOCK];
  for (int64_t b = begin; b < end; b += BLOCK) {
    const int64_t e = std::min(b + BLOCK, end);
#pragma omp simd
    for (int64_t i = b; i < e; i++) {
      const T d = gradient(g[i], p[i], maximize, has_wd, wd);
      const T s = madd(one_minus_rho * d, d, square_avg[i] * rho);  // s_t
      square_avg[i] = s;
      std_[i - b] = s + eps;
      delta[i - b] = acc_delta[i] + eps;
    }
    sqrt_block(std_, std_, e - b);    // square_avg.add(eps).sqrt_()
    sqrt_block(delta, delta, e - b);  // acc_delta.add(eps).sqrt_()
#pragma omp simd
    for (int64_t i = b; i < e; i++) {
      const T d = gradient(g[i], p[i], maximize, has_wd, wd);
      const T rescaled = (delta[i - b] / std_[i - b]) * d;  // g'_t: delta.div_(std).mul_(g)
      acc_delta[i] = madd(one_minus_rho * rescaled, rescaled, acc_delta[i] * rho);  // Delta x_t
      p[i] = madd(rescaled, minus_lr, p[i]);  // param.add_(delta, alpha=-lr)
    }
  }
}

template <typename T>
void adadelta(int64_t n, void* const* ptrs, const int64_t* numels, const double* hp, int flags, int threads) {
  increment_steps(ptrs, n, 4);
  for_each_piece(n, numels, threads, [=](int64_t j, int64_t begin, int64_t end) {
    adadelta_range<T>(column<T>(ptrs, n, 0, j), column<T>(ptrs, n, 1, j), column<T>(ptrs, n, 2, j),
                      column<T>(ptrs, n, 3, j), begin, end, T(-hp[0]), T(hp[1]), T(1 - hp[1]), T(hp[2]), T(hp[3]),
                      flags & MAXIMIZE, flags & WEIGHT_DECAY);
  });
}

// adam.py `adam` (and adamw.py `adamw` with DECOUPLED). Columns: param, grad, exp_avg,
// exp_avg_sq, step, [max_exp_avg_sq if amsgrad]. hp: lr, beta1, beta2, eps, weight_decay.
template <typename T>
void adam_range(T* __restrict p, const T* __restrict g, T* __restrict exp_avg, T* __restrict exp_avg_sq,
                T* __restrict max_exp_avg_sq, int64_t begin, int64_t end, const T minus_step_size,
                const T bias_correction2_sqrt, const T one_minus_beta1, const T beta2, const T one_minus_beta2,
                const T eps, const T wd, const T decay, const bool maximize, const bool coupled_wd,
                const bool decoupled_wd, const bool amsgrad) {
  const Lerp<T> towards_g(one_minus_beta1);
  T root[BLOCK];
  for (int64_t b = begin; b < end; b += BLOCK) {
    const int64_t e = std::min(b + BLOCK, end);
#pragma omp simd
    for (int64_t i = b; i < e; i++) {
      const T d = gradient(g[i], p[i], maximize, coupled_wd, wd);
      exp_avg[i] = towards_g(exp_avg[i], d);  // v_t: exp_avg.lerp_(g, 1 - beta1)
      const T s = madd(one_minus_beta2 * d, d, exp_avg_sq[i] * beta2);  // s_t
      exp_avg_sq[i] = s;
      root[i - b] = s;
    }
    if (amsgrad) {
#pragma omp simd
      for (int64_t i = b; i < e; i++) {
        const T m = maximum(max_exp_avg_sq[i], root[i - b]);  // torch.maximum(max_exp_avg_sq, s_t)
        max_exp_avg_sq[i] = m;
        root[i - b] = m;
      }
    }
    sqrt_block(root, root, e - b);
#pragma omp simd
    for (int64_t i = b; i < e; i++) {
      const T denom = root[i - b] / bias_correction2_sqrt + eps;  // sqrt(s_t) / sqrt(1 - beta2^t) + eps
      const T x = decoupled_wd ? p[i] * decay : p[i];  // AdamW: param.mul_(1 - lr * wd) first
      p[i] = (minus_step_size * exp_avg[i]) / denom + x;  // param.addcdiv_(v_t, denom, value=-step_size)
    }
  }
}

template <typename T>
void adam(int64_t n, void* const* ptrs, const int64_t* numels, const double* hp, int flags, int threads) {
  const std::vector<double> t = increment_steps(ptrs, n, 4);
  const double lr = hp[0], beta1 = hp[1], beta2 = hp[2], weight_decay = hp[4];
  const bool has_wd = flags & WEIGHT_DECAY, decoupled = flags & DECOUPLED, amsgrad = flags & AMSGRAD;
  for_each_piece(n, numels, threads, [&](int64_t j, int64_t begin, int64_t end) {
    // the rule's Python floats: step_size = lr / (1 - beta1^t), bias_correction2 ** 0.5
    const T minus_step_size = T(-(lr / (1 - std::pow(beta1, t[j]))));
    const T bias_correction2_sqrt = T(std::pow(1 - std::pow(beta2, t[j]), 0.5));
    adam_range<T>(column<T>(ptrs, n, 0, j), column<T>(ptrs, n, 1, j), column<T>(ptrs, n, 2, j),
                  column<T>(ptrs, n, 3, j), amsgrad ? column<T>(ptrs, n, 5, j) : nullptr, begin, end,
                  minus_step_size, bias_correction2_sqrt, T(1 - beta1), T(beta2), T(1 - beta2), T(hp[3]),
                  T(weight_decay), T(1 - lr * weight_decay), flags & MAXIMIZE, has_wd && !decoupled,
                  has_wd && decoupled, amsgrad);
  });
}

}  // namespace

#define DLEXP_KERNEL(name)                                                                                   \
  void dlexp_##name##_f32(int64_t n, void* const* ptrs, const int64_t* numels, const double* hp, int flags, \
                          int threads) {                                                                     \
    name<float>(n, ptrs, numels, hp, flags, threads);                                                        \
  }                                                                                                          \
  void dlexp_##name##_f64(int64_t n, void* const* ptrs, const int64_t* numels, const double* hp, int flags, \
                          int threads) {                                                                     \
    name<double>(n, ptrs, numels, hp, flags, threads);                                                       \
  }

extern "C" {
DLEXP_KERNEL(sgd)
DLEXP_KERNEL(adagrad)
DLEXP_KERNEL(rmsprop)
DLEXP_KERNEL(adadelta)
DLEXP_KERNEL(adam)

// MKL's square roots from torch's library (null: std::sqrt), and the mode torch calls them with
void dlexp_set_sqrt(void* f32, void* f64, long long mode) {
  mkl_sqrt_f32 = reinterpret_cast<SqrtF32>(f32);
  mkl_sqrt_f64 = reinterpret_cast<SqrtF64>(f64);
  mkl_mode = mode;
}
}
