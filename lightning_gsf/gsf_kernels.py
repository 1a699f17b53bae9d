"""Triton kernels for GSF on CUDA: each pass over the feature map is one kernel.

On a GPU the eager PyTorch formulation of GSF costs more in kernel launches and in generic,
strided elementwise kernels than in arithmetic (``docs/performance.md``). Here each step
that touches the ``P`` processed channels is one kernel that reads its operands where they
lie (any strides: NCHW and channels-last alike), computes in float32 and writes once:

forward
    :func:`batch_norm_statistics` (the batch norm's mean and inverse std from one pass, the
    running statistics updated), :func:`gate_products`
    (``relu(bn(v))`` on the fly times the gate conv's kernel: each pixel's 27 products, one
    matrix product per tile), :func:`gate` (the products summed over each pixel's 3x3x3
    neighbourhood, bias, tanh), and :func:`gate_map`, the two in turn; :func:`gated_means`
    (the spatial means of ``v`` and of the gated maps), :func:`fusion_weights` (both groups'
    fusion convs and sigmoid, from the means), :func:`blend` (gate, shift, fuse and interleave
    into the output, optionally saving a copy of ``v`` for the backward);
backward
    :func:`blend_backward` (the gradients of ``v``, the gate and the fusion weights through
    the blend), :func:`fusion_weights_backward` (the means' and the fusion convs' gradients),
    :func:`gate_gradient` (the means' share of the gate's gradient, through the tanh),
    :func:`gate_backward` (through the gate conv and the ReLU: the conv's weight gradient and
    the per-channel sums the batch-norm backward needs), :func:`input_gradient` (the gradient
    at the batch norm's output recomputed as in :func:`gate_backward`, rather than stored and
    read back, through the batch norm's backward; the fusion weights' means; summed with the
    blend's gradient into the input gradient); :func:`backward` runs them in turn.

Where a map's rows lie one after the other (NCHW and channels-last maps, not crops) a kernel
addresses pixel ``p`` as ``p`` times the pixel stride, with no division into row and column,
and loads runs of pixels as vectors. A kernel whose programs loop over the pixels (the
statistics, the means) or over the channels (the gate conv's products, the blend's and the
gate's backward) cuts that loop across more programs where its grid has fewer than
:data:`MIN_PROGRAMS` (stage 1's few large maps, stage 4's many channels), the partial sums
added after.

Index conventions are those of :mod:`lightning_gsf.gsf_fast`: ``v`` is ``(N*T, P, H, W)``, groups
of ``P/2`` channels, the gate ``(N*T, 2, H*W)``, the means ``(N*T, 2, P)`` and the fusion weights
``(N*T, 2, P/2)`` as dense float32 tensors. Importing this module needs Triton; the kernels run on
CUDA tensors, or on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1`` set before
the import), which is how the CPU test suite checks them.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

# Tile sizes (channels x pixels) and launch settings of the kernels that pass over the feature
# map. Fixed rather than autotuned: autotuning reruns per shape and is not available under the
# interpreter; scripts/tune_gsf_kernels.py times the alternatives on a GPU.
BLOCK_CHANNELS = 16
MAX_BLOCK_PIXELS = 128
NUM_WARPS = 4  # (the small kernels on per-frame and per-channel numbers keep Triton's default)
# Programs per launch that a kernel looping over pixels or channels aims for: such a loop is cut
# across more programs (partial results summed after) where the grid alone has fewer, as the
# reductions over the pixels of stage 1's large maps and the loops over stage 4's many channels
# have (a few hundred programs for 132 SMs). 0: no loop is cut.
MIN_PROGRAMS = 1024
# The gate conv's matrix products (forward and backward) on GPUs with TF32 tensor cores
# (compute capability 8.0 and later): "tf32x3", three TF32 products per product, float32's
# accuracy to ~1e-6 (13 % less GSF kernel time than float32 FMAs on an H200, see
# docs/performance.md); "ieee" (float32 FMAs) elsewhere.
DOT_PRECISION = "tf32x3"


@functools.lru_cache(maxsize=None)
def _has_tf32(device: torch.device) -> bool:
    """NVIDIA GPUs from compute capability 8.0 on (ROCm's report capabilities too, but Triton's
    AMD backend takes no "tf32x3"); the CPU, under the interpreter, emulates it."""
    if device.type != "cuda":
        return True
    return torch.version.hip is None and torch.cuda.get_device_capability(device)[0] >= 8


def _dot_precision(device: torch.device) -> str:
    return DOT_PRECISION if _has_tf32(device) else "ieee"


def _floats(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a dense float32 kernel operand: ``t`` itself where it is one already, with no
    operation dispatched (each costs the host microseconds, per GSF and step)."""
    return t if t.dtype == torch.float32 and t.is_contiguous() else t.float().contiguous()


def cdiv(a: int, b: int) -> int:
    """``triton.cdiv`` for launch sizes on the host: Triton's is a constexpr function, whose
    call unwraps its arguments in Python (with ``next_power_of_2``, 44 calls per GSF training
    step and 18 per inference call; ~2 us each on this project's CPU machine)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """``triton.next_power_of_2`` for the host (0 for 0, as Triton's), without its call cost."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


def _block_pixels(pixels: int) -> int:
    """Pixel tile: up to 128 pixels, but at least 8 tiles per map down to 32-pixel tiles, so
    that the small maps of late stages still give the GPU enough programs."""
    return min(MAX_BLOCK_PIXELS, max(32, next_power_of_2(pixels // 8)))


def _split(programs: int, blocks: int, block: int) -> tuple[int, int]:
    """``(splits, items)``: a loop over ``blocks`` blocks of ``block`` items (pixels or channels),
    run by each of ``programs`` programs, cut into ``splits`` programs of ``items`` items each
    (whole blocks, the last run possibly shorter), at least as many as bring the launch to
    :data:`MIN_PROGRAMS` programs, at most one per block."""
    per_split = max(1, blocks // max(1, min(blocks, cdiv(MIN_PROGRAMS, max(programs, 1)))))
    return cdiv(blocks, per_split), per_split * block


def _channel_split(nt: int, p: int, pixels: int, max_block_p: int | None = None) -> tuple[int, int, int, int]:
    """``(block_p, blocks, splits, split_channels)`` of the kernels whose programs take one
    frame, group and pixel tile (at most ``max_block_p`` pixels) and loop over the group's
    channels."""
    block_p = min(_block_pixels(pixels), max_block_p or MAX_BLOCK_PIXELS)
    blocks = cdiv(pixels, block_p)
    return (block_p, blocks, *_split(nt * 2 * blocks, cdiv(p // 2, BLOCK_CHANNELS), BLOCK_CHANNELS))


def _flat_pixels(*maps: torch.Tensor) -> bool:
    """Whether each ``(N, C, H, W)`` map's pixels lie at one stride, row after row (NCHW and
    channels-last alike): the kernels then address pixel ``p`` as ``p * stride``, with no
    division into row and column, and load neighbouring pixels as vectors."""
    return all(m.shape[2] == 1 or m.stride(2) == m.shape[3] * m.stride(3) for m in maps)


@triton.jit
def _pixel_offsets(p, width, s_h, s_w, FLAT: tl.constexpr):
    """The offsets of the (row-major) pixels ``p`` in a map of pixel strides ``(s_h, s_w)``."""
    if FLAT:
        offsets = p * s_w
    else:
        offsets = (p // width) * s_h + (p % width) * s_w
    return offsets


@triton.jit
def _channel_tile(c0, group, half, p_mask, BLOCK_C: tl.constexpr):
    """``(cl, c_mask, mask, ch)`` of the channel tile from ``c0`` within group ``group`` (of
    ``half`` channels): its channels in the group and in ``v``, which of them exist, and the
    ``(BLOCK_C, BLOCK_P)`` mask with the pixels ``p_mask``."""
    cl = c0 + tl.arange(0, BLOCK_C)
    c_mask = cl < half
    return cl, c_mask, c_mask[:, None] & p_mask[None, :], group * half + cl


@triton.jit
def _channel_moments_kernel(v_ptr, out_ptr, channels, pixels, width, s_n, s_c, s_h, s_w, split_pixels,
                            FLAT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """Per frame, channel and run of ``split_pixels`` pixels (the ``program_id(2)``-th), in one
    pass: the mean of ``d = v - v[0, c, 0]`` (relative to the channel's first value, so that
    the deviations of a channel far from zero keep their digits) at ``out[0, row, c]``, the sum
    of squared deviations from it at ``out[1, row, c]`` and the sum of ``v`` at ``out[2, row,
    c]``, ``row = split * frames + frame``. Each tile's own mean and deviations, merged tile by
    tile (Chan, Golub and LeVeque's update): no sum of squares that cancels."""
    frame = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < channels
    base = v_ptr + frame * s_n + c[:, None] * s_c
    reference = tl.load(v_ptr + c * s_c, mask=c_mask, other=0.0).to(tl.float32)[:, None]
    count = tl.zeros([BLOCK_C], dtype=tl.float32)
    mean = tl.zeros([BLOCK_C], dtype=tl.float32)
    squares = tl.zeros([BLOCK_C], dtype=tl.float32)
    total = tl.zeros([BLOCK_C], dtype=tl.float32)
    start = tl.program_id(2) * split_pixels  # (runs of whole tiles: only the map's end is masked)
    for p0 in range(start, tl.minimum(start + split_pixels, pixels), BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        mask = c_mask[:, None] & (p < pixels)[None, :]
        x = tl.load(base + _pixel_offsets(p, width, s_h, s_w, FLAT)[None, :], mask=mask, other=0.0)
        x = x.to(tl.float32)
        total += tl.sum(x, axis=1)
        d = tl.where(mask, x - reference, 0.0)
        tile_count = tl.minimum(pixels - p0, BLOCK_P).to(tl.float32)
        tile_mean = tl.sum(d, axis=1) / tile_count
        deviation = tl.where(mask, d - tile_mean[:, None], 0.0)
        delta = tile_mean - mean
        merged = count + tile_count
        mean += delta * (tile_count / merged)
        squares += tl.sum(deviation * deviation, axis=1) + delta * delta * (count * tile_count / merged)
        count = merged
    row = tl.program_id(2) * tl.num_programs(0) + frame
    rows = tl.num_programs(2) * tl.num_programs(0)
    tl.store(out_ptr + row * channels + c, mean, mask=c_mask)
    tl.store(out_ptr + (rows + row) * channels + c, squares, mask=c_mask)
    tl.store(out_ptr + (2 * rows + row) * channels + c, total, mask=c_mask)


@triton.jit
def _batch_norm_statistics_kernel(partials_ptr, stats_ptr, running_mean_ptr, running_var_ptr, channels, frames,
                                  rows, pixels, split_pixels, eps, momentum, variance_momentum,
                                  UPDATE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per channel, from the moments kernel's ``rows`` partial sums, relative means and squared
    deviations (each over ``min(split_pixels, pixels - split * split_pixels)`` values, ``split = row //
    frames``): the batch's mean, biased variance and ``1 / sqrt(var + eps)`` (``stats[0..2]``)
    and, with ``UPDATE``, the running statistics as ``BatchNorm`` updates them (``running =
    (1 - momentum) * running + momentum * batch``, the variance unbiased)."""
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < channels
    count = frames * pixels
    mean = tl.zeros([BLOCK_C], dtype=tl.float32)  # relative to the moments' reference, then absolute
    total = tl.zeros([BLOCK_C], dtype=tl.float32)
    for r0 in range(0, rows, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        mask = (r < rows)[:, None] & c_mask[None, :]
        n = tl.where(r < rows, tl.minimum(split_pixels, pixels - (r // frames) * split_pixels), 0).to(tl.float32)
        mean += tl.sum(n[:, None] * tl.load(partials_ptr + r[:, None] * channels + c[None, :], mask=mask, other=0.0),
                       axis=0)
        total += tl.sum(tl.load(partials_ptr + (2 * rows + r[:, None]) * channels + c[None, :], mask=mask, other=0.0),
                        axis=0)
    mean = mean / count
    squares = tl.zeros([BLOCK_C], dtype=tl.float32)
    for r0 in range(0, rows, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        mask = (r < rows)[:, None] & c_mask[None, :]
        n = tl.where(r < rows, tl.minimum(split_pixels, pixels - (r // frames) * split_pixels), 0).to(tl.float32)
        delta = tl.load(partials_ptr + r[:, None] * channels + c[None, :], mask=mask, other=0.0) - mean[None, :]
        partial_squares = tl.load(partials_ptr + (rows + r[:, None]) * channels + c[None, :], mask=mask, other=0.0)
        squares += tl.sum(partial_squares + n[:, None] * delta * delta, axis=0)
    var = squares / count
    mean = total / count  # (the plain sum: a reference far from the mean would cost the mean digits)
    tl.store(stats_ptr + c, mean, mask=c_mask)
    tl.store(stats_ptr + channels + c, var, mask=c_mask)
    tl.store(stats_ptr + 2 * channels + c, 1.0 / tl.sqrt(var + eps), mask=c_mask)
    if UPDATE:
        running_mean = tl.load(running_mean_ptr + c, mask=c_mask, other=0.0)
        running_var = tl.load(running_var_ptr + c, mask=c_mask, other=0.0)
        tl.store(running_mean_ptr + c, running_mean * (1.0 - momentum) + mean * momentum, mask=c_mask)
        tl.store(running_var_ptr + c, running_var * (1.0 - momentum) + var * variance_momentum, mask=c_mask)


# (rows, channels) of the statistics kernel's tiles: narrow, so that the few channels of
# stage 1 (64) still make 4 programs, each summing its rows (frames x runs of pixels: 320
# there) in few, large steps.
_STATISTICS_TILE = (64, 16)


def _statistics(v: torch.Tensor, eps: float, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                momentum: float) -> torch.Tensor:
    """``(3, P)`` float32: the batch mean, biased variance and ``1 / sqrt(var + eps)`` per
    channel of ``v`` ``(NT, P, H, W)``, in one pass over ``v`` (per frame and run of pixels,
    the mean and squared deviations) and their merge by the statistics kernel."""
    nt, p, h, w = v.shape
    count = nt * h * w
    block_p, tiles = _block_pixels(h * w), cdiv(p, BLOCK_CHANNELS)
    splits, split_pixels = _split(nt * tiles, cdiv(h * w, block_p), block_p)
    partials = torch.empty((3, splits * nt, p), dtype=torch.float32, device=v.device)
    stats = torch.empty((3, p), dtype=torch.float32, device=v.device)
    _channel_moments_kernel[(nt, tiles, splits)](
        v, partials, p, h * w, w, *v.stride(), split_pixels, FLAT=_flat_pixels(v), BLOCK_C=BLOCK_CHANNELS,
        BLOCK_P=block_p, num_warps=NUM_WARPS)
    update = running_mean is not None
    block_r, block_c = _STATISTICS_TILE
    _batch_norm_statistics_kernel[(cdiv(p, block_c),)](
        partials, stats, running_mean if update else stats, running_var if update else stats, p, nt, splits * nt,
        h * w, split_pixels, eps, momentum, momentum * count / max(count - 1, 1),
        UPDATE=update, BLOCK_R=block_r, BLOCK_C=block_c)
    return stats


def channel_moments(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of ``v`` ``(NT, P, H, W)``, in float32."""
    stats = _statistics(v, 1.0, None, None, 0.0)  # (an eps for the unused inverse std)
    return stats[0], stats[1]


def batch_norm_statistics(v: torch.Tensor, eps: float, running_mean: torch.Tensor | None = None,
                          running_var: torch.Tensor | None = None,
                          momentum: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's per-channel mean and inverse standard deviation ``1 / sqrt(var + eps)``
    (float32) in two kernels, and where given the running statistics (dense float32,
    updated in place with ``momentum`` as ``BatchNorm`` does; its ``num_batches_tracked`` is
    the caller's)."""
    stats = _statistics(v, eps, running_mean, running_var, momentum)
    return stats[0], stats[2]


@triton.jit
def _gate_products_kernel(v_ptr, scale_ptr, shift_ptr, weight_ptr, products_ptr, half, pixels, width,
                          s_n, s_c, s_h, s_w, split_channels, DOT_PRECISION: tl.constexpr, FLAT: tl.constexpr,
                          BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """``products[split, frame, k, (j, kh, kw), p] = sum_c weight[k, c, j, kh, kw] * a[frame, k*half + c, p]``
    with ``a = relu(v * scale + shift)`` over the split's ``split_channels`` channels: each
    pixel's 27 products with the gate conv's kernel, one matrix product per channel tile (``v``
    is read once). ``program_id(1)`` is ``group * splits + split``."""
    frame = tl.program_id(0).to(tl.int64)
    splits = tl.num_programs(1) // 2
    group, split = tl.program_id(1) // splits, tl.program_id(1) % splits
    p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = p < pixels
    pix = _pixel_offsets(p, width, s_h, s_w, FLAT)[None, :]
    taps = tl.arange(0, 32)  # (j, kh, kw) flattened, 27 of 32 used
    acc = tl.zeros([32, BLOCK_P], dtype=tl.float32)
    start = split * split_channels
    for c0 in range(start, tl.minimum(start + split_channels, half), BLOCK_C):
        cl, c_mask, mask, ch = _channel_tile(c0, group, half, p_mask, BLOCK_C)
        x = tl.load(v_ptr + frame * s_n + ch[:, None] * s_c + pix, mask=mask, other=0.0).to(tl.float32)
        scale = tl.load(scale_ptr + ch, mask=c_mask, other=0.0)[:, None]
        shift = tl.load(shift_ptr + ch, mask=c_mask, other=0.0)[:, None]
        a = tl.where(mask, tl.maximum(x * scale + shift, 0.0), 0.0)
        w = tl.load(weight_ptr + ch[None, :] * 27 + taps[:, None], mask=(taps < 27)[:, None] & c_mask[None, :],
                    other=0.0)
        acc = tl.dot(w, a, acc, input_precision=DOT_PRECISION)
    row = (split * tl.num_programs(0) + frame) * 2 + group
    out = products_ptr + (row * 27 + taps[:, None]) * pixels + p[None, :]
    tl.store(out, acc, mask=(taps < 27)[:, None] & p_mask[None, :])


def gate_products(v: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Each pixel's products with the gate conv's kernel, ``(splits, NT, 2, 27, H*W)`` float32
    (partial sums over runs of channels, to be summed), of ``relu(v * scale + shift)``
    (per-channel float32 ``scale``, ``shift``; ``weight`` the conv's ``(2, P/2, 3, 3, 3)``)."""
    nt, p, h, w = v.shape
    block_p, blocks, splits, split_channels = _channel_split(nt, p, h * w)
    products = torch.empty((splits, nt, 2, 27, h * w), dtype=torch.float32, device=v.device)
    _gate_products_kernel[(nt, 2 * splits, blocks)](
        v, scale, shift, _floats(weight), products, p // 2, h * w, w, *v.stride(), split_channels,
        DOT_PRECISION=_dot_precision(v.device), FLAT=_flat_pixels(v), BLOCK_C=BLOCK_CHANNELS, BLOCK_P=block_p,
        num_warps=NUM_WARPS)
    return products


@triton.jit
def _gate_kernel(products_ptr, bias_ptr, gate_ptr, num_segments, height, width, pixels, splits, split_stride,
                 BLOCK_P: tl.constexpr):
    """``gate[frame, k, q] = tanh(bias[k] + sum_{s, j, kh, kw} products[s, frame + j - 1, k, (j, kh, kw),
    q + (kh - 1, kw - 1)])``: the 3x3x3 conv, zero-padded in space and within the clip."""
    row = tl.program_id(0).to(tl.int64)  # frame * 2 + group
    t = (row // 2) % num_segments
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = p < pixels
    ph, pw = p // width, p % width
    z = tl.zeros([BLOCK_P], dtype=tl.float32) + tl.load(bias_ptr + row % 2)
    for j in tl.static_range(3):
        in_clip = (t + j - 1 >= 0) & (t + j - 1 < num_segments)
        base = products_ptr + ((row + 2 * (j - 1)) * 27 + 9 * j) * pixels
        for kh in tl.static_range(3):
            hh = ph + (kh - 1)
            for kw in tl.static_range(3):
                ww = pw + (kw - 1)
                inside = p_mask & in_clip & (hh >= 0) & (hh < height) & (ww >= 0) & (ww < width)
                at = base + (kh * 3 + kw) * pixels + hh * width + ww
                for split in range(splits):
                    z += tl.load(at + split * split_stride, mask=inside, other=0.0)
    # tanh(z) = 2 * sigmoid(2z) - 1 (saturates to -1 / 1 without overflow trouble)
    tl.store(gate_ptr + row * pixels + p, 2.0 / (1.0 + tl.exp(-2.0 * z)) - 1.0, mask=p_mask)


def gate(products: torch.Tensor, bias: torch.Tensor, num_segments: int, height: int, width: int) -> torch.Tensor:
    """The gate ``(NT, 2, H*W)`` float32 from :func:`gate_products`' output and the conv's bias."""
    splits, nt = products.shape[:2]
    pixels = height * width
    out = torch.empty((nt, 2, pixels), dtype=torch.float32, device=products.device)
    block_p = min(256, next_power_of_2(pixels))
    _gate_kernel[(nt * 2, cdiv(pixels, block_p))](products, _floats(bias), out, num_segments, height, width,
                                                        pixels, splits, products.stride(0), BLOCK_P=block_p,
                                                        num_warps=NUM_WARPS)
    return out


def gate_map(v: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, conv_weight: torch.Tensor,
             conv_bias: torch.Tensor, num_segments: int) -> torch.Tensor:
    """The gate ``(NT, 2, H*W)`` float32 of ``v``: :func:`gate` of :func:`gate_products`."""
    _, _, h, w = v.shape
    return gate(gate_products(v, scale, shift, conv_weight), conv_bias, num_segments, h, w)


@triton.jit
def _gated_means_kernel(v_ptr, gate_ptr, means_ptr, half, pixels, width, s_n, s_c, s_h, s_w, split_pixels,
                        FLAT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """``means[split, frame, 0, c] = sum(v[frame, c]) / (H*W)`` and ``means[split, frame, 1, c] =
    sum(gate_k * v[frame, c]) / (H*W)`` over the run of ``split_pixels`` pixels of split
    ``program_id(2)``, ``k`` the group of channel ``c``: one pass over ``v``."""
    row = tl.program_id(0).to(tl.int64)  # frame * 2 + group
    frame, group = row // 2, row % 2
    cl = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = cl < half
    ch = group * half + cl
    base = v_ptr + frame * s_n + ch[:, None] * s_c
    total = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    gated = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    start = tl.program_id(2) * split_pixels  # (runs of whole tiles: only the map's end is masked)
    for p0 in range(start, tl.minimum(start + split_pixels, pixels), BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        p_mask = p < pixels
        x = tl.load(base + _pixel_offsets(p, width, s_h, s_w, FLAT)[None, :],
                    mask=c_mask[:, None] & p_mask[None, :], other=0.0).to(tl.float32)
        g = tl.load(gate_ptr + row * pixels + p, mask=p_mask, other=0.0)[None, :]
        total += x
        gated += g * x
    out = means_ptr + (tl.program_id(2) * (tl.num_programs(0) // 2) + frame) * 4 * half + ch
    tl.store(out, tl.sum(total, axis=1) / pixels, mask=c_mask)
    tl.store(out + 2 * half, tl.sum(gated, axis=1) / pixels, mask=c_mask)


def gated_means(v: torch.Tensor, gate_map: torch.Tensor) -> torch.Tensor:
    """The spatial means that the fusion weights need, ``(NT, 2, P)`` float32: row 0
    ``mean(v)``, row 1 ``mean(g_k * v)`` for the channels of group ``k`` (the C++ gate op's
    layout)."""
    nt, p, h, w = v.shape
    block_p, tiles = _block_pixels(h * w), cdiv(p // 2, BLOCK_CHANNELS)
    splits, split_pixels = _split(nt * 2 * tiles, cdiv(h * w, block_p), block_p)
    means = torch.empty((splits, nt, 2, p), dtype=torch.float32, device=v.device)
    _gated_means_kernel[(nt * 2, tiles, splits)](
        v, gate_map, means, p // 2, h * w, w, *v.stride(), split_pixels, FLAT=_flat_pixels(v),
        BLOCK_C=BLOCK_CHANNELS, BLOCK_P=block_p, num_warps=NUM_WARPS)
    return means[0] if splits == 1 else means.sum(dim=0)


@triton.jit
def _mean_at(means_ptr, clip, t, c, row, k, num_segments, half, valid):
    """``means[clip * T + t, row, k * half + c]``, 0 where not ``valid``."""
    return tl.load(means_ptr + ((clip * num_segments + t) * 2 + row) * 2 * half + k * half + c, mask=valid, other=0.0)


@triton.jit
def _descriptors_at(means_ptr, clip, t, c, k, num_segments, half, t_mask, c_mask):
    """Group ``k``'s two fusion descriptors at frames ``t``, channels ``c`` (zero outside the
    clip and the group, the convs' padding): the shifted map's mean (``mean(g_k v)`` of frame
    ``t + 1`` for group 0, ``t - 1`` for group 1) and the residual's, ``mean(v) - mean(g_k v)``."""
    inside = t_mask & (t >= 0) & (t < num_segments) & c_mask & (c >= 0) & (c < half)
    source = t + 1 - 2 * k
    shifted = _mean_at(means_ptr, clip, source, c, 1, k, num_segments, half,
                       inside & (source >= 0) & (source < num_segments))
    residual = (_mean_at(means_ptr, clip, t, c, 0, k, num_segments, half, inside)
                - _mean_at(means_ptr, clip, t, c, 1, k, num_segments, half, inside))
    return shifted, residual


@triton.jit
def _fusion_weights_kernel(means_ptr, weight_ptr, bias_ptr, out_ptr, num_segments, half,
                           BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """``out[clip, t, k, c] = sigmoid(bias[k] + sum_{i, dc, dt} weight[k, i, dc, dt] *
    descriptor_i[t + dt - 1, c + dc - 1])``: group ``k``'s 3x3 fusion conv over (channel, time)."""
    clip = tl.program_id(0) // 2
    k = tl.program_id(0) % 2
    t = tl.arange(0, BLOCK_T)[:, None]
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
    t_mask, c_mask = t < num_segments, c < half
    logits = tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.float32) + tl.load(bias_ptr + k)
    for dc in tl.static_range(3):
        for dt in tl.static_range(3):
            shifted, residual = _descriptors_at(means_ptr, clip, t + dt - 1, c + dc - 1, k, num_segments, half,
                                                t_mask, c_mask)
            logits += (tl.load(weight_ptr + k * 18 + dc * 3 + dt) * shifted
                       + tl.load(weight_ptr + k * 18 + 9 + dc * 3 + dt) * residual)
    out = out_ptr + ((clip * num_segments + t) * 2 + k) * half + c
    tl.store(out, 1.0 / (1.0 + tl.exp(-logits)), mask=t_mask & c_mask)


# Values per fusion-weights tile. These kernels are latency-bound (a few thousand values per
# clip, 9 or 27 gathers each): small tiles, more programs, fewer loads per thread (at 1024,
# 400 loads a thread in the backward; at 4096, stage 4's tiles spilled registers).
FUSION_TILE_VALUES = 256


def _fusion_tiles(num_segments: int, half: int) -> tuple[int, int]:
    """(frames, channels) of a fusion-weights tile: the whole clip, up to
    :data:`FUSION_TILE_VALUES` values (more where the clip alone has more frames)."""
    block_t = next_power_of_2(num_segments)
    return block_t, max(1, min(next_power_of_2(half), FUSION_TILE_VALUES // block_t))


def fusion_weights(means: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, num_segments: int) -> torch.Tensor:
    """The fusion weights ``(N, T, 2, P/2)`` float32 from :func:`gated_means`' ``(NT, 2, P)``
    and both groups' fusion convs (weight ``(2, 2, 3, 3)``, bias ``(2,)``)."""
    nt, _, p = means.shape
    half = p // 2
    out = torch.empty((nt // num_segments, num_segments, 2, half), dtype=torch.float32, device=means.device)
    block_t, block_c = _fusion_tiles(num_segments, half)
    _fusion_weights_kernel[(nt // num_segments * 2, cdiv(half, block_c))](
        means, _floats(weight), _floats(bias), out, num_segments, half,
        BLOCK_T=block_t, BLOCK_C=block_c)
    return out


@triton.jit
def _grad_logits_at(grad_weights_ptr, weights_ptr, clip, t, c, k, num_segments, half, t_mask, c_mask):
    """The fusion conv's output gradient (through the sigmoid) at frames ``t``, channels
    ``c`` of group ``k``; zero outside the clip and the group."""
    inside = t_mask & (t >= 0) & (t < num_segments) & c_mask & (c >= 0) & (c < half)
    at = ((clip * num_segments + t) * 2 + k) * half + c
    w = tl.load(weights_ptr + at, mask=inside, other=0.0)
    return tl.load(grad_weights_ptr + at, mask=inside, other=0.0) * w * (1.0 - w)


@triton.jit
def _descriptor_gradient_at(grad_weights_ptr, weights_ptr, weight_ptr, clip, t, c, k, i, num_segments, half,
                            t_mask, c_mask, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """The gradient of group ``k``'s descriptor ``i`` at (``t``, ``c``): the fusion conv's
    adjoint, a full correlation of the logits' gradient with the kernel."""
    grad = tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.float32)
    for dc in tl.static_range(3):
        for dt in tl.static_range(3):
            grad += tl.load(weight_ptr + k * 18 + i * 9 + dc * 3 + dt) * _grad_logits_at(
                grad_weights_ptr, weights_ptr, clip, t - dt + 1, c - dc + 1, k, num_segments, half, t_mask, c_mask)
    return grad


@triton.jit
def _fusion_weights_backward_kernel(grad_weights_ptr, weights_ptr, means_ptr, weight_ptr, grad_means_ptr,
                                    partials_ptr, num_segments, half,
                                    BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """The adjoint of :func:`_fusion_weights_kernel`: the means' gradient ``(NT, 2, P)``
    (each value computed where it lands, no scatter), and per program the partial sums of the
    fusion conv's weight and bias gradients (19 numbers: ``(i, dc, dt)``, then the bias)."""
    clip = tl.program_id(0) // 2
    k = tl.program_id(0) % 2
    t = tl.arange(0, BLOCK_T)[:, None]
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
    t_mask, c_mask = t < num_segments, c < half
    mask = t_mask & c_mask
    # mean(v) feeds the residual; mean(g_k v) the residual (negated) and, one frame over, the
    # shifted map: group 0's frame t took frame t + 1's, group 1's frame t - 1's.
    grad_residual = _descriptor_gradient_at(grad_weights_ptr, weights_ptr, weight_ptr, clip, t, c, k, 1,
                                            num_segments, half, t_mask, c_mask, BLOCK_T, BLOCK_C)
    taker = t - 1 + 2 * k
    grad_shifted = _descriptor_gradient_at(grad_weights_ptr, weights_ptr, weight_ptr, clip, taker, c, k, 0,
                                           num_segments, half, t_mask, c_mask, BLOCK_T, BLOCK_C)
    grad_shifted = tl.where((taker >= 0) & (taker < num_segments), grad_shifted, 0.0)
    out = grad_means_ptr + (clip * num_segments + t) * 4 * half + k * half + c
    tl.store(out, grad_residual, mask=mask)
    tl.store(out + 2 * half, grad_shifted - grad_residual, mask=mask)
    grad_logits = _grad_logits_at(grad_weights_ptr, weights_ptr, clip, t, c, k, num_segments, half, t_mask, c_mask)
    partials = partials_ptr + ((clip * tl.num_programs(1) + tl.program_id(1)) * 2 + k) * 19
    for dc in tl.static_range(3):
        for dt in tl.static_range(3):
            shifted, residual = _descriptors_at(means_ptr, clip, t + dt - 1, c + dc - 1, k, num_segments, half,
                                                t_mask, c_mask)
            tl.store(partials + dc * 3 + dt, tl.sum(tl.sum(grad_logits * shifted, axis=1), axis=0))
            tl.store(partials + 9 + dc * 3 + dt, tl.sum(tl.sum(grad_logits * residual, axis=1), axis=0))
    tl.store(partials + 18, tl.sum(tl.sum(grad_logits, axis=1), axis=0))


def fusion_weights_backward(grad_weights: torch.Tensor, weights: torch.Tensor, means: torch.Tensor,
                            weight: torch.Tensor, num_segments: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`fusion_weights`' adjoint for the gradient ``(NT, 2, P/2)`` of its output:
    ``(grad_means (NT, 2, P), grad_weight (2, 2, 3, 3), grad_bias (2,))``, float32."""
    nt, _, p = means.shape
    half, clips = p // 2, nt // num_segments
    block_t, block_c = _fusion_tiles(num_segments, half)
    tiles = cdiv(half, block_c)
    grad_means = torch.empty((nt, 2, p), dtype=torch.float32, device=means.device)
    partials = torch.empty((clips * tiles, 2, 19), dtype=torch.float32, device=means.device)
    _fusion_weights_backward_kernel[(clips * 2, tiles)](
        grad_weights.contiguous(), weights, means, _floats(weight), grad_means, partials, num_segments,
        half, BLOCK_T=block_t, BLOCK_C=block_c)
    sums = partials.sum(dim=0)
    return grad_means, sums[:, :18].reshape(2, 2, 3, 3), sums[:, 18]


@triton.jit
def _gate_gradient_kernel(grad_gate_ptr, v_ptr, gate_ptr, grad_means_ptr, half, pixels, width, s_n, s_c, s_h, s_w,
                          splits, split_stride, FLAT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """``grad_z = (sum_s grad_gate[s] + sum_c grad_means[frame, 1, c] * v[frame, c] / (H*W)) * (1 -
    gate**2)`` over group ``k``'s channels ``c``, written over ``grad_gate[0]``."""
    row = tl.program_id(0).to(tl.int64)  # frame * 2 + group
    frame, group = row // 2, row % 2
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = p < pixels
    pix = _pixel_offsets(p, width, s_h, s_w, FLAT)[None, :]
    total = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    for c0 in range(0, half, BLOCK_C):
        cl = c0 + tl.arange(0, BLOCK_C)
        c_mask = cl < half
        ch = group * half + cl
        x = tl.load(v_ptr + frame * s_n + ch[:, None] * s_c + pix, mask=c_mask[:, None] & p_mask[None, :],
                    other=0.0).to(tl.float32)
        total += tl.load(grad_means_ptr + (frame * 2 + 1) * 2 * half + ch, mask=c_mask, other=0.0)[:, None] * x
    g = tl.load(gate_ptr + row * pixels + p, mask=p_mask, other=0.0)
    grad = tl.sum(total, axis=0) / pixels
    for split in range(splits):
        grad += tl.load(grad_gate_ptr + split * split_stride + row * pixels + p, mask=p_mask, other=0.0)
    tl.store(grad_gate_ptr + row * pixels + p, grad * (1.0 - g * g), mask=p_mask)


def gate_gradient(grad_gate: torch.Tensor, v: torch.Tensor, gate_map: torch.Tensor, grad_means: torch.Tensor,
                  num_segments: int) -> torch.Tensor:
    """The gradient of the gate's pre-activation ``(NT, 2, H*W)``, written over ``grad_gate[0]``
    (``grad_gate``: :func:`blend_backward`'s partial gradients of the gate, ``(splits, NT, 2,
    H*W)``, or one ``(NT, 2, H*W)`` as the C++ set has it): the fusion means' share
    (``grad_means`` ``(NT, 2, P)``, row 1) added, then through the tanh."""
    nt, p, h, w = v.shape
    if grad_gate.dim() == 3:
        grad_gate = grad_gate.unsqueeze(0)
    block_p = _block_pixels(h * w)
    _gate_gradient_kernel[(nt * 2, cdiv(h * w, block_p))](
        grad_gate, v, gate_map, grad_means, p // 2, h * w, w, *v.stride(), grad_gate.shape[0], grad_gate.stride(0),
        FLAT=_flat_pixels(v), BLOCK_C=BLOCK_CHANNELS, BLOCK_P=block_p, num_warps=NUM_WARPS)
    return grad_gate[0]


def gate_and_weights(v: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, conv_weight: torch.Tensor,
                     conv_bias: torch.Tensor, fusion_weight: torch.Tensor, fusion_bias: torch.Tensor,
                     num_segments: int, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """:func:`gate_map`, its :func:`gated_means` and from them the :func:`fusion_weights`
    ``(N, T, 2, P/2)``; the means are kept for :func:`fusion_backward`. (``channels_last``:
    the kernel sets' shared interface; these kernels read any strides.)"""
    gate = gate_map(v, scale, shift, conv_weight, conv_bias, num_segments)
    means = gated_means(v, gate)
    return gate, fusion_weights(means, fusion_weight, fusion_bias, num_segments), (means,)


def fusion_backward(grad_weights: torch.Tensor, grad_gate: torch.Tensor, v: torch.Tensor, gate: torch.Tensor,
                    weights: torch.Tensor, saved: tuple, fusion_weight: torch.Tensor, num_segments: int,
                    channels_last: bool) -> tuple[torch.Tensor, ...]:
    """Back through the fusion weights and the gate's tanh: ``(grad_z (NT, 2, H*W),
    grad_means (NT, 2, P), grad_fusion_weight, grad_fusion_bias)``, float32; ``grad_gate``
    (the blend's partial gradients) is overwritten. (``channels_last``: the kernel sets' shared
    interface.)"""
    (means,) = saved
    grad_means, grad_fusion_weight, grad_fusion_bias = fusion_weights_backward(grad_weights, weights, means,
                                                                               fusion_weight, num_segments)
    grad_z = gate_gradient(grad_gate, v, gate, grad_means, num_segments)
    return grad_z, grad_means, grad_fusion_weight, grad_fusion_bias


def backward(grad_out: torch.Tensor, grad_x: torch.Tensor, v: torch.Tensor, gate: torch.Tensor, weights: torch.Tensor,
             mean: torch.Tensor, invstd: torch.Tensor, bn_weight: torch.Tensor, bn_bias: torch.Tensor,
             conv_weight: torch.Tensor, fusion_weight: torch.Tensor, fusion_saved: tuple, num_segments: int,
             batch_statistics: bool, channels_last: bool) -> tuple[torch.Tensor, ...]:
    """GSF's training backward with these kernels: ``gsf_fast._kernel_backward``'s steps, except
    that the gradient at the batch norm's output is not stored by :func:`gate_backward` and
    read back, but recomputed by :func:`input_gradient` where it is summed (a float32 map
    neither written nor read)."""
    from lightning_gsf import gsf_fast

    t = num_segments
    nt, p, h, w = v.shape
    grad_v, grad_gate, grad_weights = blend_backward(grad_out[:, :p], v, gate, weights, t)
    grad_z, grad_means, grad_fusion_weight, grad_fusion_bias = fusion_backward(
        grad_weights, grad_gate, v, gate, weights, fusion_saved, fusion_weight, t, channels_last)
    grad_conv_weight, sum_grad, sum_grad_xhat = gate_backward(v, mean, invstd, bn_weight, bn_bias, conv_weight,
                                                              grad_z, t)
    coef, centre, slope = gsf_fast._batch_norm_backward_terms(bn_weight, invstd, sum_grad, sum_grad_xhat, nt * h * w,
                                                         batch_statistics)
    input_gradient(v, grad_v, grad_z, grad_means, gate, mean, invstd, bn_weight, bn_bias, conv_weight, coef, centre,
                   slope, grad_x[:, :p], t)
    return gsf_fast._parameter_gradients(sum_grad_xhat, sum_grad, grad_conv_weight, grad_z, grad_fusion_weight,
                                    grad_fusion_bias, bn_weight, bn_bias, conv_weight, fusion_weight)


@triton.jit
def _blend_kernel(v_ptr, gate_ptr, blend_ptr, out_ptr, copy_ptr, num_segments, half, pixels, width,
                  sv_n, sv_c, sv_h, sv_w, so_n, so_c, so_h, so_w, sc_n, sc_c, sc_h, sc_w,
                  SAVE_COPY: tl.constexpr, FLAT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """``out`` (interleaved) ``= r + w * (s - r)`` with ``y = gate * v``, ``r = v - y`` and
    ``s`` = ``y`` of the next frame (group 0) or the previous one (group 1), zero at the
    clip's ends; with ``SAVE_COPY`` also ``copy = v``."""
    row = tl.program_id(0).to(tl.int64)  # frame * 2 + group
    frame, group = row // 2, row % 2
    t = frame % num_segments
    step = 1 - 2 * group  # where the shifted values come from: t + 1 for group 0, t - 1 for group 1
    has_neighbour = (t + step >= 0) & (t + step < num_segments)
    cl = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = cl < half
    p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = p < pixels
    mask = c_mask[:, None] & p_mask[None, :]
    ch = (group * half + cl)[:, None]
    v_pix = _pixel_offsets(p, width, sv_h, sv_w, FLAT)[None, :]
    v = tl.load(v_ptr + frame * sv_n + ch * sv_c + v_pix, mask=mask, other=0.0)
    x = v.to(tl.float32)
    x_next = tl.load(v_ptr + (frame + step) * sv_n + ch * sv_c + v_pix, mask=mask & has_neighbour,
                     other=0.0).to(tl.float32)
    g = tl.load(gate_ptr + row * pixels + p, mask=p_mask, other=0.0)[None, :]
    g_next = tl.load(gate_ptr + (row + 2 * step) * pixels + p, mask=p_mask & has_neighbour, other=0.0)[None, :]
    w = tl.load(blend_ptr + row * half + cl, mask=c_mask, other=0.0).to(tl.float32)[:, None]
    residual = x - g * x
    fused = residual + w * (g_next * x_next - residual)
    quarter = half // 2
    out_ch = (group * half + 2 * (cl % quarter) + cl // quarter)[:, None]
    out = out_ptr + frame * so_n + out_ch * so_c + _pixel_offsets(p, width, so_h, so_w, FLAT)[None, :]
    tl.store(out, fused.to(out_ptr.dtype.element_ty), mask=mask)
    if SAVE_COPY:
        copy = copy_ptr + frame * sc_n + ch * sc_c + _pixel_offsets(p, width, sc_h, sc_w, FLAT)[None, :]
        tl.store(copy, v, mask=mask)


def blend(v: torch.Tensor, gate_map: torch.Tensor, weights: torch.Tensor, out: torch.Tensor, num_segments: int,
          copy: torch.Tensor | None = None) -> None:
    """Write GSF's fused, interleaved ``P`` channels of ``v`` into ``out`` (``(NT, P, H, W)``,
    any strides, not overlapping ``v``) given the gate ``(NT, 2, H*W)`` and fusion weights
    ``(NT, 2, P/2)``; also copy ``v`` into ``copy`` if given."""
    nt, p, h, w = v.shape
    block_p = _block_pixels(h * w)
    grid = (nt * 2, cdiv(p // 2, BLOCK_CHANNELS), cdiv(h * w, block_p))
    copy_arg = copy if copy is not None else out
    _blend_kernel[grid](v, gate_map, weights, out, copy_arg, num_segments, p // 2, h * w, w, *v.stride(),
                        *out.stride(), *copy_arg.stride(), SAVE_COPY=copy is not None,
                        FLAT=_flat_pixels(v, out, copy_arg), BLOCK_C=BLOCK_CHANNELS, BLOCK_P=block_p,
                        num_warps=NUM_WARPS)


@triton.jit
def _blend_backward_kernel(grad_out_ptr, v_ptr, gate_ptr, blend_ptr, grad_v_ptr, grad_gate_ptr, grad_blend_ptr,
                           num_segments, half, pixels, width, num_pixel_blocks, split_channels,
                           sg_n, sg_c, sg_h, sg_w, sv_n, sv_c, sv_h, sv_w,
                           FLAT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """Through ``f = r + w * (s - r)``: ``grad_v`` (float32 ``(NT, P, H*W)``), the gate's
    gradient summed over the ``split_channels`` channels of split ``program_id(2)`` (partials
    ``(splits, NT, 2, H*W)``) and per-pixel-block partial sums of the fusion weights'
    gradient ``(NT, 2, P/2, blocks)``."""
    row = tl.program_id(0).to(tl.int64)
    block = tl.program_id(1)
    frame, group = row // 2, row % 2
    t = frame % num_segments
    step = 1 - 2 * group
    has_next = (t + step >= 0) & (t + step < num_segments)  # the frame this one's s came from
    has_prev = (t - step >= 0) & (t - step < num_segments)  # the frame whose s came from this one
    p = block * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = p < pixels
    g_pix = _pixel_offsets(p, width, sg_h, sg_w, FLAT)[None, :]
    v_pix = _pixel_offsets(p, width, sv_h, sv_w, FLAT)[None, :]
    g = tl.load(gate_ptr + row * pixels + p, mask=p_mask, other=0.0)[None, :]
    g_next = tl.load(gate_ptr + (row + 2 * step) * pixels + p, mask=p_mask & has_next, other=0.0)[None, :]
    quarter = half // 2
    grad_gate = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)  # summed over channels at the end
    start = tl.program_id(2) * split_channels
    for c0 in range(start, tl.minimum(start + split_channels, half), BLOCK_C):
        cl = c0 + tl.arange(0, BLOCK_C)
        c_mask = cl < half
        mask = c_mask[:, None] & p_mask[None, :]
        ch = (group * half + cl)[:, None]
        out_ch = (group * half + 2 * (cl % quarter) + cl // quarter)[:, None]
        grad_f = tl.load(grad_out_ptr + frame * sg_n + out_ch * sg_c + g_pix, mask=mask, other=0.0).to(tl.float32)
        grad_f_prev = tl.load(grad_out_ptr + (frame - step) * sg_n + out_ch * sg_c + g_pix,
                              mask=mask & has_prev, other=0.0).to(tl.float32)
        w = tl.load(blend_ptr + row * half + cl, mask=c_mask, other=0.0).to(tl.float32)[:, None]
        w_prev = tl.load(blend_ptr + (row - 2 * step) * half + cl, mask=c_mask & has_prev,
                         other=0.0).to(tl.float32)[:, None]
        x = tl.load(v_ptr + frame * sv_n + ch * sv_c + v_pix, mask=mask, other=0.0).to(tl.float32)
        x_next = tl.load(v_ptr + (frame + step) * sv_n + ch * sv_c + v_pix, mask=mask & has_next,
                         other=0.0).to(tl.float32)
        grad_residual = grad_f * (1.0 - w)
        grad_y_minus_residual = grad_f_prev * w_prev - grad_residual
        grad_v = grad_residual + g * grad_y_minus_residual
        tl.store(grad_v_ptr + (frame * 2 * half + ch) * pixels + p[None, :], grad_v, mask=mask)
        grad_gate += x * grad_y_minus_residual
        shifted_minus_residual = g_next * x_next - (1.0 - g) * x
        grad_w = tl.sum(grad_f * shifted_minus_residual, axis=1)
        tl.store(grad_blend_ptr + (row * half + cl) * num_pixel_blocks + block, grad_w, mask=c_mask)
    rows = tl.num_programs(0)
    tl.store(grad_gate_ptr + (tl.program_id(2) * rows + row) * pixels + p, tl.sum(grad_gate, axis=0), mask=p_mask)


def blend_backward(grad_out: torch.Tensor, v: torch.Tensor, gate_map: torch.Tensor, weights: torch.Tensor,
                   num_segments: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The adjoint of :func:`blend` for the output gradient's first ``P`` channels
    ``grad_out``: ``(grad_v (NT, P, H*W), grad_gate (splits, NT, 2, H*W), grad_weights (NT,
    2, P/2))``, float32; the gate's gradient in partial sums over runs of channels, which
    :func:`gate_gradient` adds up."""
    nt, p, h, w = v.shape
    half, pixels = p // 2, h * w
    block_p, blocks, splits, split_channels = _channel_split(nt, p, pixels)
    grad_v = torch.empty((nt, p, pixels), dtype=torch.float32, device=v.device)
    grad_gate = torch.empty((splits, nt, 2, pixels), dtype=torch.float32, device=v.device)
    grad_weights = torch.empty((nt, 2, half, blocks), dtype=torch.float32, device=v.device)
    _blend_backward_kernel[(nt * 2, blocks, splits)](
        grad_out, v, gate_map, weights, grad_v, grad_gate, grad_weights, num_segments, half, pixels, w, blocks,
        split_channels, *grad_out.stride(), *v.stride(), FLAT=_flat_pixels(grad_out, v), BLOCK_C=BLOCK_CHANNELS,
        BLOCK_P=block_p, num_warps=NUM_WARPS)
    return grad_v, grad_gate, grad_weights.sum(dim=-1)


@triton.jit
def _tap_gradients(grad_z_ptr, frame, group, t, num_segments, p, p_mask, height, width, pixels):
    """``G[(j, kh, kw), p]`` ``(32, BLOCK_P)``, 27 rows used: the gradient of the gate's
    pre-activation that tap ``(j, kh, kw)`` of pixel ``p`` fed, the one at pixel ``p - (kh -
    1, kw - 1)`` of frame ``frame + 1 - j`` (tap 0 of a frame fed the next frame's gate, tap 2
    the previous one's); zero outside the map and the clip."""
    ph, pw = p // width, p % width
    taps = tl.arange(0, 32)
    j, kh, kw = taps // 9, (taps % 9) // 3, taps % 3
    step = 1 - j
    hh = ph[None, :] - (kh[:, None] - 1)
    ww = pw[None, :] - (kw[:, None] - 1)
    mask = ((taps < 27) & (t + step >= 0) & (t + step < num_segments))[:, None] & p_mask[None, :]
    mask = mask & (hh >= 0) & (hh < height) & (ww >= 0) & (ww < width)
    rows = ((frame + step) * 2 + group) * pixels
    return tl.load(grad_z_ptr + rows[:, None] + hh * width + ww, mask=mask, other=0.0)


@triton.jit
def _normalized_tile(frame_ptr, ch, pix, s_c, mask, c_mask, mean_ptr, invstd_ptr, bn_weight_ptr, bn_bias_ptr):
    """``(xhat, normed)`` of the tile of channels ``ch`` at pixel offsets ``pix`` of one frame
    (``frame_ptr``): the values standardised, and the batch norm's output ``xhat * weight +
    bias``, in float32."""
    x = tl.load(frame_ptr + ch[:, None] * s_c + pix, mask=mask, other=0.0).to(tl.float32)
    mean = tl.load(mean_ptr + ch, mask=c_mask, other=0.0)[:, None]
    invstd = tl.load(invstd_ptr + ch, mask=c_mask, other=0.0)[:, None]
    xhat = (x - mean) * invstd
    gamma = tl.load(bn_weight_ptr + ch, mask=c_mask, other=0.0)[:, None]
    beta = tl.load(bn_bias_ptr + ch, mask=c_mask, other=0.0)[:, None]
    return xhat, xhat * gamma + beta


@triton.jit
def _gate_backward_kernel(v_ptr, mean_ptr, invstd_ptr, bn_weight_ptr, bn_bias_ptr, weight_ptr, grad_z_ptr,
                          grad_weight_ptr, sums_ptr, num_segments, half, height, width, pixels, num_pixel_blocks,
                          split_channels, s_n, s_c, s_h, s_w, DOT_PRECISION: tl.constexpr, FLAT: tl.constexpr,
                          BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """Back through the gate conv and the ReLU, from ``grad_z`` ``(NT, 2, H*W)`` (the gate's
    pre-activation gradient): per (frame, pixel block) partial sums of the conv weight's
    gradient ``(.., 2, P/2, 27)`` and, per channel, of the gradient at the batch norm's output
    ``grad_normed`` and of ``grad_normed * xhat`` ``(.., 2, P)`` (``grad_normed`` itself is not
    stored: :func:`_input_gradient_kernel` recomputes it); ``program_id(1)`` is ``group * splits
    + split``, each split a run of ``split_channels`` channels.

    With ``G`` the tap gradients (:func:`_tap_gradients`) both gradients are matrix products:
    ``grad_a = weight @ G`` and ``grad_weight = a @ G^T``."""
    frame = tl.program_id(0).to(tl.int64)
    splits = tl.num_programs(1) // 2
    group, split = tl.program_id(1) // splits, tl.program_id(1) % splits
    block = tl.program_id(2)
    program = frame * num_pixel_blocks + block
    channels = 2 * half
    p = block * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = p < pixels
    taps = tl.arange(0, 32)
    grad_taps = _tap_gradients(grad_z_ptr, frame, group, frame % num_segments, num_segments, p, p_mask, height,
                               width, pixels)
    pix = _pixel_offsets(p, width, s_h, s_w, FLAT)[None, :]
    start = split * split_channels
    for c0 in range(start, tl.minimum(start + split_channels, half), BLOCK_C):
        cl, c_mask, mask, ch = _channel_tile(c0, group, half, p_mask, BLOCK_C)
        xhat, normed = _normalized_tile(v_ptr + frame * s_n, ch, pix, s_c, mask, c_mask, mean_ptr, invstd_ptr,
                                        bn_weight_ptr, bn_bias_ptr)
        a = tl.where(mask, tl.maximum(normed, 0.0), 0.0)
        w_mask = c_mask[:, None] & (taps < 27)[None, :]
        w = tl.load(weight_ptr + ch[:, None] * 27 + taps[None, :], mask=w_mask, other=0.0)  # (BLOCK_C, 32)
        grad_a = tl.dot(w, grad_taps, input_precision=DOT_PRECISION)
        grad_w = tl.dot(a, tl.trans(grad_taps), input_precision=DOT_PRECISION)
        tl.store(grad_weight_ptr + ((program * 2 + group) * half + cl[:, None]) * 27 + taps[None, :], grad_w,
                 mask=w_mask)
        grad_normed = tl.where(mask & (normed > 0), grad_a, 0.0)
        tl.store(sums_ptr + (program * 2) * channels + ch, tl.sum(grad_normed, axis=1), mask=c_mask)
        tl.store(sums_ptr + (program * 2 + 1) * channels + ch, tl.sum(grad_normed * xhat, axis=1), mask=c_mask)


@functools.lru_cache(maxsize=None)
def _gate_backward_launch(device: torch.device) -> tuple[int, int]:
    """``(largest pixel tile, pipeline stages)`` of :func:`gate_backward` on ``device``. Its two
    matrix products stage their tiles in shared memory: 100.5 KiB at 128-pixel tiles and
    Triton's 3 stages (Triton 3.8, ``scripts/kernel_resources.py``), more than a block may
    have on compute capability 8.6 and 8.9 (99 KiB: RTX 30 and 40 series, A10, A40, L4, L40),
    where the launch would fail; 2 stages take 90 KiB, 64-pixel tiles 46 KiB. Without TF32
    (before compute capability 8.0) the products take float32 FMAs and 26 KiB."""
    if device.type != "cuda" or not _has_tf32(device):
        return MAX_BLOCK_PIXELS, 3
    shared = torch.cuda.get_device_properties(device).shared_memory_per_block_optin
    if shared >= 128 * 1024:  # (A100: 163 KiB, H100 / H200: 227 KiB)
        return MAX_BLOCK_PIXELS, 3
    return (MAX_BLOCK_PIXELS, 2) if shared >= 96 * 1024 else (64, 2)


def gate_backward(v: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor, bn_weight: torch.Tensor,
                  bn_bias: torch.Tensor, weight: torch.Tensor, grad_z: torch.Tensor,
                  num_segments: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`gate_products` and :func:`gate`'s sums, backwards from the gate's
    pre-activation gradient ``grad_z`` ``(NT, 2, H*W)``: ``(the conv weight's gradient (2, P/2,
    3, 3, 3), sum of grad_normed (P,), sum of grad_normed * xhat (P,))``, float32, where
    ``grad_normed`` is the gradient at the batch norm's output."""
    nt, p, h, w = v.shape
    max_block_p, stages = _gate_backward_launch(v.device)
    block_p, blocks, splits, split_channels = _channel_split(nt, p, h * w, max_block_p)
    grad_weight = torch.empty((nt * blocks, 2, p // 2, 27), dtype=torch.float32, device=v.device)
    sums = torch.empty((nt * blocks, 2, p), dtype=torch.float32, device=v.device)
    _gate_backward_kernel[(nt, 2 * splits, blocks)](
        v, mean, invstd, _floats(bn_weight), _floats(bn_bias), _floats(weight), grad_z, grad_weight, sums,
        num_segments, p // 2, h, w, h * w, blocks, split_channels, *v.stride(),
        DOT_PRECISION=_dot_precision(v.device), FLAT=_flat_pixels(v), BLOCK_C=BLOCK_CHANNELS, BLOCK_P=block_p,
        num_warps=NUM_WARPS, num_stages=stages)
    sums = sums.sum(dim=0)
    return grad_weight.sum(dim=0).view(2, p // 2, 3, 3, 3), sums[0], sums[1]


@triton.jit
def _input_gradient_kernel(v_ptr, grad_blend_v_ptr, grad_z_ptr, grad_means_ptr, gate_ptr, mean_ptr, invstd_ptr,
                           bn_weight_ptr, bn_bias_ptr, weight_ptr, coef_ptr, centre_ptr, slope_ptr, grad_x_ptr,
                           num_segments, half, height, width, pixels, split_channels, sv_n, sv_c, sv_h, sv_w,
                           sx_n, sx_c, sx_h, sx_w, DOT_PRECISION: tl.constexpr, FLAT: tl.constexpr,
                           BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """``grad_x[:, :P] = grad_blend_v + coef * (grad_normed - centre - xhat * slope)`` (the
    batch norm's backward of ``grad_normed``, recomputed here as in
    :func:`_gate_backward_kernel`) ``+ (grad_means[0] + grad_means[1] * gate_k) / (H*W)`` (the
    fusion weights' spatial means); programs as in :func:`_gate_backward_kernel`."""
    frame = tl.program_id(0).to(tl.int64)
    splits = tl.num_programs(1) // 2
    group, split = tl.program_id(1) // splits, tl.program_id(1) % splits
    channels = 2 * half
    p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = p < pixels
    taps = tl.arange(0, 32)
    grad_taps = _tap_gradients(grad_z_ptr, frame, group, frame % num_segments, num_segments, p, p_mask, height,
                               width, pixels)
    g = tl.load(gate_ptr + (frame * 2 + group) * pixels + p, mask=p_mask, other=0.0)[None, :]
    v_pix = _pixel_offsets(p, width, sv_h, sv_w, FLAT)[None, :]
    x_pix = _pixel_offsets(p, width, sx_h, sx_w, FLAT)[None, :]
    start = split * split_channels
    for c0 in range(start, tl.minimum(start + split_channels, half), BLOCK_C):
        cl, c_mask, mask, ch = _channel_tile(c0, group, half, p_mask, BLOCK_C)
        xhat, normed = _normalized_tile(v_ptr + frame * sv_n, ch, v_pix, sv_c, mask, c_mask, mean_ptr, invstd_ptr,
                                        bn_weight_ptr, bn_bias_ptr)
        w = tl.load(weight_ptr + ch[:, None] * 27 + taps[None, :], mask=c_mask[:, None] & (taps < 27)[None, :],
                    other=0.0)
        grad_normed = tl.where(mask & (normed > 0), tl.dot(w, grad_taps, input_precision=DOT_PRECISION), 0.0)
        grad = tl.load(grad_blend_v_ptr + (frame * channels + ch[:, None]) * pixels + p[None, :], mask=mask,
                       other=0.0)
        coef = tl.load(coef_ptr + ch, mask=c_mask, other=0.0)[:, None]
        centre = tl.load(centre_ptr + ch, mask=c_mask, other=0.0)[:, None]
        slope = tl.load(slope_ptr + ch, mask=c_mask, other=0.0)[:, None]
        grad += coef * (grad_normed - centre - xhat * slope)
        grad_mean_v = tl.load(grad_means_ptr + frame * 2 * channels + ch, mask=c_mask, other=0.0)[:, None]
        grad_mean_y = tl.load(grad_means_ptr + (frame * 2 + 1) * channels + ch, mask=c_mask, other=0.0)[:, None]
        grad += (grad_mean_v + grad_mean_y * g) / pixels
        out = grad_x_ptr + frame * sx_n + ch[:, None] * sx_c + x_pix
        tl.store(out, grad.to(grad_x_ptr.dtype.element_ty), mask=mask)


def input_gradient(v: torch.Tensor, grad_blend_v: torch.Tensor, grad_z: torch.Tensor, grad_means: torch.Tensor,
                   gate_map: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor, bn_weight: torch.Tensor,
                   bn_bias: torch.Tensor, conv_weight: torch.Tensor, coef: torch.Tensor, centre: torch.Tensor,
                   slope: torch.Tensor, grad_x: torch.Tensor, num_segments: int) -> None:
    """Write the gradient of GSF's input's first ``P`` channels into ``grad_x`` (any strides):
    the blend's ``grad_blend_v``, the batch norm's backward (per channel ``coef * (g - centre -
    xhat * slope)``) of the gradient ``g`` at its output, recomputed from the gate's
    pre-activation gradient ``grad_z`` through the gate conv and the ReLU, and the fusion
    means' ``grad_means`` ``(NT, 2, P)`` (of ``mean(v)`` and ``mean(g_k v)``)."""
    nt, p, h, w = v.shape
    block_p, blocks, splits, split_channels = _channel_split(nt, p, h * w)
    _input_gradient_kernel[(nt, 2 * splits, blocks)](
        v, grad_blend_v, grad_z, _floats(grad_means), gate_map, mean, invstd, _floats(bn_weight), _floats(bn_bias),
        _floats(conv_weight), coef, centre, slope, grad_x, num_segments, p // 2, h, w, h * w, split_channels,
        *v.stride(),
        *grad_x.stride(), DOT_PRECISION=_dot_precision(v.device), FLAT=_flat_pixels(v, grad_x),
        BLOCK_C=BLOCK_CHANNELS, BLOCK_P=block_p, num_warps=NUM_WARPS)
