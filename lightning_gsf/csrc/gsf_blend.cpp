// GSF's gate-shift-fuse blend on the CPU, forward and backward, one pass each.
//
// Built on first use by lightning_gsf/cpu_kernels.py (torch.utils.cpp_extension) and called
// as torch.ops.lightning_gsf.blend / blend_backward. The PyTorch-ops twins are
// _write_fused and _GateShiftFuse.backward in lightning_gsf/gsf.py; this file computes the
// same numbers (in float32, for float32 and bfloat16 tensors) in one pass over the feature
// map instead of five (forward) and about ten (backward).
//
// Notation (shared/spec/gsf.md): v (N*T, P, H, W) are the processed channels, split into
// groups k = 0, 1 of P/2 channels c = j*Q + i (Q = P/4). With the gate g_k (per pixel) and
// the fusion weight w (per channel), y = g_k * v, r = v - y, s = y of the neighbouring frame
// (group 0 takes frame t + 1, group 1 frame t - 1, zero beyond the clip) and
// f = (1 - w) * r + w * s, written to output channel k*P/2 + 2*i + j (the interleave).
//
// Layouts: a feature map is addressed as (frame, channel, pixel) with the pixel stride
// uniform over H*W (NCHW and channels-last, whole tensors or channel slices of them). Where
// pixels are contiguous, the loops run over one (frame, channel) plane at a time; otherwise
// (channels-last) over pixels, with the channels innermost.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
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
  TORCH_CHECK(x.dim() == 4, "GSF blend: ", name, " must be (N*T, C, H, W), got ", x.sizes());
  TORCH_CHECK(x.stride(2) == x.size(3) * x.stride(3) || x.size(2) == 1,
              "GSF blend: ", name, "'s pixels must have one stride over H*W, got strides ", x.strides());
  return Map<T>{x.data_ptr<std::remove_const_t<T>>(), x.stride(0), x.stride(1), x.stride(3)};
}

struct Shape {
  int64_t clips, frames, half, quarter, pixels;

  int64_t frame_count() const { return clips * frames; }
  // Output channel of group k's source channel c = j*Q + i: k*P/2 + 2*i + j.
  int64_t out_channel(int64_t k, int64_t c) const { return k * half + 2 * (c % quarter) + c / quarter; }
  // The frame whose gated features group k's frame t takes (-1 beyond the clip).
  int64_t shift_source(int64_t frame, int64_t k) const {
    const int64_t t = frame % frames;
    if (k == 0) return t + 1 < frames ? frame + 1 : -1;
    return t > 0 ? frame - 1 : -1;
  }
  // The frame that takes group k's frame t's gated features (the shift's adjoint).
  int64_t shift_target(int64_t frame, int64_t k) const { return shift_source(frame, 1 - k); }
};

Shape shape_of(const at::Tensor& v, int64_t num_segments) {
  const int64_t processed = v.size(1);
  TORCH_CHECK(num_segments > 0 && v.size(0) % num_segments == 0,
              "GSF blend: ", v.size(0), " frames are not a whole number of clips of ", num_segments);
  TORCH_CHECK(processed % 4 == 0, "GSF blend: processed channels must be a multiple of 4, got ", processed);
  return Shape{v.size(0) / num_segments, num_segments, processed / 2, processed / 4, v.size(2) * v.size(3)};
}

void check_operands(const at::Tensor& v, const at::Tensor& gate, const at::Tensor& weights, const Shape& s) {
  TORCH_CHECK(v.device().is_cpu() && gate.device().is_cpu() && weights.device().is_cpu(),
              "GSF blend: CPU tensors only");
  TORCH_CHECK(gate.scalar_type() == v.scalar_type() && weights.scalar_type() == v.scalar_type(),
              "GSF blend: v, gate and weights must share a dtype");
  TORCH_CHECK(gate.is_contiguous() && gate.numel() == s.frame_count() * 2 * s.pixels,
              "GSF blend: gate must be a contiguous (N, T, 2, H, W), got ", gate.sizes());
  TORCH_CHECK(weights.is_contiguous() && weights.numel() == s.frame_count() * s.half * 2,
              "GSF blend: weights must be a contiguous (N, T, 2, P/2), got ", weights.sizes());
}

inline float load(float x) { return x; }
inline float load(c10::BFloat16 x) { return static_cast<float>(x); }

template <typename T>
void blend_forward(const at::Tensor& v_, const at::Tensor& gate_, const at::Tensor& weights_, at::Tensor& out_,
                   const Shape& s) {
  const Map<const T> v = map_of<const T>(v_, "v");
  const Map<T> out = map_of<T>(out_, "out");
  const T* gate = gate_.data_ptr<T>();
  const T* weights = weights_.data_ptr<T>();
  const int64_t pixels = s.pixels;
  auto gate_of = [&](int64_t frame, int64_t k) { return gate + (frame * 2 + k) * pixels; };
  auto weight_of = [&](int64_t frame, int64_t k, int64_t c) { return load(weights[(frame * 2 + k) * s.half + c]); };

  if (v.pixel == 1 && out.pixel == 1) {  // one (frame, group, channel) plane per step
    at::parallel_for(0, s.frame_count() * 2 * s.half, 1, [&](int64_t begin, int64_t end) {
      for (int64_t index = begin; index < end; ++index) {
        const int64_t frame = index / (2 * s.half), k = index / s.half % 2, c = index % s.half;
        const float w = weight_of(frame, k, c);
        const T* src = v.at(frame, k * s.half + c);
        const T* g = gate_of(frame, k);
        T* dst = out.at(frame, s.out_channel(k, c));
        const int64_t neighbour = s.shift_source(frame, k);
        if (neighbour < 0) {
#pragma omp simd
          for (int64_t p = 0; p < pixels; ++p) {
            const float x = load(src[p]);
            dst[p] = static_cast<T>((1.0f - w) * (x - load(g[p]) * x));
          }
        } else {
          const T* src_n = v.at(neighbour, k * s.half + c);
          const T* g_n = gate_of(neighbour, k);
#pragma omp simd
          for (int64_t p = 0; p < pixels; ++p) {
            const float x = load(src[p]);
            dst[p] = static_cast<T>((1.0f - w) * (x - load(g[p]) * x) + w * (load(g_n[p]) * load(src_n[p])));
          }
        }
      }
    });
    return;
  }
  // Channels innermost (unit stride): one (frame, pixel) per step, the group's channels in the
  // inner loop.
  TORCH_CHECK(v.channel == 1 && out.channel == 1, "GSF blend: expected contiguous pixels or contiguous channels");
  at::parallel_for(0, s.frame_count() * pixels, 64, [&](int64_t begin, int64_t end) {
    for (int64_t index = begin; index < end; ++index) {
      const int64_t frame = index / pixels, p = index % pixels;
      for (int64_t k = 0; k < 2; ++k) {
        const float g = load(gate_of(frame, k)[p]);
        const T* src = v.at(frame, k * s.half) + p * v.pixel;
        T* dst = out.at(frame, k * s.half) + p * out.pixel;
        const T* w = weights + (frame * 2 + k) * s.half;
        const int64_t neighbour = s.shift_source(frame, k);
        const float g_n = neighbour < 0 ? 0.0f : load(gate_of(neighbour, k)[p]);
        const T* src_n = v.at(neighbour < 0 ? frame : neighbour, k * s.half) + p * v.pixel;
        for (int64_t j = 0; j < 2; ++j) {  // source channel c = j*Q + i goes to 2*i + j
#pragma omp simd
          for (int64_t i = 0; i < s.quarter; ++i) {
            const int64_t c = j * s.quarter + i;
            const float x = load(src[c]), wc = load(w[c]);
            dst[2 * i + j] = static_cast<T>((1.0f - wc) * (x - g * x) + wc * (g_n * load(src_n[c])));
          }
        }
      }
    }
  });
}

// The adjoint, with G the output gradient de-interleaved: grad_r = G (1 - w), grad_y(t) =
// G w at the frame that took y(t), d = grad_y - grad_r; then grad_v = grad_r + g d,
// grad_g = sum over the group's channels of v d, grad_w = sum over pixels of G (s - r).
template <typename T>
void blend_backward(const at::Tensor& grad_out_, const at::Tensor& v_, const at::Tensor& gate_,
                    const at::Tensor& weights_, at::Tensor& grad_v_, at::Tensor& grad_gate_, at::Tensor& grad_weights_,
                    const Shape& s) {
  const Map<const T> grad_out = map_of<const T>(grad_out_, "grad_out");
  const Map<const T> v = map_of<const T>(v_, "v");
  const Map<T> grad_v = map_of<T>(grad_v_, "grad_v");
  const T* gate = gate_.data_ptr<T>();
  const T* weights = weights_.data_ptr<T>();
  float* grad_gate = grad_gate_.data_ptr<float>();
  float* grad_weights = grad_weights_.data_ptr<float>();
  const int64_t pixels = s.pixels;
  auto gate_of = [&](int64_t frame, int64_t k) { return gate + (frame * 2 + k) * pixels; };
  auto weight_of = [&](int64_t frame, int64_t k, int64_t c) { return load(weights[(frame * 2 + k) * s.half + c]); };
  const bool planes = v.pixel == 1 && grad_out.pixel == 1 && grad_v.pixel == 1;

  // One (frame, group) per step: its gate gradient sums over the group's channels.
  at::parallel_for(0, s.frame_count() * 2, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> channel_sums(s.half);
    for (int64_t index = begin; index < end; ++index) {
      const int64_t frame = index / 2, k = index % 2;
      const T* g = gate_of(frame, k);
      float* grad_g = grad_gate + index * pixels;
      std::fill(grad_g, grad_g + pixels, 0.0f);
      const int64_t source = s.shift_source(frame, k), target = s.shift_target(frame, k);
      const T* g_s = gate_of(source < 0 ? frame : source, k);
      const float has_source = source < 0 ? 0.0f : 1.0f;
      if (planes) {
        for (int64_t c = 0; c < s.half; ++c) {
          const int64_t channel = k * s.half + c, out_channel = s.out_channel(k, c);
          const float w = weight_of(frame, k, c);
          const float w_t = target < 0 ? 0.0f : weight_of(target, k, c);
          const T* x = v.at(frame, channel);
          const T* x_s = v.at(source < 0 ? frame : source, channel);
          const T* grad_f = grad_out.at(frame, out_channel);
          const T* grad_f_t = grad_out.at(target < 0 ? frame : target, out_channel);
          T* grad_x = grad_v.at(frame, channel);
          float grad_w = 0.0f;
#pragma omp simd reduction(+ : grad_w)
          for (int64_t p = 0; p < pixels; ++p) {
            const float xp = load(x[p]), gp = load(g[p]), gf = load(grad_f[p]);
            const float residual = xp - gp * xp, shifted = has_source * load(g_s[p]) * load(x_s[p]);
            const float d = w_t * load(grad_f_t[p]) - (1.0f - w) * gf;
            grad_x[p] = static_cast<T>((1.0f - w) * gf + gp * d);
            grad_g[p] += xp * d;
            grad_w += gf * (shifted - residual);
          }
          grad_weights[index * s.half + c] = grad_w;
        }
        continue;
      }
      TORCH_CHECK(v.channel == 1 && grad_out.channel == 1 && grad_v.channel == 1,
                  "GSF blend backward: expected contiguous pixels or contiguous channels");
      std::fill(channel_sums.begin(), channel_sums.end(), 0.0f);
      const T* w = weights + index * s.half;
      const T* w_t = weights + ((target < 0 ? frame : target) * 2 + k) * s.half;
      const float has_target = target < 0 ? 0.0f : 1.0f;
      for (int64_t p = 0; p < pixels; ++p) {
        const float gp = load(g[p]), g_sp = has_source * load(g_s[p]);
        const T* x = v.at(frame, k * s.half) + p * v.pixel;
        const T* x_s = v.at(source < 0 ? frame : source, k * s.half) + p * v.pixel;
        const T* grad_f = grad_out.at(frame, k * s.half) + p * grad_out.pixel;
        const T* grad_f_t = grad_out.at(target < 0 ? frame : target, k * s.half) + p * grad_out.pixel;
        T* grad_x = grad_v.at(frame, k * s.half) + p * grad_v.pixel;
        float grad_gp = 0.0f;
        float* sums = channel_sums.data();
        for (int64_t j = 0; j < 2; ++j) {  // source channel c = j*Q + i came from 2*i + j
#pragma omp simd reduction(+ : grad_gp)
          for (int64_t i = 0; i < s.quarter; ++i) {
            const int64_t c = j * s.quarter + i, o = 2 * i + j;
            const float wc = load(w[c]), xp = load(x[c]), gf = load(grad_f[o]);
            const float d = has_target * load(w_t[c]) * load(grad_f_t[o]) - (1.0f - wc) * gf;
            grad_x[c] = static_cast<T>((1.0f - wc) * gf + gp * d);
            grad_gp += xp * d;
            sums[c] += gf * (g_sp * load(x_s[c]) - (xp - gp * xp));
          }
        }
        grad_g[p] = grad_gp;
      }
      std::copy(channel_sums.begin(), channel_sums.end(), grad_weights + index * s.half);
    }
  });
}

// relu(v * scale + shift) per channel (the batch norm with given statistics, then the ReLU),
// from v in any (frame, channel, pixel) layout into a contiguous NCHW out, in one pass.
template <typename T>
void norm_relu_kernel(const at::Tensor& v_, const float* scale, const float* shift, at::Tensor& out_) {
  const Map<const T> v = map_of<const T>(v_, "v");
  T* out = out_.data_ptr<T>();
  const int64_t frames = v_.size(0), channels = v_.size(1), pixels = v_.size(2) * v_.size(3);
  if (v.pixel == 1) {  // NCHW: one (frame, channel) plane per step
    at::parallel_for(0, frames * channels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t index = begin; index < end; ++index) {
        const int64_t frame = index / channels, c = index % channels;
        const T* src = v.at(frame, c);
        T* dst = out + index * pixels;
        const float a = scale[c], b = shift[c];
#pragma omp simd
        for (int64_t p = 0; p < pixels; ++p) dst[p] = static_cast<T>(std::max(load(src[p]) * a + b, 0.0f));
      }
    });
    return;
  }
  // Channels innermost: a block of pixels at a time, read across channels, written per channel.
  constexpr int64_t block = 32;
  const int64_t blocks = (pixels + block - 1) / block;
  at::parallel_for(0, frames * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t index = begin; index < end; ++index) {
      const int64_t frame = index / blocks, first = index % blocks * block;
      const int64_t last = std::min(first + block, pixels);
      for (int64_t c = 0; c < channels; ++c) {
        const T* src = v.at(frame, c);
        T* dst = out + (frame * channels + c) * pixels;
        const float a = scale[c], b = shift[c];
        for (int64_t p = first; p < last; ++p) dst[p] = static_cast<T>(std::max(load(src[p * v.pixel]) * a + b, 0.0f));
      }
    }
  });
}

// The gate tanh(conv3d(relu(bn(v)))) from each pixel's 27 products (the matmul of the conv's
// weight with relu(bn(v))): products (N*T, 2, 27, H*W), ordered (temporal tap kt, kh, kw) with
// the spatial taps flipped, so the product at pixel (y, x) lands on (y + kh - 1, x + kw - 1),
// and temporal tap kt of frame t + kt - 1 on frame t (zero padded in space and time).
template <typename T>
void gate_kernel(const T* products, const float* bias, T* gate, const Shape& s, int64_t height, int64_t width) {
  const int64_t pixels = height * width;
  at::parallel_for(0, s.frame_count() * 2, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> sums(pixels);
    for (int64_t index = begin; index < end; ++index) {
      const int64_t frame = index / 2, k = index % 2, t = frame % s.frames;
      std::fill(sums.begin(), sums.end(), bias[k]);
      for (int64_t kt = 0; kt < 3; ++kt) {
        const int64_t source_t = t + kt - 1;
        if (source_t < 0 || source_t >= s.frames) continue;
        const T* taps = products + ((frame + kt - 1) * 2 + k) * 27 * pixels + kt * 9 * pixels;
        for (int64_t kh = 0; kh < 3; ++kh) {
          for (int64_t kw = 0; kw < 3; ++kw) {
            const int64_t dy = kh - 1, dx = kw - 1;
            const T* tap = taps + (kh * 3 + kw) * pixels;
            const int64_t x0 = std::max<int64_t>(dx, 0), x1 = width + std::min<int64_t>(dx, 0);
            for (int64_t y = std::max<int64_t>(dy, 0); y < height + std::min<int64_t>(dy, 0); ++y) {
              float* row = sums.data() + y * width;
              const T* source = tap + (y - dy) * width - dx;
#pragma omp simd
              for (int64_t x = x0; x < x1; ++x) row[x] += load(source[x]);
            }
          }
        }
      }
      T* out = gate + index * pixels;
      for (int64_t p = 0; p < pixels; ++p) out[p] = static_cast<T>(std::tanh(sums[p]));
    }
  });
}

// GSF's fusion weights sigmoid(conv(descriptors)) from the spatial means (N*T, 3, P): row 0
// is mean(v), rows 1 and 2 mean(g_1 v) and mean(g_2 v). Group k's descriptors over (channel c,
// frame t) are the means of its shifted and residual maps: mean(shift(y)) = shift(mean(y)),
// mean(v - y) = mean(v) - mean(y). Its 3x3 conv over (c, t) is zero padded. Out: the weights
// (N, T, 2, P/2).
template <typename T>
void fusion_weights_kernel(const T* means, const float* weight, const float* bias, T* out, const Shape& s) {
  const int64_t half = s.half, frames = s.frames, processed = 2 * half;
  at::parallel_for(0, s.clips * 2, 1, [&](int64_t begin, int64_t end) {
    // descriptors (i, c + 1, t + 1), i = 0 shifted, 1 residual, with zero borders
    const int64_t rows = half + 2, cols = frames + 2;
    std::vector<float> descriptors(2 * rows * cols);
    for (int64_t index = begin; index < end; ++index) {
      const int64_t n = index / 2, k = index % 2;
      auto mean_of = [&](int64_t t, int64_t row, int64_t c) {
        return load(means[((n * frames + t) * 3 + row) * processed + k * half + c]);
      };
      std::fill(descriptors.begin(), descriptors.end(), 0.0f);
      for (int64_t t = 0; t < frames; ++t) {
        const int64_t source = k == 0 ? t + 1 : t - 1;  // the frame whose gated features t takes
        for (int64_t c = 0; c < half; ++c) {
          descriptors[(c + 1) * cols + t + 1] = source < 0 || source >= frames ? 0.0f : mean_of(source, 1 + k, c);
          descriptors[(rows + c + 1) * cols + t + 1] = mean_of(t, 0, c) - mean_of(t, 1 + k, c);
        }
      }
      const float* w = weight + k * 18;
      for (int64_t t = 0; t < frames; ++t) {
        for (int64_t c = 0; c < half; ++c) {
          float logit = bias[k];
          for (int64_t i = 0; i < 2; ++i) {
            for (int64_t dc = 0; dc < 3; ++dc) {
              const float* d = descriptors.data() + (i * rows + c + dc) * cols + t;
              logit += w[i * 9 + dc * 3] * d[0] + w[i * 9 + dc * 3 + 1] * d[1] + w[i * 9 + dc * 3 + 2] * d[2];
            }
          }
          out[((n * frames + t) * 2 + k) * half + c] = static_cast<T>(1.0f / (1.0f + std::exp(-logit)));
        }
      }
    }
  });
}

bool is_supported(const at::Tensor& x) {
  return x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16;
}

void blend(const at::Tensor& v, const at::Tensor& gate, const at::Tensor& weights, at::Tensor out,
           int64_t num_segments) {
  const Shape s = shape_of(v, num_segments);
  check_operands(v, gate, weights, s);
  TORCH_CHECK(out.sizes() == v.sizes() && out.scalar_type() == v.scalar_type(),
              "GSF blend: out must match v, got ", out.sizes(), " and ", v.sizes());
  TORCH_CHECK(is_supported(v), "GSF blend: float32 or bfloat16 only, got ", v.scalar_type());
  if (v.scalar_type() == at::kFloat) {
    blend_forward<float>(v, gate, weights, out, s);
  } else {
    blend_forward<c10::BFloat16>(v, gate, weights, out, s);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> blend_backward_op(const at::Tensor& grad_out, const at::Tensor& v,
                                                                 const at::Tensor& gate, const at::Tensor& weights,
                                                                 int64_t num_segments) {
  const Shape s = shape_of(v, num_segments);
  check_operands(v, gate, weights, s);
  TORCH_CHECK(grad_out.sizes() == v.sizes() && grad_out.scalar_type() == v.scalar_type(),
              "GSF blend backward: grad_out must match v, got ", grad_out.sizes(), " and ", v.sizes());
  TORCH_CHECK(is_supported(v), "GSF blend backward: float32 or bfloat16 only, got ", v.scalar_type());
  at::Tensor grad_v = at::empty_like(v, at::MemoryFormat::Preserve);
  const auto floats = v.options().dtype(at::kFloat);
  at::Tensor grad_gate = at::empty({s.frame_count(), 2, v.size(2), v.size(3)}, floats);
  at::Tensor grad_weights = at::empty({s.frame_count(), 2, s.half}, floats);
  if (v.scalar_type() == at::kFloat) {
    blend_backward<float>(grad_out, v, gate, weights, grad_v, grad_gate, grad_weights, s);
  } else {
    blend_backward<c10::BFloat16>(grad_out, v, gate, weights, grad_v, grad_gate, grad_weights, s);
  }
  return {grad_v, grad_gate, grad_weights};
}

void norm_relu(const at::Tensor& v, const at::Tensor& scale, const at::Tensor& shift, at::Tensor out) {
  TORCH_CHECK(is_supported(v), "GSF norm_relu: float32 or bfloat16 only, got ", v.scalar_type());
  TORCH_CHECK(out.is_contiguous() && out.sizes() == v.sizes() && out.scalar_type() == v.scalar_type(),
              "GSF norm_relu: out must be a contiguous tensor like v, got ", out.sizes());
  TORCH_CHECK(scale.is_contiguous() && shift.is_contiguous() && scale.scalar_type() == at::kFloat &&
                  shift.scalar_type() == at::kFloat && scale.numel() == v.size(1) && shift.numel() == v.size(1),
              "GSF norm_relu: scale and shift must be contiguous float32 (", v.size(1), ",)");
  if (v.scalar_type() == at::kFloat) {
    norm_relu_kernel<float>(v, scale.data_ptr<float>(), shift.data_ptr<float>(), out);
  } else {
    norm_relu_kernel<c10::BFloat16>(v, scale.data_ptr<float>(), shift.data_ptr<float>(), out);
  }
}

at::Tensor gate_op(const at::Tensor& products, const at::Tensor& bias, int64_t num_segments, int64_t height,
                   int64_t width) {
  TORCH_CHECK(is_supported(products) && products.is_contiguous() && products.dim() == 4 && products.size(1) == 2 &&
                  products.size(2) == 27 && products.size(3) == height * width,
              "GSF gate: products must be a contiguous float32 / bfloat16 (N*T, 2, 27, H*W), got ", products.sizes());
  TORCH_CHECK(bias.is_contiguous() && bias.scalar_type() == at::kFloat && bias.numel() == 2,
              "GSF gate: bias must be a contiguous float32 (2,)");
  TORCH_CHECK(num_segments > 0 && products.size(0) % num_segments == 0, "GSF gate: frames are not whole clips");
  const Shape s{products.size(0) / num_segments, num_segments, 0, 0, height * width};
  at::Tensor gate = at::empty({s.clips, num_segments, 2, height, width}, products.options());
  if (products.scalar_type() == at::kFloat) {
    gate_kernel<float>(products.data_ptr<float>(), bias.data_ptr<float>(), gate.data_ptr<float>(), s, height, width);
  } else {
    gate_kernel<c10::BFloat16>(products.data_ptr<c10::BFloat16>(), bias.data_ptr<float>(),
                               gate.data_ptr<c10::BFloat16>(), s, height, width);
  }
  return gate;
}

at::Tensor fusion_weights_op(const at::Tensor& means, const at::Tensor& weight, const at::Tensor& bias,
                             int64_t num_segments) {
  TORCH_CHECK(is_supported(means) && means.is_contiguous() && means.dim() == 3 && means.size(1) == 3 &&
                  means.size(2) % 4 == 0,
              "GSF fusion weights: means must be a contiguous float32 / bfloat16 (N*T, 3, P), got ", means.sizes());
  TORCH_CHECK(weight.is_contiguous() && weight.scalar_type() == at::kFloat && weight.numel() == 36 &&
                  bias.is_contiguous() && bias.scalar_type() == at::kFloat && bias.numel() == 2,
              "GSF fusion weights: weight (2, 2, 3, 3) and bias (2,) must be contiguous float32");
  TORCH_CHECK(num_segments > 0 && means.size(0) % num_segments == 0, "GSF fusion weights: frames are not whole clips");
  const int64_t processed = means.size(2);
  const Shape s{means.size(0) / num_segments, num_segments, processed / 2, processed / 4, 0};
  at::Tensor out = at::empty({s.clips, num_segments, 2, processed / 2}, means.options());
  if (means.scalar_type() == at::kFloat) {
    fusion_weights_kernel<float>(means.data_ptr<float>(), weight.data_ptr<float>(), bias.data_ptr<float>(),
                                 out.data_ptr<float>(), s);
  } else {
    fusion_weights_kernel<c10::BFloat16>(means.data_ptr<c10::BFloat16>(), weight.data_ptr<float>(),
                                         bias.data_ptr<float>(), out.data_ptr<c10::BFloat16>(), s);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY(lightning_gsf, m) {
  m.def("blend(Tensor v, Tensor gate, Tensor weights, Tensor(a!) out, int num_segments) -> ()", &blend);
  m.def("blend_backward(Tensor grad_out, Tensor v, Tensor gate, Tensor weights, int num_segments)"
        " -> (Tensor, Tensor, Tensor)", &blend_backward_op);
  m.def("norm_relu(Tensor v, Tensor scale, Tensor shift, Tensor(a!) out) -> ()", &norm_relu);
  m.def("gate(Tensor products, Tensor bias, int num_segments, int height, int width) -> Tensor", &gate_op);
  m.def("fusion_weights(Tensor means, Tensor weight, Tensor bias, int num_segments) -> Tensor", &fusion_weights_op);
}
