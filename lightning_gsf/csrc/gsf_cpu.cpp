// GSF's CPU kernels: each pass over the processed channels as one loop, forward and backward.
//
// Built on first use by lightning_gsf/cpu_kernels.py (torch.utils.cpp_extension) and called as
// torch.ops.lightning_gsf.*. Each kernel has a PyTorch-ops twin in lightning_gsf/gsf_fast.py (named
// at the kernel) and computes the same numbers, in float32 arithmetic, for float32 and bfloat16
// feature maps. The small per-pixel and per-channel tensors (gate, fusion weights, statistics,
// their gradients) are float32.
//
// Notation (shared/spec/gsf.md): v (N*T, P, H, W) are the processed channels, split into groups
// k = 0, 1 of P/2 channels c = j*Q + i (Q = P/4). With the gate g_k (per pixel) and the fusion
// weight w (per channel), y = g_k * v, r = v - y, s = y of the neighbouring frame (group 0 takes
// frame t + 1, group 1 frame t - 1, zero beyond the clip) and f = (1 - w) * r + w * s, written to
// output channel k*P/2 + 2*i + j (the interleave).
//
// Layouts: a feature map is addressed as (frame, channel, pixel) with one pixel stride over H*W
// (NCHW and channels-last, whole tensors or channel slices of them). Where pixels are contiguous
// the loops run over (frame, channel) planes; otherwise (channels-last) over pixels, with the
// channels innermost.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/convolution.h>
#include <ATen/ops/convolution_backward.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/zeros.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define GSF_TILES 1
#endif

// The float lanes of the widest vector of the build's instruction set. Loops over pixels or
// channels say so (simdlen): left to choose, GCC vectorises a bfloat16 loop (its values as
// uint16_t) over 64 bytes of input, 32 values, and a loop of fewer, such as a row of a 10 x 10
// map, then ran one value at a time (the gate on ResNet-50's last stages took 1.5x its float32
// time).
#if defined(__AVX512F__)
#define GSF_LANES 16
#elif defined(__AVX__)
#define GSF_LANES 8
#else
#define GSF_LANES 4
#endif

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

// A (frame, channel, pixel) view of a 4D tensor: data and element strides.
template <typename T>
struct Map {
  T* data;
  int64_t frame, channel, pixel;

  T* at(int64_t f, int64_t c) const { return data + f * frame + c * channel; }
};

template <typename T>
Map<T> map_of(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() == 4, "GSF kernels: ", name, " must be (N*T, C, H, W), got ", x.sizes());
  TORCH_CHECK(x.stride(2) == x.size(3) * x.stride(3) || x.size(2) == 1,
              "GSF kernels: ", name, "'s pixels must have one stride over H*W, got strides ", x.strides());
  return Map<T>{static_cast<T*>(x.data_ptr()), x.stride(0), x.stride(1), x.stride(3)};
}

struct Shape {
  int64_t clips, frames, half, quarter, pixels;

  int64_t frame_count() const { return clips * frames; }
  // Output channel of group k's source channel c = j*Q + i: k*P/2 + 2*i + j.
  int64_t out_channel(int64_t k, int64_t c) const { return k * half + 2 * (c % quarter) + c / quarter; }
  // The frame whose gated features group k's frame takes (-1 beyond the clip).
  int64_t shift_source(int64_t frame, int64_t k) const {
    const int64_t t = frame % frames;
    if (k == 0) return t + 1 < frames ? frame + 1 : -1;
    return t > 0 ? frame - 1 : -1;
  }
  // The frame that takes group k's frame's gated features (the shift's adjoint).
  int64_t shift_target(int64_t frame, int64_t k) const { return shift_source(frame, 1 - k); }
};

Shape shape_of(int64_t frames, int64_t processed, int64_t pixels, int64_t num_segments) {
  TORCH_CHECK(num_segments > 0 && frames % num_segments == 0,
              "GSF kernels: ", frames, " frames are not a whole number of clips of ", num_segments);
  TORCH_CHECK(processed % 4 == 0, "GSF kernels: processed channels must be a multiple of 4, got ", processed);
  return Shape{frames / num_segments, num_segments, processed / 2, processed / 4, pixels};
}

Shape shape_of(const at::Tensor& v, int64_t num_segments) {
  return shape_of(v.size(0), v.size(1), v.size(2) * v.size(3), num_segments);
}

void check_map(const at::Tensor& x, const at::Tensor& v, const char* name) {
  TORCH_CHECK(x.device().is_cpu() && x.sizes() == v.sizes() && x.scalar_type() == v.scalar_type(),
              "GSF kernels: ", name, " must be a CPU tensor like v ", v.sizes(), " ", v.scalar_type(), ", got ",
              x.sizes(), " ", x.scalar_type());
}

void check_floats(const at::Tensor& x, int64_t numel, const char* name) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous() && x.numel() == numel,
              "GSF kernels: ", name, " must be a contiguous float32 CPU tensor of ", numel, " values, got ",
              x.sizes(), " ", x.scalar_type());
}

void check_dtype(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
              "GSF kernels: float32 or bfloat16 CPU tensors only, got ", x.scalar_type(), " on ", x.device());
}

// t itself where it is a contiguous float32 tensor already (without a dispatched call), else a
// contiguous float32 copy.
at::Tensor as_floats(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat && t.is_contiguous() ? t : t.to(at::kFloat).contiguous();
}

// t's `count` values in row-major order into dst: read through t's strides where t is float32
// (a channels-last copy of a network's conv weights includes the fusion convs' (1, 2, 3, 3)
// weights: read as they are, with no dispatched copy per call), else from a float32 copy.
void copy_floats(const at::Tensor& t, int64_t count, const char* name, float* dst) {
  TORCH_CHECK(t.device().is_cpu() && t.numel() == count, "GSF kernels: ", name, " must be a CPU tensor of ", count,
              " values, got ", t.sizes(), " on ", t.device());
  constexpr int64_t kMaxDims = 8;  // (the odometer's length; more dimensions go through the copy)
  if (t.scalar_type() != at::kFloat || t.dim() > kMaxDims) {
    const at::Tensor floats = t.to(at::kFloat).contiguous();
    std::copy_n(floats.data_ptr<float>(), count, dst);
    return;
  }
  const float* data = t.data_ptr<float>();
  const int64_t dims = t.dim();
  int64_t index[kMaxDims] = {};  // the odometer of t's indices, last dimension fastest
  for (int64_t i = 0; i < count; ++i) {
    int64_t offset = 0;
    for (int64_t d = 0; d < dims; ++d) offset += index[d] * t.stride(d);
    dst[i] = data[offset];
    for (int64_t d = dims - 1; d >= 0 && ++index[d] == t.size(d); --d) index[d] = 0;
  }
}

// Runs body<T>() for the feature maps' dtype.
template <typename Body>
void dispatch(const at::Tensor& x, Body body) {
  check_dtype(x);
  if (x.scalar_type() == at::kFloat) {
    body(float{});
  } else {
    body(uint16_t{});  // bfloat16's bits
  }
}

// bfloat16 maps are handled as their uint16_t bits, converted with plain bit operations so that
// the loops vectorise (c10::BFloat16's own conversions compile to scalar code). store rounds to
// nearest even, as PyTorch does, and keeps NaN a NaN.
inline float load(float x) { return x; }
inline float load(uint16_t bits) {
  const uint32_t widened = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &widened, sizeof value);
  return value;
}

template <typename T>
inline T store(float x);
template <>
inline float store<float>(float x) { return x; }
template <>
inline uint16_t store<uint16_t>(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>(x != x ? 0x7FC0u : rounded);
}

// With AVX-512, a row of fewer than 16 pixels (fill_planes) and a small plane's means
// (frame_gate) run as vectors under a mask: left to the compiler, the values past the last
// whole vector ran one at a time (three of a 5 x 5 map's five rows, 9 of its 25 pixels). So do
// loops that GCC vectorised badly: the bfloat16 pair planes' fill (fill_pairs), the
// channels-last means (frame_gate) and blend (blend_run).
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define GSF_MASKED 1
// The first min(count, 16) lanes; count >= 0.
inline __mmask16 first_lanes(int64_t count) {
  return count >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << count) - 1u);
}
inline __m512 load_lanes(const float* p, __mmask16 lanes) { return _mm512_maskz_loadu_ps(lanes, p); }
inline __m512 load_lanes(const uint16_t* p, __mmask16 lanes) {
  const __m256i bits = _mm256_maskz_loadu_epi16(lanes, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}
// bf16_pair of each lane: store<uint16_t>'s rounding (to nearest even, NaN as 0x7FC0).
inline __m512i bf16_bits(__m512 x) {
  const __m512i bits = _mm512_castps_si512(x);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7FFF)), lsb), 16);
  return _mm512_mask_mov_epi32(rounded, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
}
inline __m512i bf16_pairs(__m512 even, __m512 odd) {
  return _mm512_or_si512(bf16_bits(even), _mm512_slli_epi32(bf16_bits(odd), 16));
}
inline void store_lanes(float* p, __mmask16 lanes, __m512 x) { _mm512_mask_storeu_ps(p, lanes, x); }
inline void store_lanes(uint16_t* p, __mmask16 lanes, __m512 x) {
  _mm256_mask_storeu_epi16(p, lanes, _mm512_cvtepi32_epi16(bf16_bits(x)));
}

// The channels-last blend of one pixel's run of 16 (or `count` < 16) channel pairs: source
// channels i and Q + i (x, x_n: the pixel's group in its frame and in the neighbour's, from
// channel i0 on, as float or bfloat16 bits; w0 / w1 the fusion weights from i0 and Q + i0 on)
// give output channels 2i and 2i + 1, f = (1 - w)(x - g x) + w (g_n x_n), written interleaved
// to dst. Both channels-last blends (in place and not) use it: the same bits.
template <typename S, typename T>
inline void blend_run(const S* x, const S* x_n, int64_t q, __m512 w0, __m512 w1, float g, float g_n, int64_t count,
                      T* dst) {
  const __mmask16 lanes = first_lanes(count);
  const __m512 gate = _mm512_set1_ps(g), gate_n = _mm512_set1_ps(g_n), one = _mm512_set1_ps(1.0f);
  auto fuse = [&](const S* from, const S* from_n, __m512 w) {
    const __m512 value = load_lanes(from, lanes);
    const __m512 residual = _mm512_fnmadd_ps(gate, value, value);
    const __m512 shifted = _mm512_mul_ps(gate_n, load_lanes(from_n, lanes));
    return _mm512_fmadd_ps(_mm512_sub_ps(one, w), residual, _mm512_mul_ps(w, shifted));
  };
  const __m512 even = fuse(x, x_n, w0), odd = fuse(x + q, x_n + q, w1);
  const __m512i low = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i high = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
  store_lanes(dst, first_lanes(2 * count), _mm512_permutex2var_ps(even, low, odd));
  if (count > 8) store_lanes(dst + 16, first_lanes(2 * count - 16), _mm512_permutex2var_ps(even, high, odd));
}
#endif

// A tensor's data as T: float, or uint16_t for bfloat16.
template <typename T>
T* data_of(const at::Tensor& x) {
  return static_cast<T*>(x.data_ptr());
}

// ---------------------------------------------------------------------------------------------
// blend: gate, shift, fuse and interleave (twin: _write_fused), optionally copying v too.

template <typename T>
void blend_kernel(const at::Tensor& v_, const float* gate, const float* weights, const at::Tensor& out_,
                  const std::optional<at::Tensor>& copy_, const Shape& s) {
  const Map<const T> v = map_of<const T>(v_, "v");
  const Map<T> out = map_of<T>(out_, "out");
  const Map<T> copy = copy_ ? map_of<T>(*copy_, "copy") : Map<T>{nullptr, 0, 0, 0};
  const int64_t pixels = s.pixels;
  auto gate_of = [&](int64_t frame, int64_t k) { return gate + (frame * 2 + k) * pixels; };

  if (v.pixel == 1 && out.pixel == 1 && (!copy.data || copy.pixel == 1)) {  // (frame, group, channel) planes
    at::parallel_for(0, s.frame_count() * 2 * s.half, 1, [&](int64_t begin, int64_t end) {
      for (int64_t index = begin; index < end; ++index) {
        const int64_t frame = index / (2 * s.half), k = index / s.half % 2, c = index % s.half;
        const float w = weights[index];
        const T* src = v.at(frame, k * s.half + c);
        const float* g = gate_of(frame, k);
        T* dst = out.at(frame, s.out_channel(k, c));
        const int64_t neighbour = s.shift_source(frame, k);
        const float has_neighbour = neighbour < 0 ? 0.0f : 1.0f;
        const T* src_n = v.at(neighbour < 0 ? frame : neighbour, k * s.half + c);
        const float* g_n = gate_of(neighbour < 0 ? frame : neighbour, k);
#pragma omp simd simdlen(GSF_LANES)
        for (int64_t p = 0; p < pixels; ++p) {
          const float x = load(src[p]);
          dst[p] = store<T>((1.0f - w) * (x - g[p] * x) + w * has_neighbour * (g_n[p] * load(src_n[p])));
        }
        if (copy.data) std::copy(src, src + pixels, copy.at(frame, k * s.half + c));
      }
    });
    return;
  }
  TORCH_CHECK(v.channel == 1 && out.channel == 1 && (!copy.data || copy.channel == 1),
              "GSF blend: expected contiguous pixels or contiguous channels");
  at::parallel_for(0, s.frame_count() * pixels, 64, [&](int64_t begin, int64_t end) {
    for (int64_t index = begin; index < end; ++index) {
      const int64_t frame = index / pixels, p = index % pixels;
      for (int64_t k = 0; k < 2; ++k) {
        const float g = gate_of(frame, k)[p];
        const T* src = v.at(frame, k * s.half) + p * v.pixel;
        T* dst = out.at(frame, k * s.half) + p * out.pixel;
        const float* w = weights + (frame * 2 + k) * s.half;
        const int64_t neighbour = s.shift_source(frame, k);
        const float g_n = neighbour < 0 ? 0.0f : gate_of(neighbour, k)[p];
        const T* src_n = v.at(neighbour < 0 ? frame : neighbour, k * s.half) + p * v.pixel;
        const int64_t q = s.quarter;
#ifdef GSF_MASKED
        for (int64_t i0 = 0; i0 < q; i0 += 16) {
          const int64_t count = std::min<int64_t>(q - i0, 16);
          const __m512 w0 = _mm512_maskz_loadu_ps(first_lanes(count), w + i0);
          const __m512 w1 = _mm512_maskz_loadu_ps(first_lanes(count), w + q + i0);
          blend_run(src + i0, src_n + i0, q, w0, w1, g, g_n, count, dst + 2 * i0);
        }
#else
#pragma omp simd simdlen(GSF_LANES)
        for (int64_t i = 0; i < q; ++i) {  // source channels i and Q + i go to 2i and 2i + 1
          const float x0 = load(src[i]), x1 = load(src[q + i]);
          dst[2 * i] = store<T>((1.0f - w[i]) * (x0 - g * x0) + w[i] * (g_n * load(src_n[i])));
          dst[2 * i + 1] = store<T>((1.0f - w[q + i]) * (x1 - g * x1) + w[q + i] * (g_n * load(src_n[q + i])));
        }
#endif
        if (copy.data) std::copy(src, src + s.half, copy.at(frame, k * s.half) + p * copy.pixel);
      }
    }
  });
}

void blend(const at::Tensor& v, const at::Tensor& gate, const at::Tensor& weights, at::Tensor out,
           int64_t num_segments, const std::optional<at::Tensor>& copy) {
  const Shape s = shape_of(v, num_segments);
  check_map(out, v, "out");
  TORCH_CHECK(!out.is_alias_of(v), "GSF blend: out must not share v's memory (blend_in_place writes over v)");
  if (copy) check_map(*copy, v, "copy");
  check_floats(gate, s.frame_count() * 2 * s.pixels, "gate (N*T, 2, H, W)");
  check_floats(weights, s.frame_count() * 2 * s.half, "weights (N*T, 2, P/2)");
  dispatch(v, [&](auto t) {
    blend_kernel<decltype(t)>(v, gate.data_ptr<float>(), weights.data_ptr<float>(), out, copy, s);
  });
}

// blend_in_place: the blend written over v itself (inference with GSF in place). Pixels in
// contiguous planes (below; channels-last further down): a frame's output channels are a permutation of its input channels, and
// each frame reads its neighbour: so each (clip, group) walks its frames in order, first
// copying the frame's planes to a scratch buffer (two frames' worth, ~400 KB on ResNet-50's first
// stage at 160 px), then writing the frame from the copies and the next frame (not yet
// overwritten).

template <typename T>
void blend_in_place_kernel(const at::Tensor& v_, const float* gate, const float* weights, const Shape& s) {
  const Map<T> v = map_of<T>(v_, "v");
  TORCH_CHECK(v.pixel == 1, "GSF blend_in_place: pixels must be contiguous");
  const int64_t pixels = s.pixels, half = s.half;
  // Many (clip, group) walks: one per task; few: the channels of each frame in parallel instead.
  const bool across_walks = s.clips * 2 >= at::get_num_threads();
  auto walk = [&](int64_t clip, int64_t k, std::vector<float>& current, std::vector<float>& previous) {
    for (int64_t t = 0; t < s.frames; ++t) {
      const int64_t frame = clip * s.frames + t;
      auto for_channels = [&](auto body) {
        if (across_walks) {
          body(0, half);
        } else {
          at::parallel_for(0, half, 1, body);
        }
      };
      for_channels([&](int64_t begin, int64_t end) {
        for (int64_t c = begin; c < end; ++c) {
          const T* src = v.at(frame, k * half + c);
          float* dst = current.data() + c * pixels;
          for (int64_t p = 0; p < pixels; ++p) dst[p] = load(src[p]);
        }
      });
      const int64_t neighbour = s.shift_source(frame, k);
      const float* g = gate + (frame * 2 + k) * pixels;
      const float* g_n = gate + ((neighbour < 0 ? frame : neighbour) * 2 + k) * pixels;
      for_channels([&](int64_t begin, int64_t end) {
        for (int64_t c = begin; c < end; ++c) {
          const float w = weights[(frame * 2 + k) * half + c];
          const float* x = current.data() + c * pixels;
          T* out = v.at(frame, s.out_channel(k, c));
          if (neighbour < 0) {
#pragma omp simd simdlen(GSF_LANES)
            for (int64_t p = 0; p < pixels; ++p) out[p] = store<T>((1.0f - w) * (x[p] - g[p] * x[p]));
          } else if (k == 0) {  // the next frame, still v's own
            const T* x_n = v.at(neighbour, k * half + c);
#pragma omp simd simdlen(GSF_LANES)
            for (int64_t p = 0; p < pixels; ++p) {
              out[p] = store<T>((1.0f - w) * (x[p] - g[p] * x[p]) + w * (g_n[p] * load(x_n[p])));
            }
          } else {  // the previous frame, overwritten: its copy
            const float* x_n = previous.data() + c * pixels;
#pragma omp simd simdlen(GSF_LANES)
            for (int64_t p = 0; p < pixels; ++p) {
              out[p] = store<T>((1.0f - w) * (x[p] - g[p] * x[p]) + w * (g_n[p] * x_n[p]));
            }
          }
        }
      });
      std::swap(current, previous);
    }
  };
  if (across_walks) {
    at::parallel_for(0, s.clips * 2, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> current(half * pixels), previous(half * pixels);
      for (int64_t index = begin; index < end; ++index) walk(index / 2, index % 2, current, previous);
    });
  } else {
    std::vector<float> current(half * pixels), previous(half * pixels);
    for (int64_t index = 0; index < s.clips * 2; ++index) walk(index / 2, index % 2, current, previous);
  }
}

// Channels innermost: each task copies a block of pixels of every frame of one clip (all P
// channels, ~64 KB at T=16 on ResNet-50's first stage) and writes the block's output from the
// copy, so that no frame reads what another has overwritten.
template <typename T>
void blend_in_place_channels_last_kernel(const at::Tensor& v_, const float* gate, const float* weights,
                                         const Shape& s) {
  const Map<T> v = map_of<T>(v_, "v");
  TORCH_CHECK(v.channel == 1, "GSF blend_in_place: expected contiguous pixels or contiguous channels");
  constexpr int64_t block = 16;
  const int64_t pixels = s.pixels, half = s.half, processed = 2 * half, q = s.quarter;
  const int64_t blocks = (pixels + block - 1) / block;
  at::parallel_for(0, s.clips * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> copy(s.frames * block * processed);
    for (int64_t index = begin; index < end; ++index) {
      const int64_t clip = index / blocks, first = index % blocks * block, last = std::min(first + block, pixels);
      auto copy_of = [&](int64_t t, int64_t p) { return copy.data() + (t * block + p - first) * processed; };
      for (int64_t t = 0; t < s.frames; ++t) {
        for (int64_t p = first; p < last; ++p) {
          const T* src = v.at(clip * s.frames + t, 0) + p * v.pixel;
          float* dst = copy_of(t, p);
#pragma omp simd simdlen(GSF_LANES)
          for (int64_t c = 0; c < processed; ++c) dst[c] = load(src[c]);
        }
      }
#ifdef GSF_MASKED
      // Each (frame, group) 16 channel pairs at a time across the block's pixels, the fusion
      // weights loaded once (a loop over a pixel's pairs ran a vector or two per pixel, its
      // set-up and weights again each time).
      for (int64_t t = 0; t < s.frames; ++t) {
        const int64_t frame = clip * s.frames + t;
        for (int64_t k = 0; k < 2; ++k) {
          const int64_t neighbour = s.shift_source(frame, k);
          const float* g = gate + (frame * 2 + k) * pixels;
          const float* g_n = neighbour < 0 ? nullptr : gate + (neighbour * 2 + k) * pixels;
          const float* w = weights + (frame * 2 + k) * half;
          for (int64_t i0 = 0; i0 < q; i0 += 16) {
            const int64_t count = std::min<int64_t>(q - i0, 16);
            const __m512 w0 = _mm512_maskz_loadu_ps(first_lanes(count), w + i0);
            const __m512 w1 = _mm512_maskz_loadu_ps(first_lanes(count), w + q + i0);
            for (int64_t p = first; p < last; ++p) {
              const float* x = copy_of(t, p) + k * half + i0;
              const float* x_n = neighbour < 0 ? x : copy_of(neighbour - clip * s.frames, p) + k * half + i0;
              blend_run(x, x_n, q, w0, w1, g[p], neighbour < 0 ? 0.0f : g_n[p], count,
                        v.at(frame, k * half) + p * v.pixel + 2 * i0);
            }
          }
        }
      }
#else
      for (int64_t t = 0; t < s.frames; ++t) {
        const int64_t frame = clip * s.frames + t;
        for (int64_t p = first; p < last; ++p) {
          for (int64_t k = 0; k < 2; ++k) {
            const int64_t neighbour = s.shift_source(frame, k);
            const float g = gate[(frame * 2 + k) * pixels + p];
            const float g_n = neighbour < 0 ? 0.0f : gate[(neighbour * 2 + k) * pixels + p];
            const float* x = copy_of(t, p) + k * half;
            const float* x_n = (neighbour < 0 ? x : copy_of(neighbour - clip * s.frames, p) + k * half);
            const float* w = weights + (frame * 2 + k) * half;
            T* dst = v.at(frame, k * half) + p * v.pixel;
#pragma omp simd simdlen(GSF_LANES)
            for (int64_t i = 0; i < q; ++i) {  // source channels i and Q + i go to 2i and 2i + 1
              dst[2 * i] = store<T>((1.0f - w[i]) * (x[i] - g * x[i]) + w[i] * (g_n * x_n[i]));
              dst[2 * i + 1] =
                  store<T>((1.0f - w[q + i]) * (x[q + i] - g * x[q + i]) + w[q + i] * (g_n * x_n[q + i]));
            }
          }
        }
      }
#endif
    }
  });
}

template <typename T>
void blend_in_place_of(const at::Tensor& v, const float* gate, const float* weights, const Shape& s) {
  if (v.stride(3) == 1) {  // (a 1 x 1 map in channels-last memory has pixel stride C: the other kernel)
    blend_in_place_kernel<T>(v, gate, weights, s);
  } else {
    blend_in_place_channels_last_kernel<T>(v, gate, weights, s);
  }
}

void blend_in_place(at::Tensor v, const at::Tensor& gate, const at::Tensor& weights, int64_t num_segments) {
  const Shape s = shape_of(v, num_segments);
  check_floats(gate, s.frame_count() * 2 * s.pixels, "gate (N*T, 2, H, W)");
  check_floats(weights, s.frame_count() * 2 * s.half, "weights (N*T, 2, P/2)");
  dispatch(v, [&](auto t) {
    blend_in_place_of<decltype(t)>(v, gate.data_ptr<float>(), weights.data_ptr<float>(), s);
  });
}

// ---------------------------------------------------------------------------------------------
// blend_backward (twin: _GateShiftFuse.backward). With G the output gradient de-interleaved:
// grad_r = G (1 - w), grad_y = G w at the frame that took y, d = grad_y - grad_r; then
// grad_v = grad_r + g d, grad_g = sum over the group's channels of v d and grad_w = sum over
// pixels of G (s - r).

template <typename T>
void blend_backward_kernel(const at::Tensor& grad_out_, const at::Tensor& v_, const float* gate, const float* weights,
                           const at::Tensor& grad_v_, float* grad_gate, float* grad_weights, const Shape& s) {
  const Map<const T> grad_out = map_of<const T>(grad_out_, "grad_out");
  const Map<const T> v = map_of<const T>(v_, "v");
  const Map<T> grad_v = map_of<T>(grad_v_, "grad_v");
  const int64_t pixels = s.pixels;
  auto gate_of = [&](int64_t frame, int64_t k) { return gate + (frame * 2 + k) * pixels; };
  const bool planes = v.pixel == 1 && grad_out.pixel == 1 && grad_v.pixel == 1;
  TORCH_CHECK(planes || (v.channel == 1 && grad_out.channel == 1 && grad_v.channel == 1),
              "GSF blend backward: expected contiguous pixels or contiguous channels");

  // One (frame, group) per step: its gate gradient sums over the group's channels.
  at::parallel_for(0, s.frame_count() * 2, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> channel_sums(s.half);
    for (int64_t index = begin; index < end; ++index) {
      const int64_t frame = index / 2, k = index % 2;
      const float* g = gate_of(frame, k);
      float* grad_g = grad_gate + index * pixels;
      const int64_t source = s.shift_source(frame, k), target = s.shift_target(frame, k);
      const float has_source = source < 0 ? 0.0f : 1.0f, has_target = target < 0 ? 0.0f : 1.0f;
      const int64_t source_frame = source < 0 ? frame : source, target_frame = target < 0 ? frame : target;
      const float* g_s = gate_of(source_frame, k);
      const float* w = weights + index * s.half;
      const float* w_t = weights + (target_frame * 2 + k) * s.half;
      if (planes) {
        std::fill(grad_g, grad_g + pixels, 0.0f);
        for (int64_t c = 0; c < s.half; ++c) {
          const int64_t channel = k * s.half + c, out_channel = s.out_channel(k, c);
          const float wc = w[c], wc_t = has_target * w_t[c];
          const T* x = v.at(frame, channel);
          const T* x_s = v.at(source_frame, channel);
          const T* grad_f = grad_out.at(frame, out_channel);
          const T* grad_f_t = grad_out.at(target_frame, out_channel);
          T* grad_x = grad_v.at(frame, channel);
          float grad_w = 0.0f;
#pragma omp simd simdlen(GSF_LANES) reduction(+ : grad_w)
          for (int64_t p = 0; p < pixels; ++p) {
            const float xp = load(x[p]), gf = load(grad_f[p]);
            const float residual = xp - g[p] * xp, shifted = has_source * g_s[p] * load(x_s[p]);
            const float d = wc_t * load(grad_f_t[p]) - (1.0f - wc) * gf;
            grad_x[p] = store<T>((1.0f - wc) * gf + g[p] * d);
            grad_g[p] += xp * d;
            grad_w += gf * (shifted - residual);
          }
          grad_weights[index * s.half + c] = grad_w;
        }
        continue;
      }
      std::fill(channel_sums.begin(), channel_sums.end(), 0.0f);
      float* sums = channel_sums.data();
      for (int64_t p = 0; p < pixels; ++p) {
        const float gp = g[p], g_sp = has_source * g_s[p];
        const T* x = v.at(frame, k * s.half) + p * v.pixel;
        const T* x_s = v.at(source_frame, k * s.half) + p * v.pixel;
        const T* grad_f = grad_out.at(frame, k * s.half) + p * grad_out.pixel;
        const T* grad_f_t = grad_out.at(target_frame, k * s.half) + p * grad_out.pixel;
        T* grad_x = grad_v.at(frame, k * s.half) + p * grad_v.pixel;
        float grad_gp = 0.0f;
        const int64_t q = s.quarter;
        // source channels i and Q + i came from output channels 2i and 2i + 1: both in one
        // iteration, so that the loop vectorises (pairs of interleaved loads) with one reduction
#pragma omp simd simdlen(GSF_LANES) reduction(+ : grad_gp)
        for (int64_t i = 0; i < q; ++i) {
          const float x0 = load(x[i]), x1 = load(x[q + i]);
          const float gf0 = load(grad_f[2 * i]), gf1 = load(grad_f[2 * i + 1]);
          const float d0 = has_target * w_t[i] * load(grad_f_t[2 * i]) - (1.0f - w[i]) * gf0;
          const float d1 = has_target * w_t[q + i] * load(grad_f_t[2 * i + 1]) - (1.0f - w[q + i]) * gf1;
          grad_x[i] = store<T>((1.0f - w[i]) * gf0 + gp * d0);
          grad_x[q + i] = store<T>((1.0f - w[q + i]) * gf1 + gp * d1);
          grad_gp += x0 * d0 + x1 * d1;
          sums[i] += gf0 * (g_sp * load(x_s[i]) - (x0 - gp * x0));
          sums[q + i] += gf1 * (g_sp * load(x_s[q + i]) - (x1 - gp * x1));
        }
        grad_g[p] = grad_gp;
      }
      std::copy(channel_sums.begin(), channel_sums.end(), grad_weights + index * s.half);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> blend_backward(const at::Tensor& grad_out, const at::Tensor& v,
                                                              const at::Tensor& gate, const at::Tensor& weights,
                                                              int64_t num_segments) {
  const Shape s = shape_of(v, num_segments);
  check_map(grad_out, v, "grad_out");
  check_floats(gate, s.frame_count() * 2 * s.pixels, "gate (N*T, 2, H, W)");
  check_floats(weights, s.frame_count() * 2 * s.half, "weights (N*T, 2, P/2)");
  at::Tensor grad_v = at::empty_like(v, at::MemoryFormat::Preserve);
  const auto floats = v.options().dtype(at::kFloat);
  at::Tensor grad_gate = at::empty({s.frame_count(), 2, v.size(2), v.size(3)}, floats);
  at::Tensor grad_weights = at::empty({s.frame_count(), 2, s.half}, floats);
  dispatch(v, [&](auto t) {
    blend_backward_kernel<decltype(t)>(grad_out, v, gate.data_ptr<float>(), weights.data_ptr<float>(), grad_v,
                                       grad_gate.data_ptr<float>(), grad_weights.data_ptr<float>(), s);
  });
  return {grad_v, grad_gate, grad_weights};
}

// ---------------------------------------------------------------------------------------------
// Transposing between channels-last maps and per-channel rows of pixels, for the loops that
// read one layout and write the other: 8 x 8 tiles transposed in registers (AVX2), the rest
// one value at a time.

#ifdef GSF_TILES
inline __m256 load_8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load_8(const uint16_t* p) {  // bfloat16: the upper half of a float's bits
  const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
}

inline void transpose_8x8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// 8 runs of 8 values (run i at src + i * src_stride) written transposed, as float: value j of
// every run to dst + j * dst_stride. Given scale and shift (one per value of a run: channels),
// relu(x * scale + shift) of each.
template <typename T>
inline void transposed_tile(const T* src, int64_t src_stride, float* dst, int64_t dst_stride,
                            const float* scale = nullptr, const float* shift = nullptr) {
  __m256 r[8];
  for (int i = 0; i < 8; ++i) r[i] = load_8(src + i * src_stride);
  if (scale) {
    const __m256 a = _mm256_loadu_ps(scale), b = _mm256_loadu_ps(shift), zero = _mm256_setzero_ps();
    // max(0, x): a NaN stays a NaN, as through std::max(x, 0) and torch.relu (max(x, 0) gives 0)
    for (int i = 0; i < 8; ++i) r[i] = _mm256_max_ps(zero, _mm256_fmadd_ps(r[i], a, b));
  }
  transpose_8x8(r);
  for (int i = 0; i < 8; ++i) _mm256_storeu_ps(dst + i * dst_stride, r[i]);
}
#endif

// `count` pixels x `channels` channels of a channels-last run (pixel p's channel c at
// src[p * stride + c]) into float rows, channel c's pixels at rows + c * row_stride; with scale
// and shift, relu(x * scale[c] + shift[c]).
template <typename T>
void rows_of_channels_last(const T* src, int64_t stride, int64_t channels, int64_t count, float* rows,
                           int64_t row_stride, const float* scale = nullptr, const float* shift = nullptr) {
  auto value = [&](int64_t p, int64_t c) {
    const float x = load(src[p * stride + c]);
    return scale ? std::max(x * scale[c] + shift[c], 0.0f) : x;
  };
  int64_t p = 0;
#ifdef GSF_TILES
  for (; p + 8 <= count; p += 8) {
    int64_t c = 0;
    for (; c + 8 <= channels; c += 8) {
      transposed_tile(src + p * stride + c, stride, rows + c * row_stride + p, row_stride, scale ? scale + c : nullptr,
                      shift ? shift + c : nullptr);
    }
    for (; c < channels; ++c) {
      for (int64_t i = p; i < p + 8; ++i) rows[c * row_stride + i] = value(i, c);
    }
  }
#endif
  for (; p < count; ++p) {
    for (int64_t c = 0; c < channels; ++c) rows[c * row_stride + p] = value(p, c);
  }
}

// The reverse: `count` pixels of `channels` rows (channel c's pixel p at src[c * stride + p])
// into a channels-last float block, pixel p's channels at dst + p * dst_stride.
template <typename T>
void channels_last_of_rows(const T* src, int64_t stride, int64_t channels, int64_t count, float* dst,
                           int64_t dst_stride) {
  int64_t p = 0;
#ifdef GSF_TILES
  for (; p + 8 <= count; p += 8) {
    int64_t c = 0;
    for (; c + 8 <= channels; c += 8) transposed_tile(src + c * stride + p, stride, dst + p * dst_stride + c, dst_stride);
    for (; c < channels; ++c) {
      for (int64_t i = p; i < p + 8; ++i) dst[i * dst_stride + c] = load(src[c * stride + i]);
    }
  }
#endif
  for (; p < count; ++p) {
    for (int64_t c = 0; c < channels; ++c) dst[p * dst_stride + c] = load(src[c * stride + p]);
  }
}

// ---------------------------------------------------------------------------------------------
// channel_moments: the batch norm's statistics of v (N*T, P, H, W), per channel the mean and
// the biased variance, float32, in two passes (the second over v - mean, which does not
// cancel): float sums over a frame's pixels, added across frames in double, each channel's in
// a fixed order whatever the thread count (twin: _batch_statistics).

template <typename T>
void channel_moments_kernel(const at::Tensor& v_, float* mean, float* var) {
  const Map<const T> v = map_of<const T>(v_, "v");
  const int64_t frames = v_.size(0), channels = v_.size(1), pixels = v_.size(2) * v_.size(3);
  const double count = static_cast<double>(frames * pixels);
  if (v.pixel == 1) {
    at::parallel_for(0, channels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        double total = 0.0;
        for (int64_t frame = 0; frame < frames; ++frame) {
          const T* x = v.at(frame, c);
          float partial = 0.0f;
#pragma omp simd simdlen(GSF_LANES) reduction(+ : partial)
          for (int64_t p = 0; p < pixels; ++p) partial += load(x[p]);
          total += partial;
        }
        const float m = static_cast<float>(total / count);
        double squares = 0.0;
        for (int64_t frame = 0; frame < frames; ++frame) {
          const T* x = v.at(frame, c);
          float partial = 0.0f;
#pragma omp simd simdlen(GSF_LANES) reduction(+ : partial)
          for (int64_t p = 0; p < pixels; ++p) {
            const float d = load(x[p]) - m;
            partial += d * d;
          }
          squares += partial;
        }
        mean[c] = m;
        var[c] = static_cast<float>(squares / count);
      }
    });
    return;
  }
  // Channels innermost: per-frame sums (channels in a vector loop), added in frame order.
  std::vector<float> partial(frames * channels);
  auto frame_sums = [&](const float* centre) {
    at::parallel_for(0, frames, 1, [&](int64_t begin, int64_t end) {
      for (int64_t frame = begin; frame < end; ++frame) {
        float* sums = partial.data() + frame * channels;
        std::fill(sums, sums + channels, 0.0f);
        for (int64_t p = 0; p < pixels; ++p) {
          const T* x = v.at(frame, 0) + p * v.pixel;
          if (centre) {
#pragma omp simd simdlen(GSF_LANES)
            for (int64_t c = 0; c < channels; ++c) {
              const float d = load(x[c]) - centre[c];
              sums[c] += d * d;
            }
          } else {
#pragma omp simd simdlen(GSF_LANES)
            for (int64_t c = 0; c < channels; ++c) sums[c] += load(x[c]);
          }
        }
      }
    });
  };
  auto over_frames = [&](float* out) {
    for (int64_t c = 0; c < channels; ++c) {
      double total = 0.0;
      for (int64_t frame = 0; frame < frames; ++frame) total += partial[frame * channels + c];
      out[c] = static_cast<float>(total / count);
    }
  };
  frame_sums(nullptr);
  over_frames(mean);
  frame_sums(mean);
  over_frames(var);
}

std::tuple<at::Tensor, at::Tensor> channel_moments(const at::Tensor& v) {
  check_dtype(v);
  TORCH_CHECK(v.dim() == 4 && v.size(0) * v.size(2) * v.size(3) > 0,
              "GSF channel_moments: v must be a non-empty (N*T, P, H, W) map, got ", v.sizes());
  TORCH_CHECK(v.stride(3) == 1 || v.stride(1) == 1,
              "GSF channel_moments: v's pixels or channels must be contiguous, got strides ", v.strides());
  at::Tensor mean = at::empty({v.size(1)}, v.options().dtype(at::kFloat));
  at::Tensor var = at::empty({v.size(1)}, v.options().dtype(at::kFloat));
  dispatch(v, [&](auto t) { channel_moments_kernel<decltype(t)>(v, mean.data_ptr<float>(), var.data_ptr<float>()); });
  return {mean, var};
}

// ---------------------------------------------------------------------------------------------
// norm_relu: relu(v * scale + shift) per channel (the batch norm with given statistics, then the
// ReLU), from v in any layout into a contiguous NCHW out (twin: _norm_relu).

template <typename T>
void norm_relu_kernel(const at::Tensor& v_, const float* scale, const float* shift, T* out) {
  const Map<const T> v = map_of<const T>(v_, "v");
  const int64_t frames = v_.size(0), channels = v_.size(1), pixels = v_.size(2) * v_.size(3);
  if (v.pixel == 1) {
    at::parallel_for(0, frames * channels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t index = begin; index < end; ++index) {
        const int64_t c = index % channels;
        const T* src = v.at(index / channels, c);
        T* dst = out + index * pixels;
        const float a = scale[c], b = shift[c];
#pragma omp simd simdlen(GSF_LANES)
        for (int64_t p = 0; p < pixels; ++p) dst[p] = store<T>(std::max(load(src[p]) * a + b, 0.0f));
      }
    });
    return;
  }
  // Channels innermost: a block of pixels at a time, transposed into per-channel rows (in L1),
  // then written channel by channel.
  constexpr int64_t block = 64;
  const int64_t blocks = (pixels + block - 1) / block;
  at::parallel_for(0, frames * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> rows(channels * block);
    for (int64_t index = begin; index < end; ++index) {
      const int64_t frame = index / blocks, first = index % blocks * block;
      const int64_t count = std::min(block, pixels - first);
      rows_of_channels_last(v.at(frame, 0) + first * v.pixel, v.pixel, channels, count, rows.data(), block, scale,
                            shift);
      for (int64_t c = 0; c < channels; ++c) {
        const float* src = rows.data() + c * block;
        T* dst = out + (frame * channels + c) * pixels + first;
#pragma omp simd simdlen(GSF_LANES)
        for (int64_t p = 0; p < count; ++p) dst[p] = store<T>(src[p]);
      }
    }
  });
}

void norm_relu(const at::Tensor& v, const at::Tensor& scale, const at::Tensor& shift, at::Tensor out) {
  TORCH_CHECK(out.is_contiguous(), "GSF norm_relu: out must be contiguous");
  check_map(out, v, "out");
  check_floats(scale, v.size(1), "scale");
  check_floats(shift, v.size(1), "shift");
  dispatch(v, [&](auto t) {
    using T = decltype(t);
    norm_relu_kernel<T>(v, scale.data_ptr<float>(), shift.data_ptr<float>(), data_of<T>(out));
  });
}

// norm_relu_backward: the ReLU's gradient mask applied in place to grad (the activation's
// gradient, contiguous NCHW), and the batch norm's per-channel sums of the result and of the
// result times xhat = (v - mean) * invstd (twin: threshold_backward, native_batch_norm_backward).

template <typename T>
void norm_relu_backward_kernel(T* grad, const at::Tensor& v_, const float* scale, const float* shift,
                               const float* mean, const float* invstd, float* sum_grad, float* sum_grad_xhat) {
  const Map<const T> v = map_of<const T>(v_, "v");
  const int64_t frames = v_.size(0), channels = v_.size(1), pixels = v_.size(2) * v_.size(3);
  if (v.pixel != 1) {
    // Channels innermost: per frame, a block of pixels at a time transposed into per-channel
    // rows (in L1), then channel by channel (reading each channel's pixels in turn would walk
    // the frame once per channel), into per-frame partial sums that are added in frame order
    // (the same on any number of threads).
    constexpr int64_t block = 64;
    std::vector<float> partial(frames * 2 * channels, 0.0f);
    at::parallel_for(0, frames, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> rows(channels * block);
      for (int64_t frame = begin; frame < end; ++frame) {
        float* totals = partial.data() + frame * 2 * channels;
        float* totals_xhat = totals + channels;
        for (int64_t first = 0; first < pixels; first += block) {
          const int64_t count = std::min(block, pixels - first);
          rows_of_channels_last(v.at(frame, 0) + first * v.pixel, v.pixel, channels, count, rows.data(), block);
          for (int64_t c = 0; c < channels; ++c) {
            const float a = scale[c], b = shift[c], m = mean[c], is = invstd[c];
            const float* x = rows.data() + c * block;
            T* g = grad + (frame * channels + c) * pixels + first;
            float total = 0.0f, total_xhat = 0.0f;
#pragma omp simd simdlen(GSF_LANES) reduction(+ : total, total_xhat)
            for (int64_t p = 0; p < count; ++p) {
              const float xp = x[p], gp = xp * a + b > 0.0f ? load(g[p]) : 0.0f;
              g[p] = store<T>(gp);
              total += gp;
              total_xhat += gp * (xp - m) * is;
            }
            totals[c] += total;
            totals_xhat[c] += total_xhat;
          }
        }
      }
    });
    for (int64_t c = 0; c < channels; ++c) {
      float total = 0.0f, total_xhat = 0.0f;
      for (int64_t frame = 0; frame < frames; ++frame) {
        total += partial[frame * 2 * channels + c];
        total_xhat += partial[(frame * 2 + 1) * channels + c];
      }
      sum_grad[c] = total;
      sum_grad_xhat[c] = total_xhat;
    }
    return;
  }
  at::parallel_for(0, channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const float a = scale[c], b = shift[c], m = mean[c], is = invstd[c];
      float total = 0.0f, total_xhat = 0.0f;
      for (int64_t frame = 0; frame < frames; ++frame) {
        const T* x = v.at(frame, c);
        T* g = grad + (frame * channels + c) * pixels;
#pragma omp simd simdlen(GSF_LANES) reduction(+ : total, total_xhat)
        for (int64_t p = 0; p < pixels; ++p) {
          const float xp = load(x[p]), gp = xp * a + b > 0.0f ? load(g[p]) : 0.0f;
          g[p] = store<T>(gp);
          total += gp;
          total_xhat += gp * (xp - m) * is;
        }
      }
      sum_grad[c] = total;
      sum_grad_xhat[c] = total_xhat;
    }
  });
}

std::tuple<at::Tensor, at::Tensor> norm_relu_backward(at::Tensor grad, const at::Tensor& v, const at::Tensor& scale,
                                                      const at::Tensor& shift, const at::Tensor& mean,
                                                      const at::Tensor& invstd) {
  TORCH_CHECK(grad.is_contiguous(), "GSF norm_relu_backward: grad must be contiguous");
  check_map(grad, v, "grad");
  const int64_t channels = v.size(1);
  check_floats(scale, channels, "scale");
  check_floats(shift, channels, "shift");
  check_floats(mean, channels, "mean");
  check_floats(invstd, channels, "invstd");
  at::Tensor sum_grad = at::empty({channels}, v.options().dtype(at::kFloat));
  at::Tensor sum_grad_xhat = at::empty({channels}, v.options().dtype(at::kFloat));
  dispatch(v, [&](auto t) {
    using T = decltype(t);
    norm_relu_backward_kernel<T>(data_of<T>(grad), v, scale.data_ptr<float>(), shift.data_ptr<float>(),
                                 mean.data_ptr<float>(), invstd.data_ptr<float>(), sum_grad.data_ptr<float>(),
                                 sum_grad_xhat.data_ptr<float>());
  });
  return {sum_grad, sum_grad_xhat};
}

// ---------------------------------------------------------------------------------------------
// gate: tanh(conv3d(relu(bn(v))) + bias), (N*T, 2, H, W) float32, straight from v (twin:
// norm_relu, the products matmul, _fold_taps, _sum_temporal_taps, tanh). Per (frame, group):
// relu(v * scale + shift) into a zero-bordered float32 buffer, then the conv's 3x3 spatial part
// as a direct convolution, the three temporal taps of each pixel at once; then each frame's gate
// sums its own centre tap and its neighbours' outer taps within the clip. weight is the conv's
// (2, P/2, 3, 3, 3) (group, channel, kt, kh, kw): temporal tap kt of frame t feeds frame t + 1 - kt.
// Given means (N*T, 2, P) float32, it also writes each frame's spatial means of v (row 0) and of
// g_k v for the channels of group k (row 1), the fusion weights' input (twin: _spatial_means).
// gate_backward: the adjoint of the fold alone, from the pre-activation's gradient grad_z
// (N*T, 2, H*W) to the 27 products per pixel, (N*T, 2, 27, H*W) ordered (kt, kh, kw) with the
// spatial taps flipped, which the backward's matmuls take (twin: _unfold_taps).

// The widest float vector of the build's instruction set, as a GCC vector (the direct
// convolution keeps a block of them per temporal tap in registers).
// kBlock vectors at a time: 3 * kBlock accumulators, a loaded vector and 3 weights fit the
// 32 vector registers of AVX-512 with 6, the 16 of AVX2 / SSE2 with 4 (6 measured 1.4x slower
// with AVX2, spilling; with AVX-512 6 ran ~5 % faster than 4).
constexpr int64_t kLanes = GSF_LANES;
#if defined(__AVX512F__)
constexpr int64_t kBlock = 6;
#else
constexpr int64_t kBlock = 4;
#endif
typedef float Vector __attribute__((vector_size(kLanes * sizeof(float))));

inline Vector load_vector(const float* p) {
  Vector v;
  std::memcpy(&v, p, sizeof v);  // an unaligned vector load
  return v;
}

// Makes the compiler keep x in a register: the direct convolution's loaded vectors each feed
// three FMAs, and GCC otherwise folds the load into each of them as a memory operand, three
// loads (most of them split across two cache lines) instead of one. On an Intel Xeon with two
// AVX-512 FMA units that made the loops load-bound at ~42 G multiply-adds/s; held in registers
// they ran ~76 G (a standalone copy of taps_of_block, 2026-11-29); with AVX2 it made no
// difference (~54 G either way). The arithmetic is the same.
inline void keep_in_register(Vector& x) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  asm("" : "+v"(x));
#else
  (void)x;
#endif
}

template <int64_t Vectors>
void taps_of_block(const float* planes, int64_t plane, int64_t row, const float* weight, int64_t half, float* sums,
                   int64_t tap_stride) {
  Vector sum0[Vectors] = {}, sum1[Vectors] = {}, sum2[Vectors] = {};
  for (int64_t c = 0; c < half; ++c) {
    const float* wc = weight + c * 27;
    const float* base = planes + c * plane;
    for (int64_t kh = 0; kh < 3; ++kh) {
      for (int64_t kw = 0; kw < 3; ++kw) {
        const float* src = base + kh * row + kw;
        const float w0 = wc[kh * 3 + kw], w1 = wc[9 + kh * 3 + kw], w2 = wc[18 + kh * 3 + kw];
#pragma GCC unroll 8
        for (int64_t b = 0; b < Vectors; ++b) {
          Vector value = load_vector(src + b * kLanes);
          keep_in_register(value);
          sum0[b] += w0 * value;
          sum1[b] += w1 * value;
          sum2[b] += w2 * value;
        }
      }
    }
  }
#pragma GCC unroll 8
  for (int64_t b = 0; b < Vectors; ++b) {
    std::memcpy(sums + b * kLanes, &sum0[b], sizeof(Vector));
    std::memcpy(sums + tap_stride + b * kLanes, &sum1[b], sizeof(Vector));
    std::memcpy(sums + 2 * tap_stride + b * kLanes, &sum2[b], sizeof(Vector));
  }
}

// bfloat16 maps on CPUs with AVX512-BF16: the direct convolution in vdpbf16ps, each instruction
// two multiply-adds per float lane (a pair of channels) where the float32 FMAs above do one.
// relu(bn(v)) and the weights are rounded to bfloat16 first, as autocast rounds a convolution's
// inputs; the products are summed in float32. The build's ISA level (x86-64-v4) does not
// include the extension, so these functions are compiled for it alone and chosen at run time
// (bf16_dot_products). The pairing below is plain C++; only the kernel and the check need the
// extension.
//
// They pay only where vdpbf16ps does more multiply-adds a cycle than the FMAs: on the AMD
// EPYC where they were added (the ResNet-50 gate 4.44 -> 2.77 ms a clip, 2026-11-26). On an
// Intel Xeon with AVX512-BF16, AMX and two AVX-512 FMA units it did 56 G multiply-adds/s in a
// register-only loop, the FMAs 113 G, and bf16 inference's GSF calls took 8.6-9.3 ms a clip
// with it, 7.6-8.7 without (12 / 10 channels-last; scripts/compare_cpu_kernels.py,
// 2026-11-29). So on Intel's CPUs the bfloat16 gate takes the float32 FMAs by default.
// LIGHTNING_GSF_CPU_BF16_DOT in the environment overrides that: 0 never, any other value
// wherever the CPU has AVX512-BF16.

// Two floats as one 32-bit lane of bfloat16 pairs: low half `even`, high half `odd`.
inline uint32_t bf16_pair(float even, float odd) {
  return static_cast<uint32_t>(store<uint16_t>(even)) | (static_cast<uint32_t>(store<uint16_t>(odd)) << 16);
}

// The float planes of a group's channels (each `plane` floats) as planes of channel pairs (a
// group's channel count, P/2, is even: P is a multiple of 4, as shape_of checks).
void pair_planes(const float* planes, int64_t channels, int64_t plane, uint32_t* pairs) {
  for (int64_t j = 0; j < channels / 2; ++j) {
    const float* even = planes + 2 * j * plane;
    const float* odd = even + plane;
    uint32_t* to = pairs + j * plane;
#pragma omp simd simdlen(GSF_LANES)
    for (int64_t q = 0; q < plane; ++q) to[q] = bf16_pair(even[q], odd[q]);
  }
}

// The conv's weight (2, P/2, 27) as (2, P/4, 27) bfloat16 pairs of consecutive channels.
std::vector<uint32_t> pair_weights(const float* weight, int64_t half) {
  const int64_t pairs = half / 2;
  std::vector<uint32_t> paired(2 * pairs * 27);
  for (int64_t k = 0; k < 2; ++k) {
    for (int64_t j = 0; j < pairs; ++j) {
      const float* even = weight + (k * half + 2 * j) * 27;
      for (int64_t tap = 0; tap < 27; ++tap) paired[(k * pairs + j) * 27 + tap] = bf16_pair(even[tap], even[27 + tap]);
    }
  }
  return paired;
}

#if defined(__AVX512F__) && defined(__GNUC__) && !defined(__clang__)
#define GSF_BF16_DOT 1

bool bf16_dot_products() {
  static const bool chosen = [] {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512bf16")) return false;
    const char* setting = std::getenv("LIGHTNING_GSF_CPU_BF16_DOT");
    if (setting != nullptr) return std::strcmp(setting, "0") != 0;
    return !__builtin_cpu_is("intel");
  }();
  return chosen;
}

// taps_of_block over channel pairs: the same sums, each vdpbf16ps adding a pair's two products.
template <int64_t Vectors>
__attribute__((target("avx512bf16"))) void taps_of_block_bf16(const uint32_t* pairs, int64_t plane, int64_t row,
                                                                const uint32_t* weight, int64_t pair_count,
                                                                float* sums, int64_t tap_stride) {
  static_assert(kLanes == 16, "one vdpbf16ps lane per float lane of AVX-512");
  __m512 sum0[Vectors], sum1[Vectors], sum2[Vectors];
  for (int64_t b = 0; b < Vectors; ++b) sum0[b] = sum1[b] = sum2[b] = _mm512_setzero_ps();
  for (int64_t j = 0; j < pair_count; ++j) {
    const uint32_t* wj = weight + j * 27;
    const uint32_t* base = pairs + j * plane;
    for (int64_t kh = 0; kh < 3; ++kh) {
      for (int64_t kw = 0; kw < 3; ++kw) {
        const uint32_t* src = base + kh * row + kw;
        const __m512bh w0 = (__m512bh)_mm512_set1_epi32(static_cast<int>(wj[kh * 3 + kw]));
        const __m512bh w1 = (__m512bh)_mm512_set1_epi32(static_cast<int>(wj[9 + kh * 3 + kw]));
        const __m512bh w2 = (__m512bh)_mm512_set1_epi32(static_cast<int>(wj[18 + kh * 3 + kw]));
#pragma GCC unroll 8
        for (int64_t b = 0; b < Vectors; ++b) {
          const __m512bh value = (__m512bh)_mm512_loadu_si512(src + b * kLanes);
          sum0[b] = _mm512_dpbf16_ps(sum0[b], value, w0);
          sum1[b] = _mm512_dpbf16_ps(sum1[b], value, w1);
          sum2[b] = _mm512_dpbf16_ps(sum2[b], value, w2);
        }
      }
    }
  }
  for (int64_t b = 0; b < Vectors; ++b) {
    _mm512_storeu_ps(sums + b * kLanes, sum0[b]);
    _mm512_storeu_ps(sums + tap_stride + b * kLanes, sum1[b]);
    _mm512_storeu_ps(sums + 2 * tap_stride + b * kLanes, sum2[b]);
  }
}
#else
bool bf16_dot_products() { return false; }
#endif

// Zero-bordered planes of (H + 2) rows of W + 2 columns, one per channel of a group, and where
// each pixel lands in their interior.
struct Planes {
  int64_t height, width, row, plane;
  std::vector<int64_t> position;  // pixel p's offset in a plane's interior (for channels-last input)

  Planes(int64_t height_, int64_t width_, int64_t plane_, bool positions)
      : height(height_), width(width_), row(width_ + 2), plane(plane_), position(positions ? height_ * width_ : 0) {
    for (int64_t p = 0; p < static_cast<int64_t>(position.size()); ++p) position[p] = p / width * row + p % width;
  }
};

// relu(v * scale + shift) of group k's channels of one frame into the planes' interiors. The
// top and bottom border rows are never written; the padding columns may be (whole vectors or
// tiles run over into them) and are zeroed again before returning.
template <typename T>
void fill_planes(const Map<const T>& v, int64_t frame, int64_t k, int64_t half, const float* scale,
                 const float* shift, const Planes& planes, float* padded) {
  const int64_t height = planes.height, width = planes.width, row = planes.row, pixels = height * width;
  if (v.pixel == 1) {
    // Whole vectors from each row's start: all but the last row run over into the padding
    // columns and the next row (which its own writes then correct); the padding is zeroed
    // again below. Reads stop at the end of the channel's plane.
    const int64_t vector_width = (width + kLanes - 1) / kLanes * kLanes;
    for (int64_t c = 0; c < half; ++c) {
      const int64_t channel = k * half + c;
      const float a = scale[channel], b = shift[channel];
      const T* src = v.at(frame, channel);
      float* dst = padded + c * planes.plane + row + 1;
      for (int64_t y = 0; y < height; ++y) {
        const int64_t count = std::min(vector_width, pixels - y * width);
        const T* from = src + y * width;
        float* to = dst + y * row;
#ifdef GSF_MASKED
        if (count < kLanes) {  // one partial vector (max(0, NaN) is the NaN, as std::max(NaN, 0) below)
          const __mmask16 lanes = first_lanes(count);
          const __m512 value = _mm512_fmadd_ps(load_lanes(from, lanes), _mm512_set1_ps(a), _mm512_set1_ps(b));
          _mm512_mask_storeu_ps(to, lanes, _mm512_max_ps(_mm512_setzero_ps(), value));
          continue;
        }
#endif
#pragma omp simd simdlen(GSF_LANES)
        for (int64_t x = 0; x < count; ++x) to[x] = std::max(load(from[x]) * a + b, 0.0f);
      }
      for (int64_t y = 0; y + 1 < height; ++y) dst[y * row + width] = dst[y * row + width + 1] = 0.0f;
    }
    return;
  }
  // Channels innermost.
#ifdef GSF_TILES
  // 8 x 8 tiles (channels x pixels) from each row's start, as the NCHW case above: a tile may
  // run over into the padding columns and the next rows, which their own writes then correct
  // (rows in order), then the padding is zeroed again; tiles stop where the map's pixels end.
  // Channels beyond a multiple of 8, and pixels beyond the last whole tile, one at a time.
  const int64_t tiled = half / 8 * 8;
  const float* a = scale + k * half;
  const float* b = shift + k * half;
  float* interior = padded + row + 1;
  for (int64_t y = 0; y < height; ++y) {
    const T* src = v.at(frame, k * half) + y * width * v.pixel;
    float* dst = interior + y * row;
    int64_t x = 0;
    for (; x < width && y * width + x + 8 <= pixels; x += 8) {
      for (int64_t c = 0; c < tiled; c += 8) {
        transposed_tile(src + x * v.pixel + c, v.pixel, dst + c * planes.plane + x, planes.plane, a + c, b + c);
      }
      for (int64_t c = tiled; c < half; ++c) {
        for (int64_t i = 0; i < 8; ++i) {
          dst[c * planes.plane + x + i] = std::max(load(src[(x + i) * v.pixel + c]) * a[c] + b[c], 0.0f);
        }
      }
    }
    for (; x < width; ++x) {
      for (int64_t c = 0; c < half; ++c) {
        dst[c * planes.plane + x] = std::max(load(src[x * v.pixel + c]) * a[c] + b[c], 0.0f);
      }
    }
  }
  for (int64_t c = 0; c < half; ++c) {
    float* dst = interior + c * planes.plane;
    for (int64_t y = 0; y + 1 < height; ++y) dst[y * row + width] = dst[y * row + width + 1] = 0.0f;
  }
  return;
#endif
  // A block of pixels at a time (in L1), read across the group's channels, written plane by
  // plane (reading each channel's pixels in turn would walk the frame once per channel).
  constexpr int64_t block = 32;
  for (int64_t first = 0; first < pixels; first += block) {
    const int64_t last = std::min(first + block, pixels);
    for (int64_t c = 0; c < half; ++c) {
      const int64_t channel = k * half + c;
      const float a = scale[channel], b = shift[channel];
      const T* src = v.at(frame, channel);
      float* dst = padded + c * planes.plane + row + 1;
      for (int64_t p = first; p < last; ++p) dst[planes.position[p]] = std::max(load(src[p * v.pixel]) * a + b, 0.0f);
    }
  }
}

// fill_planes and pair_planes in one pass, for the bfloat16 dot products on NCHW maps: the
// group's relu(v * scale + shift) rounded to bfloat16 and paired by channels straight into the
// pair planes' interiors (the float planes are neither written nor read again: at the 40 x 40
// sites, that pass was half the gate's time outside the dot products). The same bits as the
// two steps; borders as fill_planes leaves them (written whole vectors from each row's start,
// padding columns zeroed again after).
template <typename T>
void fill_pairs(const Map<const T>& v, int64_t frame, int64_t k, int64_t half, const float* scale,
                const float* shift, const Planes& planes, uint32_t* pairs) {
  const int64_t height = planes.height, width = planes.width, row = planes.row, pixels = height * width;
  const int64_t vector_width = (width + kLanes - 1) / kLanes * kLanes;
  for (int64_t j = 0; j < half / 2; ++j) {
    const int64_t channel = k * half + 2 * j;
    const float a0 = scale[channel], b0 = shift[channel], a1 = scale[channel + 1], b1 = shift[channel + 1];
    const T* even = v.at(frame, channel);
    const T* odd = v.at(frame, channel + 1);
    uint32_t* dst = pairs + j * planes.plane + row + 1;
    for (int64_t y = 0; y < height; ++y) {
      const int64_t count = std::min(vector_width, pixels - y * width);
      const T* from_even = even + y * width;
      const T* from_odd = odd + y * width;
      uint32_t* to = dst + y * row;
#ifdef GSF_MASKED
      // (GCC's own vectorisation of the loop below ran at half width with its masks juggled)
      for (int64_t x = 0; x < count; x += kLanes) {  // (a last partial vector under a mask)
        const __mmask16 lanes = first_lanes(count - x);
        const __m512 e = _mm512_max_ps(_mm512_setzero_ps(), _mm512_fmadd_ps(load_lanes(from_even + x, lanes),
                                                                             _mm512_set1_ps(a0), _mm512_set1_ps(b0)));
        const __m512 o = _mm512_max_ps(_mm512_setzero_ps(), _mm512_fmadd_ps(load_lanes(from_odd + x, lanes),
                                                                             _mm512_set1_ps(a1), _mm512_set1_ps(b1)));
        _mm512_mask_storeu_epi32(to + x, lanes, bf16_pairs(e, o));
      }
#else
#pragma omp simd simdlen(GSF_LANES)
      for (int64_t x = 0; x < count; ++x) {
        to[x] = bf16_pair(std::max(load(from_even[x]) * a0 + b0, 0.0f), std::max(load(from_odd[x]) * a1 + b1, 0.0f));
      }
#endif
    }
    for (int64_t y = 0; y + 1 < height; ++y) dst[y * row + width] = dst[y * row + width + 1] = 0u;
  }
}

// The three temporal taps of one (frame, group), (3, H*W): the group's relu(bn(v)) into planes
// (fill_planes; bfloat16 NCHW maps straight into channel pairs, fill_pairs), then each output pixel q = y * (W + 2) + x (x < W kept) as the sum over
// channels and (kh, kw) of weight * plane[q + kh * (W + 2) + kw], up to kBlock vectors of
// consecutive q at a time (taps_of_block): 3 accumulators per vector in registers, each load
// feeding three FMAs (one per temporal tap). padded and sums are the caller's scratch buffers.
// The channel pairs' scratch planes and weights of the bfloat16 dot-product path (null: float32 FMAs).
struct PairedTaps {
  const uint32_t* weight;  // (2, P/4, 27), pair_weights
  uint32_t* planes;        // (P/4, plane) scratch
};

// The taps of kBlock vectors at a time, then the remaining vectors in one block: with float32
// planes and weights (Source float), or with bfloat16 pairs (uint32_t, TapsOfBlock over pairs).
template <typename Source, typename TapsOfBlock>
void taps_in_blocks(TapsOfBlock taps_of, const Source* planes, int64_t vectors, float* sums) {
  int64_t first = 0;  // in vectors
  for (; first + kBlock <= vectors; first += kBlock) {
    taps_of(std::integral_constant<int64_t, kBlock>{}, planes + first * kLanes, sums + first * kLanes);
  }
  const Source* block_planes = planes + first * kLanes;
  float* block_sums = sums + first * kLanes;
  switch (vectors - first) {
    case 5: taps_of(std::integral_constant<int64_t, 5>{}, block_planes, block_sums); break;
    case 4: taps_of(std::integral_constant<int64_t, 4>{}, block_planes, block_sums); break;
    case 3: taps_of(std::integral_constant<int64_t, 3>{}, block_planes, block_sums); break;
    case 2: taps_of(std::integral_constant<int64_t, 2>{}, block_planes, block_sums); break;
    case 1: taps_of(std::integral_constant<int64_t, 1>{}, block_planes, block_sums); break;
    default: break;
  }
}

template <typename T>
void frame_taps(const Map<const T>& v, int64_t frame, int64_t k, int64_t half, const float* scale, const float* shift,
                const float* weight, const Planes& planes, int64_t tap_stride, float* padded, float* sums,
                float* taps, const PairedTaps* paired) {
  const int64_t height = planes.height, width = planes.width, row = planes.row, plane = planes.plane;
  const int64_t vectors = tap_stride / kLanes, pixels = height * width;
#ifdef GSF_BF16_DOT
  if (paired != nullptr) {
    const int64_t pair_count = half / 2;
    if (v.pixel == 1) {
      fill_pairs<T>(v, frame, k, half, scale, shift, planes, paired->planes);
    } else {
      fill_planes<T>(v, frame, k, half, scale, shift, planes, padded);
      pair_planes(padded, half, plane, paired->planes);
    }
    const uint32_t* w = paired->weight + k * pair_count * 27;
    taps_in_blocks(
        [&](auto block, const uint32_t* block_planes, float* block_sums) {
          taps_of_block_bf16<decltype(block)::value>(block_planes, plane, row, w, pair_count, block_sums, tap_stride);
        },
        paired->planes, vectors, sums);
  } else
#endif
  {
    fill_planes<T>(v, frame, k, half, scale, shift, planes, padded);
    const float* w = weight + k * half * 27;
    taps_in_blocks(
        [&](auto block, const float* block_planes, float* block_sums) {
          taps_of_block<decltype(block)::value>(block_planes, plane, row, w, half, block_sums, tap_stride);
        },
        padded, vectors, sums);
  }
  for (int64_t kt = 0; kt < 3; ++kt) {
    for (int64_t y = 0; y < height; ++y) {
      const float* src = sums + kt * tap_stride + y * row;
      std::copy(src, src + width, taps + kt * pixels + y * width);
    }
  }
}

// exp(y) for 0 <= y <= 87 (or NaN) in plain arithmetic: 2^n times a degree-7 polynomial on
// |r| <= ln(2)/2 (relative error ~1e-8 before rounding).
inline float vector_exp(float y) {
  // n = round(y / ln 2) by the 1.5 * 2^23 trick (y >= 0), r = y - n ln 2 in two parts
  const float shifted = y * 1.44269504f + 12582912.0f;
  const float n = shifted - 12582912.0f;
  const float r = (y - n * 0.693145752f) - n * 1.42860677e-6f;
  const float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720 +
                                                                                      r * (1.0f / 5040)))))));
  uint32_t n_bits;
  std::memcpy(&n_bits, &shifted, sizeof n_bits);
  const uint32_t scale_bits = (n_bits - 0x4B400000u + 127u) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &scale_bits, sizeof scale);
  return p * scale;
}

// tanh in plain arithmetic that vectorises (std::tanh is a scalar call): an odd Taylor
// polynomial below |x| = 1/8, else 1 - 2 / (exp(2|x|) + 1) with vector_exp; within 2e-7 of
// std::tanh. Saturates to +-1, keeps NaN.
inline float vector_tanh(float x) {
  const float a = std::fabs(x), x2 = x * x;
  const float small = x + x * x2 * (-1.0f / 3 + x2 * (2.0f / 15 + x2 * (-17.0f / 315 + x2 * (62.0f / 2835))));
  const float y = std::min(2.0f * a, 40.0f);  // tanh(20) is 1 in float32
  const float large = 1.0f - 2.0f / (vector_exp(y) + 1.0f);
  return a < 0.125f ? small : std::copysign(large, x);
}

// The logistic sigmoid the same way, from e = exp(|x|) (|x| up to 80: beyond, 1 or e^-80, within
// 2e-35 of the true value): e / (e + 1) for x >= 0, 1 / (e + 1) below. Keeps NaN.
inline float vector_sigmoid(float x) {
  const float e = vector_exp(std::min(std::fabs(x), 80.0f));
  return (x >= 0.0f ? e : 1.0f) / (e + 1.0f);
}

#ifdef GSF_MASKED
// The spatial means of `count` <= 16 * Vectors channels of a channels-last map (pixel p's at
// x + p * pixel_stride) and of the gated map, their sums in registers over all pixels, two
// pixels at a time on separate sums. (Sums in memory, each pixel's additions waited on the
// previous pixel's stores: ResNet-50's channels-last sites, float32, T=8, took 6.4 ms a clip,
// 5.85 ms with this loop.) No more vectors than the channels need: with four vectors always,
// a group of 32 channels (ResNet-50's 40 x 40 sites) ran two under empty masks, loads that
// seemingly still fetched the next channels' cache lines, and the gate op of those sites took
// ~11 % longer (T=8, 160 px; all 16 sites' gates together ~6 %).
template <typename T, int64_t Vectors>
void channels_last_means(const T* x, int64_t pixel_stride, int64_t count, int64_t pixels, const float* g,
                         float inverse, float* mean_v, float* mean_y) {
  __mmask16 lanes[Vectors];
  __m512 total[2][Vectors], gated[2][Vectors];
  for (int64_t b = 0; b < Vectors; ++b) {
    lanes[b] = first_lanes(std::max<int64_t>(count - b * 16, 0));
    total[0][b] = total[1][b] = gated[0][b] = gated[1][b] = _mm512_setzero_ps();
  }
  auto add = [&](int64_t p, int64_t slot) {
    const __m512 gp = _mm512_set1_ps(g[p]);
    for (int64_t b = 0; b < Vectors; ++b) {
      const __m512 value = load_lanes(x + p * pixel_stride + b * 16, lanes[b]);
      total[slot][b] = _mm512_add_ps(total[slot][b], value);
      gated[slot][b] = _mm512_fmadd_ps(gp, value, gated[slot][b]);
    }
  };
  int64_t p = 0;
  for (; p + 1 < pixels; p += 2) {
    add(p, 0);
    add(p + 1, 1);
  }
  if (p < pixels) add(p, 0);
  const __m512 scale = _mm512_set1_ps(inverse);
  for (int64_t b = 0; b < Vectors; ++b) {
    _mm512_mask_storeu_ps(mean_v + b * 16, lanes[b], _mm512_mul_ps(_mm512_add_ps(total[0][b], total[1][b]), scale));
    _mm512_mask_storeu_ps(mean_y + b * 16, lanes[b], _mm512_mul_ps(_mm512_add_ps(gated[0][b], gated[1][b]), scale));
  }
}
#endif

// One (frame, group)'s gate from its own centre tap and the neighbouring frames' outer taps
// (previous frame's tap 0, next frame's tap 2; null beyond the clip), then, where means is
// given, the spatial means of v and of the gated v over the group's channels.
template <typename T>
void frame_gate(const Map<const T>& v, int64_t frame, int64_t k, int64_t half, int64_t pixels, float bias,
                const float* previous, const float* centre, const float* next, float* g, float* means) {
#pragma omp simd simdlen(GSF_LANES)
  for (int64_t p = 0; p < pixels; ++p) g[p] = bias + centre[p];
  if (previous) {
#pragma omp simd simdlen(GSF_LANES)
    for (int64_t p = 0; p < pixels; ++p) g[p] += previous[p];
  }
  if (next) {
#pragma omp simd simdlen(GSF_LANES)
    for (int64_t p = 0; p < pixels; ++p) g[p] += next[p];
  }
#pragma omp simd simdlen(GSF_LANES)
  for (int64_t p = 0; p < pixels; ++p) g[p] = vector_tanh(g[p]);
  if (!means) return;
  float* mean_v = means + frame * 4 * half + k * half;  // row 0 of (frame, 2, P)
  float* mean_y = mean_v + 2 * half;                    // row 1
  const float inverse = 1.0f / static_cast<float>(pixels);
  if (v.pixel == 1) {
    for (int64_t c = 0; c < half; ++c) {
      const T* x = v.at(frame, k * half + c);
      float total = 0.0f, gated = 0.0f;
#ifdef GSF_MASKED
      if (pixels < 128) {  // a few vectors (on larger planes the loop below keeps more sums in flight)
        __m512 totals = _mm512_setzero_ps(), gateds = _mm512_setzero_ps();
        for (int64_t p = 0; p < pixels; p += 16) {
          const __mmask16 lanes = first_lanes(pixels - p);
          const __m512 value = load_lanes(x + p, lanes);
          totals = _mm512_add_ps(totals, value);
          gateds = _mm512_fmadd_ps(load_lanes(g + p, lanes), value, gateds);
        }
        total = _mm512_reduce_add_ps(totals);
        gated = _mm512_reduce_add_ps(gateds);
      } else
#endif
      {
#pragma omp simd simdlen(GSF_LANES) reduction(+ : total, gated)
        for (int64_t p = 0; p < pixels; ++p) {
          const float value = load(x[p]);
          total += value;
          gated += g[p] * value;
        }
      }
      mean_v[c] = total * inverse;
      mean_y[c] = gated * inverse;
    }
    return;
  }
#ifdef GSF_MASKED
  // Channels innermost: blocks of up to 64 channels, each in as few vectors as it needs.
  for (int64_t c0 = 0; c0 < half; c0 += 64) {
    const int64_t count = std::min<int64_t>(half - c0, 64);
    const T* x = v.at(frame, k * half + c0);
    if (count <= 16) {
      channels_last_means<T, 1>(x, v.pixel, count, pixels, g, inverse, mean_v + c0, mean_y + c0);
    } else if (count <= 32) {
      channels_last_means<T, 2>(x, v.pixel, count, pixels, g, inverse, mean_v + c0, mean_y + c0);
    } else if (count <= 48) {
      channels_last_means<T, 3>(x, v.pixel, count, pixels, g, inverse, mean_v + c0, mean_y + c0);
    } else {
      channels_last_means<T, 4>(x, v.pixel, count, pixels, g, inverse, mean_v + c0, mean_y + c0);
    }
  }
#else
  std::fill(mean_v, mean_v + half, 0.0f);  // channels innermost
  std::fill(mean_y, mean_y + half, 0.0f);
  for (int64_t p = 0; p < pixels; ++p) {
    const T* x = v.at(frame, k * half) + p * v.pixel;
    const float gp = g[p];
#pragma omp simd simdlen(GSF_LANES)
    for (int64_t c = 0; c < half; ++c) {
      const float value = load(x[c]);
      mean_v[c] += value;
      mean_y[c] += gp * value;
    }
  }
  for (int64_t c = 0; c < half; ++c) {
    mean_v[c] *= inverse;
    mean_y[c] *= inverse;
  }
#endif
}

// The gate (and means) of every (clip, group), walking each clip's frames in order: frame f's
// taps complete frame f - 1's gate, whose v was read one frame ago and is still in cache for
// the means. Three frames' taps are kept. With more threads than walks, each walk is split into
// runs of frames, each also computing the taps of the frame before and after it.
template <typename T>
void gate_kernel(const at::Tensor& v_, const float* scale, const float* shift, const float* weight, const float* bias,
                 float* gate, float* means, const Shape& s, int64_t height, int64_t width) {
  const Map<const T> v = map_of<const T>(v_, "v");
  const int64_t pixels = s.pixels, half = s.half, frames = s.frames;
  const int64_t row = width + 2, vectors = (height * row + kLanes - 1) / kLanes, tap_stride = vectors * kLanes;
  // reads reach q + 2 * row + 2 for q up to tap_stride - 1: the zero tail covers them
#ifdef GSF_TILES
  const bool positions = false;  // channels-last fills by tiles, not by each pixel's position
#else
  const bool positions = v.pixel != 1;
#endif
  const Planes planes(height, width, tap_stride + 2 * row + 2, positions);
  const int64_t walks = s.clips * 2;
  if (walks == 0) return;  // an empty batch
  const int64_t runs = std::min(frames, std::max<int64_t>(1, (at::get_num_threads() + walks - 1) / walks));
  const bool dot = std::is_same_v<T, uint16_t> && bf16_dot_products();
  const std::vector<uint32_t> paired_weight = dot ? pair_weights(weight, half) : std::vector<uint32_t>();
  at::parallel_for(0, walks * runs, 1, [&](int64_t begin, int64_t end) {
    // (the bfloat16 dot products on NCHW maps fill their pair planes straight from v)
    std::vector<float> padded(dot && v.pixel == 1 ? 0 : half * planes.plane, 0.0f), sums(3 * tap_stride),
        ring(3 * 3 * pixels);
    std::vector<uint32_t> pair_scratch(dot ? half / 2 * planes.plane : 0);
    const PairedTaps paired_taps{paired_weight.data(), pair_scratch.data()};
    const PairedTaps* paired = dot ? &paired_taps : nullptr;
    auto taps_of = [&](int64_t t) { return ring.data() + t % 3 * 3 * pixels; };
    for (int64_t index = begin; index < end; ++index) {
      const int64_t walk = index / runs, run = index % runs, clip = walk / 2, k = walk % 2;
      const int64_t first = run * frames / runs, last = (run + 1) * frames / runs;  // gates of [first, last)
      auto finish = [&](int64_t t) {
        const int64_t frame = clip * frames + t;
        frame_gate<T>(v, frame, k, half, pixels, bias[k], t > 0 ? taps_of(t - 1) : nullptr, taps_of(t) + pixels,
                      t + 1 < frames ? taps_of(t + 1) + 2 * pixels : nullptr, gate + (frame * 2 + k) * pixels,
                      means);
      };
      for (int64_t t = std::max<int64_t>(first - 1, 0); t <= std::min(last, frames - 1); ++t) {
        frame_taps<T>(v, clip * frames + t, k, half, scale, shift, weight, planes, tap_stride, padded.data(),
                      sums.data(), taps_of(t), paired);
        if (t - 1 >= first && t - 1 < last) finish(t - 1);
      }
      if (last == frames) finish(frames - 1);  // the clip's last frame has no next frame's taps
    }
  });
}

template <typename T>
void gate_backward_kernel(const float* grad_z, T* grad_products, const Shape& s, int64_t height, int64_t width) {
  const int64_t pixels = s.pixels;
  // One (frame, group, temporal tap) per step: its 9 spatial taps.
  at::parallel_for(0, s.frame_count() * 2 * 3, 1, [&](int64_t begin, int64_t end) {
    for (int64_t index = begin; index < end; ++index) {
      const int64_t frame = index / 6, k = index / 3 % 2, kt = index % 3, t = frame % s.frames;
      T* taps = grad_products + ((frame * 2 + k) * 27 + kt * 9) * pixels;
      const int64_t target_t = t - kt + 1;  // the frame whose gate this tap of this frame feeds
      if (target_t < 0 || target_t >= s.frames) {
        std::fill(taps, taps + 9 * pixels, store<T>(0.0f));
        continue;
      }
      const float* grad = grad_z + ((frame - kt + 1) * 2 + k) * pixels;
      for (int64_t kh = 0; kh < 3; ++kh) {
        for (int64_t kw = 0; kw < 3; ++kw) {
          const int64_t dy = kh - 1, dx = kw - 1;  // pixel (y, x) fed (y + dy, x + dx)
          T* tap = taps + (kh * 3 + kw) * pixels;
          for (int64_t y = 0; y < height; ++y) {
            T* row = tap + y * width;
            if (y + dy < 0 || y + dy >= height) {
              std::fill(row, row + width, store<T>(0.0f));
              continue;
            }
            const float* source = grad + (y + dy) * width + dx;
            const int64_t x0 = std::max<int64_t>(-dx, 0), x1 = width - std::max<int64_t>(dx, 0);
            if (x0 > 0) row[0] = store<T>(0.0f);
            if (x1 < width) row[width - 1] = store<T>(0.0f);
#pragma omp simd simdlen(GSF_LANES)
            for (int64_t x = x0; x < x1; ++x) row[x] = store<T>(source[x]);
          }
        }
      }
    }
  });
}

at::Tensor gate(const at::Tensor& v, const at::Tensor& scale, const at::Tensor& shift, const at::Tensor& weight,
                const at::Tensor& bias, int64_t num_segments, const std::optional<at::Tensor>& means) {
  const Shape s = shape_of(v, num_segments);
  check_floats(scale, v.size(1), "scale");
  check_floats(shift, v.size(1), "shift");
  check_floats(weight, v.size(1) * 27, "weight (2, P/2, 3, 3, 3)");
  check_floats(bias, 2, "bias");
  TORCH_CHECK(v.stride(3) == 1 || v.stride(1) == 1, "GSF gate: v's pixels or channels must be contiguous, got strides ",
              v.strides());
  if (means) {
    TORCH_CHECK(means->dim() == 3 && means->size(0) == v.size(0) && means->size(1) == 2 && means->size(2) == v.size(1),
                "GSF gate: means must be (N*T, 2, P) = ", v.size(0), ", 2, ", v.size(1), ", got ", means->sizes());
    check_floats(*means, means->numel(), "means");
  }
  const int64_t height = v.size(2), width = v.size(3);
  at::Tensor out = at::empty({s.frame_count(), 2, height, width}, v.options().dtype(at::kFloat));
  dispatch(v, [&](auto t) {
    gate_kernel<decltype(t)>(v, scale.data_ptr<float>(), shift.data_ptr<float>(), weight.data_ptr<float>(),
                             bias.data_ptr<float>(), out.data_ptr<float>(), means ? means->data_ptr<float>() : nullptr,
                             s, height, width);
  });
  return out;
}

at::Tensor gate_backward(const at::Tensor& grad_z, int64_t num_segments, int64_t height, int64_t width,
                         at::ScalarType dtype) {
  check_floats(grad_z, grad_z.size(0) * 2 * height * width, "grad_z (N*T, 2, H, W)");
  const Shape s = shape_of(grad_z.size(0), 4, height * width, num_segments);  // (channels unused: 4 passes)
  at::Tensor grad_products = at::empty({grad_z.size(0), 2, 27, height * width}, grad_z.options().dtype(dtype));
  dispatch(grad_products, [&](auto t) {
    using T = decltype(t);
    gate_backward_kernel<T>(grad_z.data_ptr<float>(), data_of<T>(grad_products), s, height, width);
  });
  return grad_products;
}

// ---------------------------------------------------------------------------------------------
// fusion_weights: sigmoid(conv(descriptors)) from the spatial means (N*T, 2, P) float32: row 0
// is mean(v), row 1 mean(g_k v) for the channels of group k (gate's means). Group k's
// descriptors over (channel c, frame t) are the means of its shifted and residual maps, mean(shift(y)) = shift(mean(y)) and
// mean(v - y) = mean(v) - mean(y); its 3x3 conv over (c, t) is zero padded. Out: float32
// (N, T, 2, P/2) (twin: _fusion_weights).

void fusion_weights_kernel(const float* means, const float* weight, const float* bias, float* out, const Shape& s) {
  const int64_t half = s.half, frames = s.frames, processed = 2 * half;
  // descriptors (i, t + 1, c + 1), zero borders: channels innermost, so that each frame's
  // logits are a loop over channels that vectorises (the sigmoid too)
  const int64_t cols = half + 2, rows = frames + 2;
  at::parallel_for(0, s.clips * 2, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> descriptors(2 * rows * cols);
    std::vector<float> logits(half);
    for (int64_t index = begin; index < end; ++index) {
      const int64_t n = index / 2, k = index % 2;
      auto means_of = [&](int64_t t, int64_t row) { return means + ((n * frames + t) * 2 + row) * processed + k * half; };
      std::fill(descriptors.begin(), descriptors.end(), 0.0f);
      for (int64_t t = 0; t < frames; ++t) {
        const int64_t source = k == 0 ? t + 1 : t - 1;  // the frame whose gated features t takes
        float* shifted = descriptors.data() + (t + 1) * cols + 1;
        float* residual = descriptors.data() + (rows + t + 1) * cols + 1;
        if (source >= 0 && source < frames) std::copy_n(means_of(source, 1), half, shifted);
        const float *mean_v = means_of(t, 0), *mean_y = means_of(t, 1);
#pragma omp simd simdlen(GSF_LANES)
        for (int64_t c = 0; c < half; ++c) residual[c] = mean_v[c] - mean_y[c];
      }
      const float* w = weight + k * 18;
      for (int64_t t = 0; t < frames; ++t) {
        std::fill(logits.begin(), logits.end(), bias[k]);
        for (int64_t i = 0; i < 2; ++i) {
          for (int64_t dt = 0; dt < 3; ++dt) {
            const float* d = descriptors.data() + (i * rows + t + dt) * cols;
            const float w0 = w[i * 9 + dt], w1 = w[i * 9 + 3 + dt], w2 = w[i * 9 + 6 + dt];  // (i, dc, dt)
            float* logit = logits.data();
#pragma omp simd simdlen(GSF_LANES)
            for (int64_t c = 0; c < half; ++c) logit[c] += w0 * d[c] + w1 * d[c + 1] + w2 * d[c + 2];
          }
        }
        float* o = out + ((n * frames + t) * 2 + k) * half;
        const float* logit = logits.data();
#pragma omp simd simdlen(GSF_LANES)
        for (int64_t c = 0; c < half; ++c) o[c] = vector_sigmoid(logit[c]);
      }
    }
  });
}

at::Tensor fusion_weights(const at::Tensor& means, const at::Tensor& weight, const at::Tensor& bias,
                          int64_t num_segments) {
  TORCH_CHECK(means.dim() == 3 && means.size(1) == 2,
              "GSF fusion_weights: means must be (N*T, 2, P), got ", means.sizes());
  check_floats(means, means.numel(), "means");
  check_floats(weight, 36, "weight (2, 2, 3, 3)");
  check_floats(bias, 2, "bias");
  const Shape s = shape_of(means.size(0), means.size(2), 0, num_segments);
  at::Tensor out = at::empty({s.clips, num_segments, 2, s.half}, means.options().dtype(at::kFloat));
  fusion_weights_kernel(means.data_ptr<float>(), weight.data_ptr<float>(), bias.data_ptr<float>(),
                        out.data_ptr<float>(), s);
  return out;
}

// fusion_weights_backward: the adjoint of fusion_weights, from the gradient grad_weights
// (N*T, 2, P/2) of its output weights (N, T, 2, P/2) and the means it read: the means' gradient
// (N*T, 2, P) and the fusion convs' weight (2, 2, 3, 3) and bias (2,) gradients, float32
// (twin: _fusion_weights_backward). One (clip, group) after another, so the parameter sums do
// not depend on the thread count (the work is ~P * T * 40 flops per clip).

void fusion_weights_backward_kernel(const float* grad_weights, const float* weights, const float* means,
                                    const float* weight, float* grad_means, float* grad_weight, float* grad_bias,
                                    const Shape& s) {
  const int64_t half = s.half, frames = s.frames, processed = 2 * half;
  const int64_t rows = half + 2, cols = frames + 2;  // (i, c + 1, t + 1), zero borders
  std::vector<float> descriptors(2 * rows * cols), grad_descriptors(2 * rows * cols), grad_logits(half * frames);
  std::fill(grad_weight, grad_weight + 36, 0.0f);
  std::fill(grad_bias, grad_bias + 2, 0.0f);
  std::fill(grad_means, grad_means + s.frame_count() * 2 * processed, 0.0f);
  for (int64_t n = 0; n < s.clips; ++n) {
    for (int64_t k = 0; k < 2; ++k) {
      auto mean_of = [&](int64_t t, int64_t row, int64_t c) {
        return means[((n * frames + t) * 2 + row) * processed + k * half + c];
      };
      auto source_of = [&](int64_t t) { return k == 0 ? t + 1 : t - 1; };  // the frame group k's t takes
      std::fill(descriptors.begin(), descriptors.end(), 0.0f);
      std::fill(grad_descriptors.begin(), grad_descriptors.end(), 0.0f);
      for (int64_t t = 0; t < frames; ++t) {
        const int64_t source = source_of(t);
        for (int64_t c = 0; c < half; ++c) {
          descriptors[(c + 1) * cols + t + 1] = source < 0 || source >= frames ? 0.0f : mean_of(source, 1, c);
          descriptors[(rows + c + 1) * cols + t + 1] = mean_of(t, 0, c) - mean_of(t, 1, c);
          const int64_t index = ((n * frames + t) * 2 + k) * half + c;
          const float w = weights[index];
          grad_logits[t * half + c] = grad_weights[index] * w * (1.0f - w);
        }
      }
      const float* wk = weight + k * 18;
      float* grad_wk = grad_weight + k * 18;
      for (int64_t t = 0; t < frames; ++t) {
        for (int64_t c = 0; c < half; ++c) {
          const float g = grad_logits[t * half + c];
          grad_bias[k] += g;
          for (int64_t i = 0; i < 2; ++i) {
            for (int64_t dc = 0; dc < 3; ++dc) {
              const int64_t offset = (i * rows + c + dc) * cols + t;
              for (int64_t dt = 0; dt < 3; ++dt) {
                grad_wk[i * 9 + dc * 3 + dt] += g * descriptors[offset + dt];
                grad_descriptors[offset + dt] += g * wk[i * 9 + dc * 3 + dt];
              }
            }
          }
        }
      }
      for (int64_t t = 0; t < frames; ++t) {
        const int64_t source = source_of(t);
        for (int64_t c = 0; c < half; ++c) {
          const float shifted = grad_descriptors[(c + 1) * cols + t + 1];
          const float residual = grad_descriptors[(rows + c + 1) * cols + t + 1];
          float* row_v = grad_means + ((n * frames + t) * 2) * processed + k * half + c;
          row_v[0] += residual;               // mean(v)
          row_v[processed] -= residual;       // mean(g_k v)
          if (source >= 0 && source < frames) {
            grad_means[((n * frames + source) * 2 + 1) * processed + k * half + c] += shifted;
          }
        }
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fusion_weights_backward(const at::Tensor& grad_weights,
                                                                      const at::Tensor& weights,
                                                                      const at::Tensor& means,
                                                                      const at::Tensor& weight,
                                                                      int64_t num_segments) {
  TORCH_CHECK(means.dim() == 3 && means.size(1) == 2,
              "GSF fusion_weights_backward: means must be (N*T, 2, P), got ", means.sizes());
  check_floats(means, means.numel(), "means");
  const Shape s = shape_of(means.size(0), means.size(2), 0, num_segments);
  check_floats(grad_weights, s.frame_count() * 2 * s.half, "grad_weights (N*T, 2, P/2)");
  check_floats(weights, s.frame_count() * 2 * s.half, "weights (N, T, 2, P/2)");
  check_floats(weight, 36, "weight (2, 2, 3, 3)");
  at::Tensor grad_means = at::empty(means.sizes(), means.options());
  at::Tensor grad_weight = at::empty({2, 2, 3, 3}, means.options());
  at::Tensor grad_bias = at::empty({2}, means.options());
  fusion_weights_backward_kernel(grad_weights.data_ptr<float>(), weights.data_ptr<float>(), means.data_ptr<float>(),
                                 weight.data_ptr<float>(), grad_means.data_ptr<float>(), grad_weight.data_ptr<float>(),
                                 grad_bias.data_ptr<float>(), s);
  return {grad_means, grad_weight, grad_bias};
}

// gate_gradient: the gradient of the gate's pre-activation z (N*T, 2, H*W), written over
// grad_gate (the blend's gradient of the gate g = tanh(z)): (grad_gate + the fusion means'
// sum over group k's channels of grad_means[1] * v / (H*W)) * (1 - g^2) (twin: the bmm of
// _fusion_weights_backward and the tanh's derivative).

template <typename T>
void gate_gradient_kernel(float* grad_gate, const at::Tensor& v_, const float* gate, const float* grad_means,
                          const Shape& s) {
  const Map<const T> v = map_of<const T>(v_, "v");
  const int64_t pixels = s.pixels, half = s.half, processed = 2 * half;
  const float inverse_pixels = 1.0f / static_cast<float>(pixels);
  if (v.pixel == 1) {
    at::parallel_for(0, s.frame_count() * 2, 1, [&](int64_t begin, int64_t end) {
      for (int64_t index = begin; index < end; ++index) {
        const int64_t frame = index / 2, k = index % 2;
        float* grad = grad_gate + index * pixels;
        const float* g = gate + index * pixels;
        const float* coefficients = grad_means + (frame * 2 + 1) * processed + k * half;
        for (int64_t c = 0; c < half; ++c) {
          const float a = coefficients[c] * inverse_pixels;
          const T* x = v.at(frame, k * half + c);
#pragma omp simd simdlen(GSF_LANES)
          for (int64_t p = 0; p < pixels; ++p) grad[p] += a * load(x[p]);
        }
#pragma omp simd simdlen(GSF_LANES)
        for (int64_t p = 0; p < pixels; ++p) grad[p] *= 1.0f - g[p] * g[p];
      }
    });
    return;
  }
  TORCH_CHECK(v.channel == 1, "GSF gate_gradient: expected contiguous pixels or contiguous channels");
  at::parallel_for(0, s.frame_count(), 1, [&](int64_t begin, int64_t end) {
    std::vector<float> coefficients(processed);
    for (int64_t frame = begin; frame < end; ++frame) {
      for (int64_t c = 0; c < processed; ++c) {
        coefficients[c] = grad_means[(frame * 2 + 1) * processed + c] * inverse_pixels;
      }
      for (int64_t p = 0; p < pixels; ++p) {
        const T* x = v.at(frame, 0) + p * v.pixel;
        for (int64_t k = 0; k < 2; ++k) {
          float total = 0.0f;
          const float* a = coefficients.data() + k * half;
          const T* xk = x + k * half;
#pragma omp simd simdlen(GSF_LANES) reduction(+ : total)
          for (int64_t c = 0; c < half; ++c) total += a[c] * load(xk[c]);
          const int64_t at = (frame * 2 + k) * pixels + p;
          grad_gate[at] = (grad_gate[at] + total) * (1.0f - gate[at] * gate[at]);
        }
      }
    }
  });
}

void gate_gradient(at::Tensor grad_gate, const at::Tensor& v, const at::Tensor& gate, const at::Tensor& grad_means,
                   int64_t num_segments) {
  const Shape s = shape_of(v, num_segments);
  check_floats(grad_gate, s.frame_count() * 2 * s.pixels, "grad_gate (N*T, 2, H, W)");
  check_floats(gate, s.frame_count() * 2 * s.pixels, "gate (N*T, 2, H, W)");
  check_floats(grad_means, s.frame_count() * 2 * 2 * s.half, "grad_means (N*T, 2, P)");
  dispatch(v, [&](auto t) {
    gate_gradient_kernel<decltype(t)>(grad_gate.data_ptr<float>(), v, gate.data_ptr<float>(),
                                      grad_means.data_ptr<float>(), s);
  });
}

// ---------------------------------------------------------------------------------------------
// input_gradient: the gradient of GSF's input's first P channels, written into out (any layout
// with one pixel stride): the blend's grad_v, the batch norm's backward of grad_normed
// (contiguous NCHW), coef * (grad_normed - centre - xhat * slope), and the fusion means'
// (grad_means[0] + grad_means[1] * g_k) / (H*W), grad_means (N*T, 2, P) the gradient of gate's
// means (twin: autograd's sum of the three).

template <typename T>
void input_gradient_kernel(const at::Tensor& v_, const T* grad_normed, const at::Tensor& grad_v_,
                           const float* grad_means, const float* gate, const float* coef, const float* centre,
                           const float* slope, const float* mean, const float* invstd, const at::Tensor& out_,
                           const Shape& s) {
  const Map<const T> v = map_of<const T>(v_, "v");
  const Map<const T> grad_v = map_of<const T>(grad_v_, "grad_v");
  const Map<T> out = map_of<T>(out_, "out");
  const int64_t pixels = s.pixels, processed = 2 * s.half;
  const float inverse_pixels = 1.0f / static_cast<float>(pixels);
  if (v.channel == 1 && grad_v.channel == 1 && out.channel == 1) {
    // Channels innermost: pixel by pixel, the channels in a vector loop, with each frame's
    // per-channel constants gathered first and grad_normed (NCHW) transposed to channels-last
    // a block of pixels at a time.
    constexpr int64_t block = 64;
    at::parallel_for(0, s.frame_count(), 1, [&](int64_t begin, int64_t end) {
      std::vector<float> constants(3 * processed), normed(block * processed);
      for (int64_t frame = begin; frame < end; ++frame) {
        float* constant = constants.data();
        float* per_gate = constant + processed;
        float* per_xhat = per_gate + processed;
        for (int64_t c = 0; c < processed; ++c) {
          const int64_t k = c / s.half;
          constant[c] = -coef[c] * centre[c] + grad_means[frame * 2 * processed + c] * inverse_pixels;
          per_gate[c] = grad_means[(frame * 2 + 1) * processed + c] * inverse_pixels;
          per_xhat[c] = coef[c] * slope[c] * invstd[c];
        }
        for (int64_t p = 0; p < pixels; ++p) {
          if (p % block == 0) {
            channels_last_of_rows(grad_normed + frame * processed * pixels + p, pixels, processed,
                                  std::min(block, pixels - p), normed.data(), processed);
          }
          const float* gn = normed.data() + p % block * processed;
          const T* x = v.at(frame, 0) + p * v.pixel;
          const T* gv = grad_v.at(frame, 0) + p * grad_v.pixel;
          T* dst = out.at(frame, 0) + p * out.pixel;
          for (int64_t k = 0; k < 2; ++k) {
            const float g = gate[(frame * 2 + k) * pixels + p];
#pragma omp simd simdlen(GSF_LANES)
            for (int64_t c = k * s.half; c < (k + 1) * s.half; ++c) {
              dst[c] = store<T>(load(gv[c]) + coef[c] * gn[c] - per_xhat[c] * (load(x[c]) - mean[c]) +
                                constant[c] + per_gate[c] * g);
            }
          }
        }
      }
    });
    return;
  }
  TORCH_CHECK(v.pixel == 1 && grad_v.pixel == 1 && out.pixel == 1,
              "GSF input_gradient: expected contiguous pixels or contiguous channels");
  at::parallel_for(0, s.frame_count() * processed, 1, [&](int64_t begin, int64_t end) {
    for (int64_t index = begin; index < end; ++index) {
      const int64_t frame = index / processed, c = index % processed, k = c / s.half;
      const T* x = v.at(frame, c);
      const T* gn = grad_normed + index * pixels;
      const T* gv = grad_v.at(frame, c);
      T* dst = out.at(frame, c);
      const float* g = gate + (frame * 2 + k) * pixels;
      const float a = coef[c], m = mean[c], is = invstd[c];
      const float constant = -a * centre[c] + grad_means[frame * 2 * processed + c] * inverse_pixels;
      const float per_gate = grad_means[(frame * 2 + 1) * processed + c] * inverse_pixels;
      const float per_xhat = a * slope[c] * is;
#pragma omp simd simdlen(GSF_LANES)
      for (int64_t p = 0; p < pixels; ++p) {
        dst[p] = store<T>(load(gv[p]) + a * load(gn[p]) - per_xhat * (load(x[p]) - m) + constant + per_gate * g[p]);
      }
    }
  });
}

void input_gradient(const at::Tensor& v, const at::Tensor& grad_normed, const at::Tensor& grad_v,
                    const at::Tensor& grad_means, const at::Tensor& gate, const at::Tensor& coef,
                    const at::Tensor& centre, const at::Tensor& slope, const at::Tensor& mean,
                    const at::Tensor& invstd, at::Tensor out) {
  const Shape s = shape_of(v, 1);  // per frame: clips play no part
  TORCH_CHECK(grad_normed.is_contiguous(), "GSF input_gradient: grad_normed must be contiguous");
  check_map(grad_normed, v, "grad_normed");
  check_map(grad_v, v, "grad_v");
  check_map(out, v, "out");
  check_floats(grad_means, s.frame_count() * 2 * 2 * s.half, "grad_means (N*T, 2, P)");
  check_floats(gate, s.frame_count() * 2 * s.pixels, "gate (N*T, 2, H, W)");
  for (const auto* t : {&coef, &centre, &slope, &mean, &invstd}) check_floats(*t, v.size(1), "statistics");
  dispatch(v, [&](auto t) {
    using T = decltype(t);
    input_gradient_kernel<T>(v, data_of<T>(grad_normed), grad_v, grad_means.data_ptr<float>(),
                             gate.data_ptr<float>(), coef.data_ptr<float>(), centre.data_ptr<float>(),
                             slope.data_ptr<float>(), mean.data_ptr<float>(), invstd.data_ptr<float>(), out, s);
  });
}

// ---------------------------------------------------------------------------------------------
// infer: GSF without autograd, the passes above in turn: the batch norm's per-channel scale and
// shift from mean and var, the gate with the spatial means, the fusion weights, then the blend
// of x's first P channels into out's. out is x itself (in place) or a new tensor whose other
// channels the caller has filled (twin: the PyTorch-ops branch of _forward_without_autograd).

void infer(at::Tensor x, at::Tensor out, int64_t processed, int64_t num_segments, const at::Tensor& mean,
           const at::Tensor& var, double eps, const at::Tensor& bn_weight, const at::Tensor& bn_bias,
           const at::Tensor& conv_weight, const at::Tensor& conv_bias, const at::Tensor& fusion_weight_1,
           const at::Tensor& fusion_weight_2, const at::Tensor& fusion_bias_1, const at::Tensor& fusion_bias_2) {
  check_dtype(x);
  TORCH_CHECK(x.dim() == 4 && processed > 0 && processed <= x.size(1), "GSF infer: x must be (N*T, C, H, W) with C >= ",
              processed, ", got ", x.sizes());
  check_map(out, x, "out");
  TORCH_CHECK(out.is_same(x) || !out.is_alias_of(x), "GSF infer: out must be x itself or not share its memory");
  const at::Tensor m = as_floats(mean), variance = as_floats(var), weight = as_floats(bn_weight),
                   bias = as_floats(bn_bias), conv_w = as_floats(conv_weight), conv_b = as_floats(conv_bias);
  check_floats(m, processed, "mean");
  check_floats(variance, processed, "var");
  check_floats(weight, processed, "bn_weight");
  check_floats(bias, processed, "bn_bias");
  check_floats(conv_w, processed * 27, "conv_weight (2, P/2, 3, 3, 3)");
  check_floats(conv_b, 2, "conv_bias");
  std::vector<float> scale(processed), shift(processed);
  const float *mean_of = m.data_ptr<float>(), *var_of = variance.data_ptr<float>();
  const float *weight_of = weight.data_ptr<float>(), *bias_of = bias.data_ptr<float>();
  for (int64_t c = 0; c < processed; ++c) {
    const float invstd = 1.0f / std::sqrt(var_of[c] + static_cast<float>(eps));
    scale[c] = weight_of[c] * invstd;
    shift[c] = bias_of[c] - mean_of[c] * scale[c];
  }
  // Both fusion convs as one (group, [shifted, residual], 3, 3) weight and (group,) bias.
  float fusion_weight[36], fusion_bias[2];
  copy_floats(fusion_weight_1, 18, "fusion weight (1, 2, 3, 3)", fusion_weight);
  copy_floats(fusion_weight_2, 18, "fusion weight (1, 2, 3, 3)", fusion_weight + 18);
  copy_floats(fusion_bias_1, 1, "fusion bias (1,)", fusion_bias);
  copy_floats(fusion_bias_2, 1, "fusion bias (1,)", fusion_bias + 1);
  const at::Tensor v = x.narrow(1, 0, processed);
  TORCH_CHECK(v.stride(3) == 1 || v.stride(1) == 1,
              "GSF infer: x's pixels or channels must be contiguous, got strides ", x.strides());
  const Shape s = shape_of(v, num_segments);
  // Scratch without tensors: this runs once per GSF per inference call.
  const std::unique_ptr<float[]> gate(new float[s.frame_count() * 2 * s.pixels]);
  const std::unique_ptr<float[]> means(new float[s.frame_count() * 2 * processed]);
  const std::unique_ptr<float[]> weights(new float[s.frame_count() * 2 * s.half]);
  dispatch(v, [&](auto t) {
    using T = decltype(t);
    gate_kernel<T>(v, scale.data(), shift.data(), conv_w.data_ptr<float>(), conv_b.data_ptr<float>(), gate.get(),
                   means.get(), s, x.size(2), x.size(3));
    fusion_weights_kernel(means.get(), fusion_weight, fusion_bias, weights.get(), s);
    if (out.is_same(x)) {
      blend_in_place_of<T>(v, gate.get(), weights.get(), s);
    } else {
      blend_kernel<T>(v, gate.get(), weights.get(), out.narrow(1, 0, processed), std::nullopt, s);
    }
  });
}

// backward: GSF's training backward through the kernels above, in one call (twin: the kernel
// set methods that _kernel_backward calls in turn): the blend's adjoint, the fusion weights'
// and the tanh's, the gate conv's two gradients as batched matmuls over the 27 products per
// pixel (relu(bn(v)) recomputed for them), the ReLU and batch-norm sums, then the input's
// gradient written into grad_x's first P channels (whose others the caller has filled). v is
// the forward's copy of the processed channels, gate (N*T, 2, H*W), weights (N, T, 2, P/2) and
// means (N*T, 2, P) float32 as the forward left them; mean and invstd the batch norm's float32
// statistics. Returns the gradients of bn_weight, bn_bias, conv_weight, conv_bias,
// fusion_weight (2, 2, 3, 3) and fusion_bias (2,), in their dtypes.

std::vector<at::Tensor> backward(const at::Tensor& grad_out, at::Tensor grad_x, const at::Tensor& v,
                                 const at::Tensor& gate, const at::Tensor& weights, const at::Tensor& means,
                                 const at::Tensor& mean, const at::Tensor& invstd, const at::Tensor& bn_weight,
                                 const at::Tensor& bn_bias, const at::Tensor& conv_weight,
                                 const at::Tensor& fusion_weight, int64_t num_segments, bool batch_statistics) {
  check_dtype(v);
  const int64_t frames = v.size(0), processed = v.size(1), height = v.size(2), width = v.size(3);
  const int64_t half = processed / 2, pixels = height * width;
  auto uniform = [](const at::Tensor& t) { return t.size(2) == 1 || t.stride(2) == t.size(3) * t.stride(3); };
  at::Tensor grad = grad_out.narrow(1, 0, processed);
  const bool same_layout = (grad.stride(3) == 1 && v.stride(3) == 1) || (grad.stride(1) == 1 && v.stride(1) == 1);
  if (!uniform(grad) || !same_layout) {  // e.g. an NCHW gradient for channels-last v, or an expanded one
    grad = at::empty_like(v).copy_(grad);
  }
  auto [grad_v, grad_gate, grad_weights] = blend_backward(grad, v, gate, weights, num_segments);
  auto [grad_means, grad_fusion_weight, grad_fusion_bias] =
      fusion_weights_backward(grad_weights, weights, means, as_floats(fusion_weight), num_segments);
  gate_gradient(grad_gate, v, gate, grad_means, num_segments);
  const at::Tensor& grad_z = grad_gate;  // through the fusion means and tanh

  // the gate conv: the 27 products' gradient, then weight = sum over frames and pixels of
  // products' gradient x relu(bn(v)), and relu(bn(v))'s gradient = weight^T x products' gradient
  const at::Tensor coef = bn_weight.to(at::kFloat).mul(invstd).contiguous();
  const at::Tensor shift = bn_bias.to(at::kFloat).sub(mean.mul(coef)).contiguous();
  const at::Tensor grad_products = gate_backward(grad_z, num_segments, height, width, v.scalar_type())
                                       .view({frames, 2, 27, pixels});
  at::Tensor activated = at::empty(v.sizes(), v.options().memory_format(at::MemoryFormat::Contiguous));
  norm_relu(v, coef, shift, activated);
  const at::Tensor groups = activated.view({frames, 2, half, pixels});
  const at::Tensor grad_taps_weight = at::matmul(grad_products, groups.transpose(-1, -2)).sum(0);  // (2, 27, P/2)
  const at::Tensor grad_conv_weight =
      grad_taps_weight.view({2, 3, 3, 3, half}).permute({0, 4, 1, 2, 3}).flip({3, 4}).to(conv_weight.scalar_type());
  const at::Tensor taps_weight =
      conv_weight.flip({3, 4}).permute({0, 2, 3, 4, 1}).reshape({2, 27, half}).to(v.scalar_type());
  at::Tensor grad_groups = activated.view({frames, 2, half, pixels});
  at::matmul_out(grad_groups, taps_weight.transpose(-1, -2), grad_products);
  const at::Tensor& grad_normed = activated;  // (N*T, P, H, W), overwritten by the ReLU's mask
  auto [sum_grad, sum_grad_xhat] = norm_relu_backward(grad_normed, v, coef, shift, mean, invstd);

  at::Tensor centre, slope;
  if (batch_statistics) {  // the statistics' own gradient, over N*T*H*W values per channel
    centre = sum_grad.div(static_cast<double>(frames * pixels));
    slope = sum_grad_xhat.div(static_cast<double>(frames * pixels));
  } else {
    centre = at::zeros({processed}, coef.options());
    slope = at::zeros({processed}, coef.options());
  }
  input_gradient(v, grad_normed, grad_v, grad_means, gate, coef, centre, slope, mean, invstd,
                 grad_x.narrow(1, 0, processed));
  return {sum_grad_xhat.to(bn_weight.scalar_type()), sum_grad.to(bn_bias.scalar_type()),
          grad_conv_weight.contiguous(), grad_z.view({frames, 2, pixels}).sum({0, 2}).to(conv_weight.scalar_type()),
          grad_fusion_weight.to(fusion_weight.scalar_type()), grad_fusion_bias.to(fusion_weight.scalar_type())};
}

// ---------------------------------------------------------------------------------------------
// The compiled graph's C++ ops: GSF's inference and TSM's shift. lightning_gsf/compiled_ops.py
// defines their schemas, fake implementations (and the shift's autograd formula) under a
// namespace that carries a digest of its source; register_compiled_ops puts these CPU kernels
// behind them, so that a compiled graph calls this C++ through the dispatcher with no Python
// in between (a Python custom op's own wrapping, cold after every backbone layer, cost ~80 us
// a call; the compiler traces the shift's autograd formula, which is Python, into its backward
// graph, so only an eager call with autograd runs it). They take maps in any layout (the compiler chooses): one the kernels do not address
// runs on a dense copy in the layout the fake implementation gives (x's, by
// compiled_ops._dense_like).

bool addressable(const at::Tensor& x) {  // twin: cpu_kernels.addressable
  const bool uniform_pixels = x.size(2) == 1 || x.stride(2) == x.size(3) * x.stride(3);
  return uniform_pixels && (x.stride(3) == 1 || x.stride(1) == 1);
}

at::MemoryFormat dense_format(const at::Tensor& x) {  // twin: compiled_ops._channels_last
  return x.stride(1) == 1 && x.stride(3) != 1 ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// infer over x itself.
void compiled_infer_(at::Tensor x, int64_t processed, int64_t num_segments, const at::Tensor& mean,
                     const at::Tensor& var, double eps, const at::Tensor& bn_weight, const at::Tensor& bn_bias,
                     const at::Tensor& conv_weight, const at::Tensor& conv_bias, const at::Tensor& fusion_weight_1,
                     const at::Tensor& fusion_weight_2, const at::Tensor& fusion_bias_1,
                     const at::Tensor& fusion_bias_2) {
  TORCH_CHECK(x.dim() == 4, "GSF infer_: x must be (N*T, C, H, W), got ", x.sizes());
  at::Tensor work = addressable(x) ? x : x.contiguous(dense_format(x));
  infer(work, work, processed, num_segments, mean, var, eps, bn_weight, bn_bias, conv_weight, conv_bias,
        fusion_weight_1, fusion_weight_2, fusion_bias_1, fusion_bias_2);
  if (!work.is_same(x)) x.copy_(work);
}

// infer into a new tensor, dense in x's layout.
at::Tensor compiled_infer(const at::Tensor& x, int64_t processed, int64_t num_segments, const at::Tensor& mean,
                          const at::Tensor& var, double eps, const at::Tensor& bn_weight, const at::Tensor& bn_bias,
                          const at::Tensor& conv_weight, const at::Tensor& conv_bias,
                          const at::Tensor& fusion_weight_1, const at::Tensor& fusion_weight_2,
                          const at::Tensor& fusion_bias_1, const at::Tensor& fusion_bias_2) {
  TORCH_CHECK(x.dim() == 4 && processed > 0 && processed <= x.size(1),
              "GSF infer: x must be (N*T, C, H, W) with C >= ", processed, ", got ", x.sizes());
  const at::MemoryFormat format = dense_format(x);
  const at::Tensor work = addressable(x) ? x : x.contiguous(format);
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(format));
  out.narrow(1, processed, x.size(1) - processed).copy_(x.narrow(1, processed, x.size(1) - processed));
  infer(work, out, processed, num_segments, mean, var, eps, bn_weight, bn_bias, conv_weight, conv_bias,
        fusion_weight_1, fusion_weight_2, fusion_bias_1, fusion_bias_2);
  return out;
}

// TSM's shifts on channels-last maps (the compiled graph's copy and the in-place one) go
// through a clip's frames a block of this many pixels at a time.
constexpr int64_t kShiftPixelBlock = 64;

// temporal_shift / temporal_shift_backward: TSM's shift into a new tensor dense in the layout
// of x (twin: lightning_gsf.temporal._shift_copy_into), the compiled graph's shift and its
// adjoint: channels [0, fold) take frame t + 1 and [fold, 2 fold) frame t - 1 (the adjoint:
// the other way round), zero beyond the clip, the others copied. Elements of 1, 2, 4 or 8 bytes
// (values are moved, not computed: T is an unsigned integer of the element's size). One pass over the map: a
// frame's three runs of channels as blocks (NCHW), or each pixel's three runs, a block of
// pixels through a clip's frames at a time (channels-last).
template <typename T>
void shift_copy_kernel(const Map<const T>& x, const Map<T>& out, int64_t frames, int64_t num_segments,
                       int64_t channels, int64_t fold, int64_t pixels, bool backwards_first) {
  const int64_t next_c0 = backwards_first ? 0 : fold, previous_c0 = backwards_first ? fold : 0;
  // (source frame, first channel, channels) of each of frame f's runs; source < 0: zeros
  auto runs_of = [&](int64_t f) {
    const int64_t t = f % num_segments;
    return std::array<std::array<int64_t, 3>, 3>{{{t + 1 < num_segments ? f + 1 : -1, next_c0, fold},
                                                  {t > 0 ? f - 1 : -1, previous_c0, fold},
                                                  {f, 2 * fold, channels - 2 * fold}}};
  };
  if (out.pixel == 1 && out.channel == pixels) {  // planes: each run one block
    at::parallel_for(0, frames, 1, [&](int64_t begin, int64_t end) {
      for (int64_t f = begin; f < end; ++f) {
        for (const auto& run : runs_of(f)) {
          T* dst = out.at(f, run[1]);
          if (run[0] < 0) {
            std::fill(dst, dst + run[2] * pixels, T{});
          } else {
            std::memcpy(dst, x.at(run[0], run[1]), run[2] * pixels * sizeof(T));
          }
        }
      }
    });
    return;
  }
  // Channels innermost: a block of pixels at a time through every frame of a clip, so that a
  // frame's values, read for its neighbours' runs and its own, are read while in cache. (Whole
  // frames in turn, the float32 shift at ResNet-50's TSM sites, 160 px, took a median 1.20x a
  // channels-last clone() of the same maps over five runs; in blocks 1.10x over six.)
  constexpr int64_t block = kShiftPixelBlock;
  const int64_t blocks = (pixels + block - 1) / block, clips = frames / num_segments;
  at::parallel_for(0, clips * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t index = begin; index < end; ++index) {
      const int64_t clip = index / blocks, first = index % blocks * block, last = std::min(first + block, pixels);
      for (int64_t f = clip * num_segments; f < (clip + 1) * num_segments; ++f) {
        const auto runs = runs_of(f);
        for (int64_t p = first; p < last; ++p) {
          for (const auto& run : runs) {
            T* dst = out.at(f, run[1]) + p * out.pixel;
            const int64_t count = run[2];
            if (run[0] < 0) {
#pragma omp simd
              for (int64_t c = 0; c < count; ++c) dst[c] = T{};
            } else {
              const T* src = x.at(run[0], run[1]) + p * x.pixel;
#pragma omp simd
              for (int64_t c = 0; c < count; ++c) dst[c] = src[c];
            }
          }
        }
      }
    }
  });
}

// The shifted copy of `source` into a new tensor dense in `layout`'s memory format.
at::Tensor shift_copy(const at::Tensor& source, const at::Tensor& layout, int64_t num_segments, int64_t fold,
                      bool backwards_first) {
  TORCH_CHECK(source.dim() == 4 && num_segments > 0 && source.size(0) % num_segments == 0,
              "TSM shift: x must be (N*T, C, H, W) with T = ", num_segments, ", got ", source.sizes());
  TORCH_CHECK(fold >= 0 && 2 * fold <= source.size(1), "TSM shift: 2 * fold (", fold, ") exceeds the channels ",
              source.size(1));
  at::Tensor out = at::empty(source.sizes(), source.options().memory_format(dense_format(layout)));
  const at::Tensor src = source.strides() == out.strides() ? source : at::empty_like(out).copy_(source);
  const int64_t pixels = source.size(2) * source.size(3);
  auto run = [&](auto element) {
    using T = decltype(element);
    const Map<const T> x{static_cast<const T*>(src.data_ptr()), src.stride(0), src.stride(1), src.stride(3)};
    const Map<T> to{static_cast<T*>(out.data_ptr()), out.stride(0), out.stride(1), out.stride(3)};
    shift_copy_kernel<T>(x, to, source.size(0), num_segments, source.size(1), fold, pixels, backwards_first);
  };
  switch (source.element_size()) {
    case 1: run(uint8_t{}); break;
    case 2: run(uint16_t{}); break;
    case 4: run(uint32_t{}); break;
    case 8: run(uint64_t{}); break;
    default: TORCH_CHECK(false, "TSM shift: unsupported element size ", source.element_size());
  }
  return out;
}

at::Tensor compiled_temporal_shift(const at::Tensor& x, int64_t num_segments, int64_t fold) {
  return shift_copy(x, x, num_segments, fold, true);
}

// The adjoint applied to grad, into x's layout.
at::Tensor compiled_temporal_shift_backward(const at::Tensor& grad, const at::Tensor& x, int64_t num_segments,
                                            int64_t fold) {
  TORCH_CHECK(grad.sizes() == x.sizes() && grad.scalar_type() == x.scalar_type(),
              "TSM shift backward: grad must be like x ", x.sizes(), " ", x.scalar_type(), ", got ", grad.sizes(), " ",
              grad.scalar_type());
  return shift_copy(grad, x, num_segments, fold, false);
}

// (below, with TSM's in-place shift)
at::Tensor compiled_shifted_convolution(const at::Tensor& x, const at::Tensor& weight,
                                        const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                        at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                        int64_t num_segments, int64_t fold);
std::tuple<at::Tensor, at::Tensor, at::Tensor> compiled_shifted_convolution_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, int64_t num_segments, int64_t fold,
    std::array<bool, 3> output_mask);

// Autograd kernel of the ops without a backward: an error where autograd would need one (with
// grad enabled and an input that requires grad), else the op below autograd.
void refuse_backward(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
  const size_t arguments = op.schema().arguments().size();
  if (at::GradMode::is_enabled()) {
    for (size_t i = stack->size() - arguments; i < stack->size(); ++i) {
      const c10::IValue& value = (*stack)[i];
      TORCH_CHECK(!(value.isTensor() && value.toTensor().requires_grad()), op.schema().name(),
                  " has no backward: call it under torch.no_grad() or on tensors that do not require grad");
    }
  }
  at::AutoDispatchBelowAutograd guard;
  op.redispatchBoxed(keys & c10::after_autograd_keyset, stack);
}

// ADInplaceOrView kernel of infer_: its write over x counted in x's version, as for PyTorch's
// own in-place ops (autograd then refuses a tensor it saved that infer_ overwrote).
void count_write(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
  const at::Tensor x = (*stack)[stack->size() - op.schema().arguments().size()].toTensor();
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
  }
  torch::autograd::impl::bump_version(x);
}

// The CPU kernels of `ns`::infer_, infer, temporal_shift, shifted_convolution and their
// backwards, once per namespace (the registrations live as long as the process); the autograd
// side of those without a backward (temporal_shift's and shifted_convolution's are registered in
// Python).
void register_compiled_ops(const std::string& ns) {
  static std::mutex mutex;
  static std::vector<std::unique_ptr<torch::Library>> libraries;
  static std::vector<std::string> registered;
  const std::lock_guard<std::mutex> lock(mutex);
  if (std::find(registered.begin(), registered.end(), ns) != registered.end()) return;
  auto library = [&](c10::DispatchKey key) {
    libraries.push_back(std::make_unique<torch::Library>(torch::Library::IMPL, ns, key, __FILE__, __LINE__));
    return libraries.back().get();
  };
  torch::Library* cpu = library(c10::DispatchKey::CPU);
  cpu->impl("infer_", TORCH_FN(compiled_infer_));
  cpu->impl("infer", TORCH_FN(compiled_infer));
  cpu->impl("temporal_shift", TORCH_FN(compiled_temporal_shift));
  cpu->impl("temporal_shift_backward", TORCH_FN(compiled_temporal_shift_backward));
  cpu->impl("shifted_convolution", TORCH_FN(compiled_shifted_convolution));
  cpu->impl("shifted_convolution_backward", TORCH_FN(compiled_shifted_convolution_backward));
  torch::Library* autograd = library(c10::DispatchKey::Autograd);
  for (const char* op : {"infer_", "infer", "temporal_shift_backward", "shifted_convolution_backward"}) {
    autograd->impl(op, torch::CppFunction::makeFromBoxedFunction<&refuse_backward>());
  }
  library(c10::DispatchKey::ADInplaceOrView)->impl("infer_", torch::CppFunction::makeFromBoxedFunction<&count_write>());
  registered.push_back(ns);
}

// ---------------------------------------------------------------------------------------------
// temporal_shift_ / temporal_unshift_: TSM's shift written over x itself (twin: the copy of
// lightning_gsf.temporal._shift_copy), for inference, where the shifted map is read once, by the
// next convolution, and x itself is needed after it (the residual): channels [0, fold) take
// frame t + 1 and [fold, 2 fold) frame t - 1, zero beyond the clip. What the shift overwrites
// and no frame keeps (each clip's first frame of [0, fold) and last of [fold, 2 fold)) goes
// to `saved` (N * 2, fold, H, W), from which temporal_unshift_ restores x exactly. An eighth
// of the channels moves each way (a quarter of the map in all), where the copy writes all of it.
// temporal_shift_adjoint_: the shift's adjoint written over a gradient (twin:
// lightning_gsf.temporal._unshift_in_place): the moves of temporal_unshift_, with zeros where it
// would restore from `saved` (a frame's values that leave the clip).

// `count` channels of frame `from` from channel `from_c0` on, copied to frame `to` from
// channel `to_c0` on (x, or saved; any strides); from < 0: zeros. Whole blocks where both maps
// are NCHW, a pixel's run of channels at a time where both are channels-last.
template <typename T>
void move_channels(const Map<T>& to_map, int64_t to, int64_t to_c0, const Map<T>& from_map, int64_t from,
                   int64_t from_c0, int64_t count, int64_t pixels) {
  T* dst = to_map.at(to, to_c0);
  const T* src = from < 0 ? nullptr : from_map.at(from, from_c0);
  const bool zeros = src == nullptr;
  if (to_map.pixel == 1 && to_map.channel == pixels && (zeros || (from_map.pixel == 1 && from_map.channel == pixels))) {
    if (zeros) {
      std::fill(dst, dst + count * pixels, T{});
    } else {
      std::memmove(dst, src, count * pixels * sizeof(T));
    }
    return;
  }
  if (to_map.channel == 1 && (zeros || from_map.channel == 1)) {
    // A run of a few cache lines a pixel: a loop, not a memmove call each. The runs are
    // different frames' or saved's, never overlapping.
    for (int64_t p = 0; p < pixels; ++p) {
      T* d = dst + p * to_map.pixel;
      if (zeros) {
#pragma omp simd
        for (int64_t c = 0; c < count; ++c) d[c] = T{};
      } else {
        const T* s = src + p * from_map.pixel;
#pragma omp simd
        for (int64_t c = 0; c < count; ++c) d[c] = s[c];
      }
    }
    return;
  }
  for (int64_t c = 0; c < count; ++c) {
    for (int64_t p = 0; p < pixels; ++p) {
      dst[c * to_map.channel + p * to_map.pixel] = zeros ? T{} : src[c * from_map.channel + p * from_map.pixel];
    }
  }
}

// One (clip, side) of the shift (restore false) or of its undoing (restore true; without
// `saved`, the adjoint: zeros instead of the saved frame). Side 0: channels [0, fold), which
// take frame t + 1; side 1: [fold, 2 fold), which take frame t - 1.
template <typename T>
void shift_side(const Map<T>& x, const Map<T>* saved, int64_t clip, int64_t side, int64_t frames, int64_t fold,
                int64_t pixels, bool restore) {
  auto move = [&](const Map<T>& to_map, int64_t to, int64_t to_c0, const Map<T>& from_map, int64_t from,
                  int64_t from_c0) { move_channels(to_map, to, to_c0, from_map, from, from_c0, fold, pixels); };
  const int64_t first = clip * frames, last = first + frames - 1, kept = clip * 2 + side;
  const int64_t c0 = side * fold;
  // Side 0 moves frames down (t <- t + 1) in increasing t; side 1 up, in decreasing t; undoing
  // either runs the other way. Each frame is read before it is overwritten.
  const bool down = (side == 0) != restore;
  const int64_t lost = side == 0 ? first : last;  // the frame the shift overwrites unread
  if (!restore) move(*saved, kept, 0, x, lost, c0);
  if (down) {
    for (int64_t f = first; f < last; ++f) move(x, f, c0, x, f + 1, c0);
  } else {
    for (int64_t f = last; f > first; --f) move(x, f, c0, x, f - 1, c0);
  }
  if (restore) {
    if (saved != nullptr) {
      move(x, lost, c0, *saved, kept, 0);
    } else {
      move(x, lost, c0, x, -1, c0);  // (the adjoint: what leaves the clip is lost)
    }
  } else {
    move(x, side == 0 ? last : first, c0, x, -1, c0);  // zero beyond the clip
  }
}

// `saved` undefined: the adjoint's call, which has none.
void check_shift(const at::Tensor& x, const at::Tensor& saved, int64_t num_segments, int64_t fold) {
  check_dtype(x);
  TORCH_CHECK(x.dim() == 4 && num_segments > 0 && x.size(0) % num_segments == 0,
              "TSM shift: x must be (N*T, C, H, W) with T = ", num_segments, ", got ", x.sizes());
  TORCH_CHECK(fold >= 0 && 2 * fold <= x.size(1), "TSM shift: 2 * fold (", fold, ") exceeds the channels ", x.size(1));
  auto dense = [](const at::Tensor& t) {
    return t.is_contiguous() || t.is_contiguous(at::MemoryFormat::ChannelsLast);
  };
  TORCH_CHECK(dense(x), "TSM shift: x must be contiguous (NCHW or channels-last), got strides ", x.strides());
  if (!saved.defined()) return;
  TORCH_CHECK(saved.scalar_type() == x.scalar_type() && saved.dim() == 4 &&
                  saved.size(0) == x.size(0) / num_segments * 2 && saved.size(1) == fold &&
                  saved.size(2) == x.size(2) && saved.size(3) == x.size(3) && dense(saved),
              "TSM shift: saved must be a contiguous (N * 2, fold, H, W) tensor of x's dtype, got ", saved.sizes(),
              " ", saved.scalar_type(), " strides ", saved.strides());
}

void shift_in_place(at::Tensor& x, const at::Tensor& saved, int64_t num_segments, int64_t fold, bool restore) {
  check_shift(x, saved, num_segments, fold);
  const int64_t clips = x.size(0) / num_segments, pixels = x.size(2) * x.size(3);
  if (fold == 0 || pixels == 0) return;
  dispatch(x, [&](auto t) {
    using T = decltype(t);
    // (map_of refuses a pixel stride that does not step through H*W, as a W = 1 map's may not)
    const Map<T> map = map_of<T>(x, "x");
    const bool has_saved = saved.defined();
    const Map<T> kept = has_saved ? map_of<T>(saved, "saved") : map;  // (without saved: unread, and x's layout)
    // Channels-last maps a block of pixels at a time, every frame's run of it in turn (block =
    // pixels otherwise: move_channels tells NCHW planes by a channel stride of `pixels`). Against
    // whole frames in turn with a memmove per pixel and run, the shift and its undoing at
    // ResNet-50's sites (T=8, 160 px, float32; three runs each) took 0.86-0.90 of the time with
    // the loop alone, 0.84-0.85 with the loop and the blocks; bfloat16 the same either way.
    // Both sides of a block in turn (a pixel's two runs are adjacent): against every block of
    // one side and then of the other, 0.85-0.87 of the time (scripts/compare_cpu_kernels.py
    // --op tsm --channels-last, float32, one thread, two runs), bf16 0.92, NCHW 0.99; on two
    // threads, channels-last 0.78, NCHW 1.04 (the sides of its one block a clip on two threads,
    // as before).
    const int64_t block = map.channel == 1 && kept.channel == 1 ? kShiftPixelBlock : pixels;
    const int64_t blocks = (pixels + block - 1) / block;
    // (index: clip, block, side; a block's two sides are neighbours, so a thread takes both,
    // except where a range splits them, as NCHW's one block a clip with one clip)
    at::parallel_for(0, clips * blocks * 2, 1, [&](int64_t begin, int64_t end) {
      for (int64_t index = begin; index < end; ++index) {
        const int64_t clip = index / 2 / blocks, first_pixel = index / 2 % blocks * block;
        const int64_t block_pixels = std::min(block, pixels - first_pixel);
        const Map<T> part{map.data + first_pixel * map.pixel, map.frame, map.channel, map.pixel};
        const Map<T> kept_part{kept.data + first_pixel * kept.pixel, kept.frame, kept.channel, kept.pixel};
        shift_side(part, has_saved ? &kept_part : nullptr, clip, index % 2, num_segments, fold, block_pixels,
                   restore);
      }
    });
  });
}

void temporal_shift_(at::Tensor x, at::Tensor saved, int64_t num_segments, int64_t fold) {
  shift_in_place(x, saved, num_segments, fold, false);
}

void temporal_unshift_(at::Tensor x, at::Tensor saved, int64_t num_segments, int64_t fold) {
  shift_in_place(x, saved, num_segments, fold, true);
}

void temporal_shift_adjoint_(at::Tensor x, int64_t num_segments, int64_t fold) {
  shift_in_place(x, at::Tensor(), num_segments, fold, true);
}

// ---------------------------------------------------------------------------------------------
// shifted_convolution / shifted_convolution_backward: conv2d(temporal_shift(x), weight, bias)
// and its gradients without the shifted copy, for the compiled graph (twin: the eager
// lightning_gsf.temporal._ShiftedConvolution). x is shifted in its own memory around the
// convolution and around the weight gradient's, and restored bit for bit after; the input
// gradient (the convolution's new tensor) takes the adjoint in place. To the compiler the ops
// are functional: x comes back as it was, and nothing else of the graph runs while it is shifted
// (a compiled graph's CPU ops run one after another; x must be writable, and another thread
// must not read it meanwhile, as for eager inference's in-place shift). A map the in-place shift
// does not take (not dense in NCHW or channels-last, another dtype) is convolved from a shifted
// copy. Both compute in their inputs' dtypes: autocast, which would cast them, is the caller's
// (the graph's) to apply.

// Whether the in-place shift (shift_in_place) takes x.
bool shiftable_in_place(const at::Tensor& x) {
  const bool dense = x.is_contiguous() || x.is_contiguous(at::MemoryFormat::ChannelsLast);
  return x.dim() == 4 && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16) && dense &&
         addressable(x);
}

// x shifted while the guard lives: x itself, shifted in place and restored when the guard goes
// (also when what runs in between throws), or a shifted copy where the in-place shift does not
// take x.
class ShiftedInput {
 public:
  ShiftedInput(const at::Tensor& x, int64_t num_segments, int64_t fold)
      : x_(x), num_segments_(num_segments), fold_(fold) {
    if (!shiftable_in_place(x)) {
      shifted_ = shift_copy(x, x, num_segments, fold, true);
      return;
    }
    TORCH_CHECK(num_segments > 0 && x.size(0) % num_segments == 0, "TSM shift: x must be (N*T, C, H, W) with T = ",
                num_segments, ", got ", x.sizes());
    // what the shift overwrites and no frame keeps (as temporal._saved_frames)
    const at::MemoryFormat format = x.is_contiguous() ? at::MemoryFormat::Contiguous : at::MemoryFormat::ChannelsLast;
    saved_ = at::empty({x.size(0) / num_segments * 2, fold, x.size(2), x.size(3)}, x.options().memory_format(format));
    shift_in_place(x_, saved_, num_segments, fold, false);
    shifted_ = x_;
  }
  ~ShiftedInput() {
    if (!saved_.defined()) return;
    try {  // (the constructor's checks passed on the same tensors: this does not throw)
      shift_in_place(x_, saved_, num_segments_, fold_, true);
    } catch (const std::exception& error) {  // a destructor must not throw (while unwinding: terminate)
      TORCH_WARN("TSM shift: restoring the shifted input failed: ", error.what());
    }
  }
  ShiftedInput(const ShiftedInput&) = delete;
  ShiftedInput& operator=(const ShiftedInput&) = delete;

  const at::Tensor& tensor() const { return shifted_; }

 private:
  at::Tensor x_, saved_, shifted_;
  int64_t num_segments_, fold_;
};

constexpr std::array<int64_t, 2> kNoOutputPadding{0, 0};

at::Tensor compiled_shifted_convolution(const at::Tensor& x, const at::Tensor& weight,
                                        const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                        at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                        int64_t num_segments, int64_t fold) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const ShiftedInput shifted(x, num_segments, fold);
  return at::convolution(shifted.tensor(), weight, bias, stride, padding, dilation, false, kNoOutputPadding, groups);
}

// The gradients of x, weight and bias where output_mask asks for them, else empty tensors.
std::tuple<at::Tensor, at::Tensor, at::Tensor> compiled_shifted_convolution_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, int64_t num_segments, int64_t fold,
    std::array<bool, 3> output_mask) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const std::array<int64_t, 1> bias_size{weight.size(0)};
  const at::OptionalIntArrayRef bias_sizes =
      output_mask[2] ? at::OptionalIntArrayRef(bias_size) : at::OptionalIntArrayRef(std::nullopt);
  auto gradients = [&](const at::Tensor& input) {
    return at::convolution_backward(grad_out, input, weight, bias_sizes, stride, padding, dilation, false,
                                    kNoOutputPadding, groups, output_mask);
  };
  at::Tensor grad_x, grad_weight, grad_bias;
  if (output_mask[1]) {  // (the weight's gradient reads the shifted input; the input's only its shape)
    const ShiftedInput shifted(x, num_segments, fold);
    std::tie(grad_x, grad_weight, grad_bias) = gradients(shifted.tensor());
  } else {
    std::tie(grad_x, grad_weight, grad_bias) = gradients(x);
  }
  if (grad_x.defined()) {  // the shift's adjoint, over the convolution's new tensor where it can
    if (shiftable_in_place(grad_x) && !grad_x.is_alias_of(grad_out)) {
      shift_in_place(grad_x, at::Tensor(), num_segments, fold, true);
    } else {
      grad_x = shift_copy(grad_x, grad_x, num_segments, fold, false);
    }
  }
  auto or_empty = [&](const at::Tensor& t) { return t.defined() ? t : at::empty({0}, x.options()); };
  return {or_empty(grad_x), or_empty(grad_weight), or_empty(grad_bias)};
}

// parallel_threads: how many threads one of the kernels' parallel loops over `work` items runs
// on (one where the build lacks OpenMP, whatever torch.get_num_threads() says).
int64_t parallel_threads(int64_t work) {
  std::vector<char> used(std::max(at::get_num_threads(), 1), 0);
  at::parallel_for(0, work, 1, [&](int64_t, int64_t) { used[at::get_thread_num()] = 1; });
  return std::count(used.begin(), used.end(), 1);
}

}  // namespace

// Schemas here, CPU implementations below: tensors of other dispatch keys (fake, meta, ...)
// get a clear 'no kernel' error instead of running raw-pointer loops on them.
TORCH_LIBRARY(lightning_gsf, m) {
  m.def("blend(Tensor v, Tensor gate, Tensor weights, Tensor(a!) out, int num_segments, Tensor(b!)? copy=None) -> ()");
  m.def("blend_in_place(Tensor(a!) v, Tensor gate, Tensor weights, int num_segments) -> ()");
  m.def("blend_backward(Tensor grad_out, Tensor v, Tensor gate, Tensor weights, int num_segments)"
        " -> (Tensor, Tensor, Tensor)");
  m.def("channel_moments(Tensor v) -> (Tensor, Tensor)");
  m.def("norm_relu(Tensor v, Tensor scale, Tensor shift, Tensor(a!) out) -> ()");
  m.def("norm_relu_backward(Tensor(a!) grad, Tensor v, Tensor scale, Tensor shift, Tensor mean, Tensor invstd)"
        " -> (Tensor, Tensor)");
  m.def("gate(Tensor v, Tensor scale, Tensor shift, Tensor weight, Tensor bias, int num_segments, Tensor(a!)? means=None) -> Tensor");
  m.def("gate_backward(Tensor grad_z, int num_segments, int height, int width, ScalarType dtype) -> Tensor");
  m.def("fusion_weights(Tensor means, Tensor weight, Tensor bias, int num_segments) -> Tensor");
  m.def("fusion_weights_backward(Tensor grad_weights, Tensor weights, Tensor means, Tensor weight, int num_segments)"
        " -> (Tensor, Tensor, Tensor)");
  m.def("gate_gradient(Tensor(a!) grad_gate, Tensor v, Tensor gate, Tensor grad_means, int num_segments) -> ()");
  m.def("input_gradient(Tensor v, Tensor grad_normed, Tensor grad_v, Tensor grad_means, Tensor gate, Tensor coef,"
        " Tensor centre, Tensor slope, Tensor mean, Tensor invstd, Tensor(a!) out) -> ()");
  m.def("infer(Tensor(a!) x, Tensor(b!) out, int processed, int num_segments, Tensor mean, Tensor var, float eps,"
        " Tensor bn_weight, Tensor bn_bias, Tensor conv_weight, Tensor conv_bias, Tensor fusion_weight_1,"
        " Tensor fusion_weight_2, Tensor fusion_bias_1, Tensor fusion_bias_2) -> ()");
  m.def("backward(Tensor grad_out, Tensor(a!) grad_x, Tensor v, Tensor gate, Tensor weights, Tensor means, Tensor mean,"
        " Tensor invstd, Tensor bn_weight, Tensor bn_bias, Tensor conv_weight, Tensor fusion_weight, int num_segments,"
        " bool batch_statistics) -> Tensor[]");
  m.def("parallel_threads(int work) -> int");
  m.def("temporal_shift_(Tensor(a!) x, Tensor(b!) saved, int num_segments, int fold) -> ()");
  m.def("temporal_unshift_(Tensor(a!) x, Tensor saved, int num_segments, int fold) -> ()");
  m.def("temporal_shift_adjoint_(Tensor(a!) x, int num_segments, int fold) -> ()");
  m.def("bf16_dot_products() -> bool");
  m.def("register_compiled_ops(str ns) -> ()");
}

TORCH_LIBRARY_IMPL(lightning_gsf, CPU, m) {
  m.impl("blend", &blend);
  m.impl("blend_in_place", &blend_in_place);
  m.impl("blend_backward", &blend_backward);
  m.impl("channel_moments", &channel_moments);
  m.impl("norm_relu", &norm_relu);
  m.impl("norm_relu_backward", &norm_relu_backward);
  m.impl("gate", &gate);
  m.impl("gate_backward", &gate_backward);
  m.impl("fusion_weights", &fusion_weights);
  m.impl("fusion_weights_backward", &fusion_weights_backward);
  m.impl("gate_gradient", &gate_gradient);
  m.impl("input_gradient", &input_gradient);
  m.impl("infer", &infer);
  m.impl("backward", &backward);
  m.impl("temporal_shift_", &temporal_shift_);
  m.impl("temporal_unshift_", &temporal_unshift_);
  m.impl("temporal_shift_adjoint_", &temporal_shift_adjoint_);
}

TORCH_LIBRARY_IMPL(lightning_gsf, CompositeExplicitAutograd, m) {
  m.impl("parallel_threads", &parallel_threads);  // no tensor arguments: no dispatch key of its own
  m.impl("bf16_dot_products", &bf16_dot_products);  // whether the bfloat16 gate runs in vdpbf16ps
  m.impl("register_compiled_ops", &register_compiled_ops);  // (cpu_kernels, once built)
}
