"""The Triton kernel of ``fir_bias_act`` (see ``upsample_act``); imported only where Triton is.
With ``TRITON_INTERPRET=1`` set before Triton is imported, it runs on CPU tensors.
"""

import triton
import triton.language as tl


@triton.jit
def fir_bias_act_rows(
    x_ptr, f_ptr, dcoef_ptr, noise_ptr, bias_ptr, scale_ptr, y_ptr,
    C, H_in, W_in, H_out, W_out, pad_y, pad_x, act_gain, clamp,
    sxb, sxc, sxh, sxw, syb, syc, syh, syw, snb, snh, snw,
    HAS_NOISE: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_CLAMP: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """One program: ``ROWS`` output rows × ``BLOCK_W`` columns × ``BLOCK_C`` channels of one image.

    It walks down the padded input one row at a time: the row's four horizontal taps are loaded
    once and combined with each of the filter's four rows, and each combination is added to the
    output row it belongs to; of the four rows open, the oldest is then complete and is stored
    after the epilogue. The filter ``f`` is ``[4, 4]`` in correlation order."""
    c_blocks = (C + BLOCK_C - 1) // BLOCK_C
    b = tl.program_id(0) // c_blocks
    image = b.to(tl.int64)  # batch offsets can pass 2^31 elements
    chans = (tl.program_id(0) % c_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
    out_cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)[:, None]
    row0 = tl.program_id(2) * ROWS
    chan_ok = chans < C
    cols = out_cols - pad_x  # input column of the leftmost tap
    ok0 = chan_ok & (cols >= 0) & (cols < W_in)
    ok1 = chan_ok & (cols + 1 >= 0) & (cols + 1 < W_in)
    ok2 = chan_ok & (cols + 2 >= 0) & (cols + 2 < W_in)
    ok3 = chan_ok & (cols + 3 >= 0) & (cols + 3 < W_in)
    offsets = cols * sxw + chans * sxc
    at_col = out_cols * 0
    f00, f01, f02, f03 = tl.load(f_ptr + 0), tl.load(f_ptr + 1), tl.load(f_ptr + 2), tl.load(f_ptr + 3)
    f10, f11, f12, f13 = tl.load(f_ptr + 4), tl.load(f_ptr + 5), tl.load(f_ptr + 6), tl.load(f_ptr + 7)
    f20, f21, f22, f23 = tl.load(f_ptr + 8), tl.load(f_ptr + 9), tl.load(f_ptr + 10), tl.load(f_ptr + 11)
    f30, f31, f32, f33 = tl.load(f_ptr + 12), tl.load(f_ptr + 13), tl.load(f_ptr + 14), tl.load(f_ptr + 15)
    dcoef = tl.load(dcoef_ptr + b * C + chans, mask=chan_ok, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + chans, mask=chan_ok, other=0.0).to(tl.float32)
    if HAS_SCALE:
        scale = tl.load(scale_ptr + b * C + chans, mask=chan_ok, other=0.0).to(tl.float32)
    x_b = x_ptr + image * sxb
    y_b = y_ptr + image * syb + out_cols * syw + chans * syc
    # The output rows still open: q-3 (filter rows 0-2 added), q-2 (rows 0-1), q-1 (row 0).
    open3 = tl.zeros([BLOCK_W, BLOCK_C], dtype=tl.float32)
    open2 = tl.zeros([BLOCK_W, BLOCK_C], dtype=tl.float32)
    open1 = tl.zeros([BLOCK_W, BLOCK_C], dtype=tl.float32)
    for q in range(row0, row0 + ROWS + 3):  # rows of the padded input
        r_in = at_col + (q - pad_y)  # masks are built of tensors only (Triton's interpreter needs it)
        r_ok = (r_in >= 0) & (r_in < H_in)
        row = x_b + r_in * sxh + offsets
        v0 = tl.load(row, mask=ok0 & r_ok, other=0.0).to(tl.float32)
        v1 = tl.load(row + sxw, mask=ok1 & r_ok, other=0.0).to(tl.float32)
        v2 = tl.load(row + 2 * sxw, mask=ok2 & r_ok, other=0.0).to(tl.float32)
        v3 = tl.load(row + 3 * sxw, mask=ok3 & r_ok, other=0.0).to(tl.float32)
        out = open3 + (f30 * v0 + f31 * v1 + f32 * v2 + f33 * v3)  # output row q-3 is complete
        open3 = open2 + (f20 * v0 + f21 * v1 + f22 * v2 + f23 * v3)
        open2 = open1 + (f10 * v0 + f11 * v1 + f12 * v2 + f13 * v3)
        open1 = f00 * v0 + f01 * v1 + f02 * v2 + f03 * v3

        r_out = at_col + q - 3
        store = chan_ok & (out_cols < W_out) & (r_out >= row0) & (r_out < H_out)
        out = out * dcoef
        if HAS_NOISE:
            noise_at = noise_ptr + image * snb + r_out * snh + out_cols * snw
            out += tl.load(noise_at, mask=(out_cols < W_out) & (r_out >= 0) & (r_out < H_out), other=0.0).to(tl.float32)
        out += bias
        out = tl.where(out >= 0, out, out * 0.2) * act_gain  # leaky ReLU, slope 0.2
        if HAS_CLAMP:
            out = tl.minimum(tl.maximum(out, -clamp), clamp)
        if HAS_SCALE:
            out = out * scale
        tl.store(y_b + r_out * syh, out.to(y_ptr.dtype.element_ty), mask=store)


def _fitting(configs, named_args, **kwargs):
    """Channel blocks no wider than the layer (rounded up to a power of two, at least 32)."""
    widest = max(32, 1 << (named_args["C"] - 1).bit_length())
    return [c for c in configs if c.kwargs["BLOCK_C"] <= widest]


fir_bias_act_tuned = triton.autotune(
    configs=[
        triton.Config({"ROWS": rows, "BLOCK_W": w, "BLOCK_C": c}, num_warps=4 if w * c <= 1024 else 8)
        for rows in (16, 32)
        for w in (8, 16, 32)
        for c in (32, 64, 128)
    ],
    key=["C", "H_out", "W_out", "sxc", "HAS_NOISE", "HAS_SCALE", "HAS_CLAMP"],  # sxc: the input's layout
    prune_configs_by={"early_config_prune": _fitting},
)(fir_bias_act_rows)
"""The kernel with its block sizes timed once per layer shape (the first call's)."""
