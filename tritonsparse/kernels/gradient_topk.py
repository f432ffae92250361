"""Gradient top-k: per output row, the k columns with the largest

    |G[row, d]|,   G = grad_outputᵀ @ x   (out, in)

Two implementations giving the same columns, chosen by :func:`uses_fused_kernel` from the
per-row buffer width KP = next_power_of_2(k + Kx) (Kx: the excluded columns per row) and,
on CUDA, by size: the chunked path while the whole product fits in one chunk (it is
modeled faster), the fused kernel past that when KP <= 128 (it never holds the product).

**Fused kernel (KP <= 128).** G is never written. A program owns BLOCK_M output rows. It
walks the input columns in tiles of TILE_D (= max(BLOCK_D, KP)): each tile of G is a
``tl.dot`` over the batch (fp32 accumulation; ``input_precision`` "ieee", exact fp32, by
default, "tf32" on request), turned into int64 sort keys

    key = (bits of |G| as int32) << 32 | (2**31 - 1 - d)

(|G| >= 0, so its float bits order like the value; the low word breaks ties towards the
smaller column, which makes the result deterministic), and merged into a running sorted
buffer of the KP best keys per row with ``tl.topk``. Tiles whose best key cannot enter
any row's buffer are skipped. Masked-out columns and NaN scores get key -1, below every
real key: **a NaN score is never selected** (a row with fewer than k non-NaN, allowed
columns is padded with index -1 and score -inf, like a row with too many exclusions).
``exclude`` (out, Kx) lists columns a row must not return (negative entries are
padding); after the last tile the excluded columns are struck out of the buffer and the
best k of the rest are exact. Extra memory: the (out, k) outputs.

**Groups (``group_size`` = g > 1, the GROUPED variant).** A result row is a group j of g
consecutive rows of G, scored ``sum_r |G[j·g + r, d]|`` (the regrowth score of a
group-shared layer). A program owns BLOCK_M groups; for each column tile it runs the
``tl.dot`` of row r of each of its groups (r = 0..g-1, one row per group at a time, so any
g works) and adds ``|tile|`` into an fp32 group sum before the same keys and merge; a NaN
in any row of a group makes that group's column unselectable. The GROUPED builds hold one
more (BLOCK_M, TILE_D) fp32 tile; they exist for exact fp32 and bf16 (DST's launches), other
grouped calls go to ``tritonsparse.topk.grouped_chunked``. g is not specialized
(``do_not_specialize``), so one build serves every g. On CUDA a grouped launch has
out / (g·BLOCK_M) programs, hence the ``_MIN_PROGRAMS`` rule in :func:`uses_fused_kernel`.
**Modeled** (the package's SASS model, ``tritonsparse.sass.model.kernel_time`` on the sm_90
build, H100 SXM), 4096 -> 14336, batch 256, exact fp32, k 8, Kx 24: g = 1 1.67 ms (896
programs), g = 4 1.88 ms (224 programs, 4x the dots per program), g = 16 3.75 ms (56
programs: the GPU is mostly idle, so that launch takes the chunked path on CUDA).

The merge holds a (BLOCK_M, 2·KP) int64 tensor in registers, so KP is capped at 128:
the kernel's config builds for sm_80/sm_90 with 0 spills and 0 stack at every KP up to
128, with and without the runtime's specialization, in about 5-20 s each; the old
fallback for KP = 1024 had 255 registers, 5.4 KB of stack and a 7-minute compile.
**Modeled** (the shared SASS model's ``topk_estimate``: issue count of the sm_90 SASS at
0.5 instructions per cycle per scheduler), ViT-B 768 -> 3072, fp32, batch 256: 122-148 µs
at KP 16-64 and 136 µs at KP 128 exact (124 µs TF32), bound by the merge's sort network;
hence the chunked path for products that fit in one chunk.

**Row chunks through the GEMM.** :func:`gradient_topk_chunked`: rows of G in
chunks of at most ``_CHUNK_BYTES`` (a dense ``grad_output[:, rows]ᵀ @ x`` in fp32, exact
unless ``tf32``), then ONE selection kernel per chunk
(:mod:`tritonsparse.kernels.topk_select`: per row, a bisection on the bits of |G| held in
registers finds a threshold with at most KP = next_power_of_2(1.25 k) columns above it,
a cumsum compacts those survivors, a bitonic sort of their int64 keys orders them; NaN and
excluded columns never selected, ties by ascending column): the same columns, order and
NaN rule as the fused kernel. On CUDA and in the interpreter when ``in <= 4096`` and KP <=
2048 (AOT: 154 builds, 0 spills on sm_80/sm_90, under 30 s each); otherwise, and on plain
CPU, the same rule in PyTorch operators (:func:`_select_torch`). Extra memory: one chunk of
G plus (rows, KP) int64 survivors.

Modeled cost (**modeled**, H100 SXM, not measured; the SASS report
``python -m tritonsparse.sass topk ...`` on the sm_90 build, and :func:`chunked_cost_model`
from the same SASS counts), SRigL's k = 2K on the ViT-B MLP at batch 256: the selection
kernel 20 µs at 768 -> 3072 (k=154, KP 256, 1 warp a row) and 28 µs at 3072 -> 768 (k=614,
KP 1024, 4 warps), bound by the integer pipe (83% of its instructions), ~80% of them in
the int64 bitonic sort (the bisection: ~4 passes of 2 instructions a key); with the exact
fp32 GEMM (26 µs) the op is 46 / 54 µs (it was 110 µs with the ~22 PyTorch selection
operators), with TF32 (6.4 µs) 27 / 35 µs, i.e. 4.1x / 5.4x the TF32 GEMM alone (issue 8
asks <= 2x). 2x leaves the selection 4.4 µs above its launch floor at 768 -> 3072: ~900
warp instructions a row (750 on the integer pipe); the sort takes ~2,700 (~11 per survivor
per bitonic stage, 36 stages) and the bisection and compaction ~850. Reaching it needs
TF32, a stable per-row radix sort of the 32-bit scores (ties keep column order; ~20
instructions a survivor, but a shared-memory scatter Triton does not offer) and fewer,
cheaper passes, or the selection fused into the GEMM's epilogue.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
import triton
import triton.language as tl

from .._triton import autotune, backend_for, batch_bucket, cuda_matmul_tf32, launch_device, next_power_of_2

# (BLOCK_M, BLOCK_D, BLOCK_B, num_warps, num_stages, buffer widths KP it serves, exact fp32,
# grouped). A config is kept only at the KP it was built for without spills or stack on
# sm_80 and sm_90, by ``python -m tritonsparse._aot`` (the runtime's specialization, with the
# ints of a representative launch): the exact-fp32 tile serves fp32 inputs ranked in exact
# fp32 ("ieee", an FMA dot that holds more registers), the other one TF32 and bf16, with and
# without exclusions. Register use is not monotonic in KP: the 16-warp tile built with an
# 8-24 B stack in exact fp32 on sm_80 at KP 16-64, the 8-warp one with a 32 B stack in
# TF32 on sm_90 at KP 32, so each precision keeps the tile that stays at 0 stack.
# Grouped tiles (``group_size`` > 1, the GROUPED variant: one more (BLOCK_M, TILE_D) fp32
# tile, the group sum, is live across the batch loop) are built only for what DST over
# groups launches: exact fp32 or bf16; other grouped calls take the chunked path.
# In exact fp32 the 8-warp tile has an 8-24 B stack on sm_90 at KP 16 and 128 when grouped,
# the 16-warp one a 32 B stack at KP 32, so the grouped exact tile depends on KP.
_TILES = [(16, 128, 16, 16, 1, (16, 32, 64, 128), False, False), (16, 128, 16, 8, 1, (16, 32, 64, 128), True, False),
          (16, 128, 16, 16, 1, (16, 32, 64, 128), False, True), (16, 128, 16, 16, 1, (16, 128), True, True),
          (16, 128, 16, 8, 1, (32, 64), True, True)]
MAX_KERNEL_KP = max(max(t[5]) for t in _TILES)  # wider buffers take the chunked GEMM path


def _kps(config) -> tuple:
    """The buffer widths ``config`` is built for (none for the interpreter's config)."""
    return getattr(config, "kps", ())


def _configs():
    # The interpreter keeps only the first config: a small tile that handles every case.
    configs = [triton.Config({"BLOCK_M": 16, "BLOCK_D": 16, "BLOCK_B": 16}, num_warps=4, num_stages=2)]
    for bm, bd, bb, w, st, kps, exact, grouped in _TILES:
        c = triton.Config({"BLOCK_M": bm, "BLOCK_D": bd, "BLOCK_B": bb}, num_warps=w, num_stages=st)
        c.kps, c.exact_fp32, c.grouped = kps, exact, grouped
        configs.append(c)
    return configs


def _serves(config, kp: int, exact_fp32: bool, grouped: bool = False) -> bool:
    """Whether ``config`` was built (spill-free) for buffer width ``kp`` in this precision,
    for the grouped variant or the plain one."""
    return (kp in _kps(config) and getattr(config, "exact_fp32", None) == exact_fp32
            and getattr(config, "grouped", None) == grouped)


def grouped_kernel_serves(kp: int, dtype: torch.dtype, precision: str) -> bool:
    """Whether the GROUPED kernel has a spill-free build for this launch (what DST over
    groups runs: fp32 ranked exactly, or bf16; with or without exclusions); other grouped
    calls (TF32, fp16) take the chunked path."""
    return kp <= MAX_KERNEL_KP and precision == "ieee" and dtype in (torch.float32, torch.bfloat16)


def _prune(configs, named_args, **kwargs):
    """The configs built for this KP (none past ``MAX_KERNEL_KP``: the launcher sends
    those to :func:`gradient_topk_chunked`), no taller than the rows, no longer along the
    batch than needed."""
    kp = int(kwargs.get("KP", named_args.get("KP", 16)))
    if kp > MAX_KERNEL_KP:
        raise ValueError(f"gradient_topk kernel: KP={kp} is past {MAX_KERNEL_KP}; use gradient_topk_chunked")
    b = int(named_args["b_bucket"])
    out = int(named_args["out_features"])
    precision = kwargs.get("PRECISION", named_args.get("PRECISION"))
    grouped = bool(kwargs.get("GROUPED", named_args.get("GROUPED", False)))
    exact = named_args["x_ptr"].dtype == torch.float32 and precision == "ieee"
    fit = [c for c in configs if _serves(c, kp, exact, grouped)]
    kept = [c for c in fit if c.kwargs["BLOCK_B"] <= max(b, 16) and c.kwargs["BLOCK_M"] <= max(next_power_of_2(out), 16)]
    return kept or fit[:1]


@triton.jit
def _tile_dot(go_r, x_cols, row_mask, d_mask, B, stride_go_b, stride_x_b,
              PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, TILE_D: tl.constexpr, BLOCK_B: tl.constexpr):
    """(BLOCK_M, TILE_D) fp32 tile of grad_outputᵀ x: rows at ``go_r``, columns at ``x_cols``."""
    acc = tl.zeros((BLOCK_M, TILE_D), dtype=tl.float32)
    for b0 in range(0, B, BLOCK_B):
        bs = b0 + tl.arange(0, BLOCK_B)
        b_mask = bs < B
        bs64 = bs.to(tl.int64)
        g = tl.load(go_r + bs64[None, :] * stride_go_b, mask=row_mask[:, None] & b_mask[None, :], other=0.0)
        xv = tl.load(x_cols + bs64[:, None] * stride_x_b, mask=b_mask[:, None] & d_mask[None, :], other=0.0)
        acc = tl.dot(g, xv, acc, input_precision=PRECISION)
    return acc


@autotune(configs=_configs(), key=["out_features", "in_features", "b_bucket", "KP", "HAS_EXCLUDE", "GROUPED"],
          prune_configs_by={"early_config_prune": _prune})
@triton.jit(do_not_specialize=["G"])
def _gradient_topk_kernel(
    x_ptr, go_ptr, ex_ptr, scores_ptr, idx_ptr,
    B, out_features, in_features, k, Kx, G, b_bucket,
    stride_x_b, stride_x_d, stride_go_b, stride_go_n,
    stride_ex_n, stride_ex_k, stride_s_n, stride_i_n,
    KP: tl.constexpr, HAS_EXCLUDE: tl.constexpr, PRECISION: tl.constexpr, GROUPED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_B: tl.constexpr,
):
    TILE_D: tl.constexpr = BLOCK_D * ((KP + BLOCK_D - 1) // BLOCK_D)
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)  # result rows (GROUPED: groups of G rows)
    row_mask = rows < out_features
    rows64 = rows.to(tl.int64)
    if GROUPED:
        go_rows = go_ptr + (rows64 * G)[:, None] * stride_go_n  # the first row of each group
    else:
        go_rows = go_ptr + rows64[:, None] * stride_go_n

    buf = tl.full((BLOCK_M, KP), -1, tl.int64)  # best keys so far, descending
    thr = tl.full((BLOCK_M,), -1, tl.int64)  # the smallest key held per row
    for d0 in range(0, in_features, TILE_D):
        ds = d0 + tl.arange(0, TILE_D)
        d_mask = ds < in_features
        x_cols = x_ptr + ds.to(tl.int64)[None, :] * stride_x_d
        if GROUPED:  # sum over the group's G rows of |tile|, one row of every group at a time
            score = tl.zeros((BLOCK_M, TILE_D), dtype=tl.float32)
            go_r = go_rows
            for r in range(0, G):
                score += tl.abs(_tile_dot(go_r, x_cols, row_mask, d_mask, B, stride_go_b, stride_x_b,
                                          PRECISION, BLOCK_M, TILE_D, BLOCK_B))
                go_r += stride_go_n  # the group's next row (a 64-bit pointer step)
        else:
            score = tl.abs(_tile_dot(go_rows, x_cols, row_mask, d_mask, B, stride_go_b, stride_x_b,
                                     PRECISION, BLOCK_M, TILE_D, BLOCK_B))
        bits = score.to(tl.int32, bitcast=True).to(tl.int64)
        key = (bits << 32) | (2147483647 - ds).to(tl.int64)[None, :]
        key = tl.where(d_mask[None, :] & (score == score), key, -1)  # NaN scores are never selected
        gain = tl.max((tl.max(key, axis=1) > thr).to(tl.int32), axis=0)
        if gain > 0:
            if TILE_D > KP:
                cand = tl.topk(key, KP, dim=1)
            else:
                cand = key
            merged = tl.reshape(tl.join(buf, cand), (BLOCK_M, 2 * KP))
            buf = tl.topk(merged, KP, dim=1)
            thr = tl.min(buf, axis=1)

    cols = 2147483647 - (buf & 0xFFFFFFFF)  # int64; -1 keys give a negative column
    if HAS_EXCLUDE:
        hit = tl.zeros((BLOCK_M, KP), dtype=tl.int32)
        ex_rows = ex_ptr + rows64 * stride_ex_n
        for j in range(0, Kx):
            e = tl.load(ex_rows + j * stride_ex_k, mask=row_mask, other=-1).to(tl.int64)
            hit = tl.maximum(hit, (cols == e[:, None]).to(tl.int32))
        buf = tl.where(hit > 0, -1, buf)
        buf = tl.sort(buf, dim=1, descending=True)
        cols = 2147483647 - (buf & 0xFFFFFFFF)

    valid = buf >= 0
    # the float bits of the score (scores_ptr is the fp32 output viewed as int32); -inf if none
    score = tl.where(valid, (buf >> 32).to(tl.int32), -8388608)
    index = tl.where(valid, cols, -1)
    cs = tl.arange(0, KP)
    out_mask = row_mask[:, None] & (cs < k)[None, :]
    tl.store(scores_ptr + rows64[:, None] * stride_s_n + cs[None, :], score, mask=out_mask)
    tl.store(idx_ptr + rows64[:, None] * stride_i_n + cs[None, :], index, mask=out_mask)


def buffer_width(k: int, kx: int) -> int:
    """KP, the per-row buffer the kernel keeps for ``k`` results and ``kx`` exclusions."""
    return max(next_power_of_2(k + kx), 16)


def uses_fused_kernel(k: int, kx: int, out_features: int = 0, in_features: int = 0, cuda: bool = False,
                      group_size: int = 1) -> bool:
    """Whether ``k`` results with ``kx`` exclusions per row run the fused kernel rather than
    :func:`gradient_topk_chunked` (``tritonsparse.topk.grouped_chunked`` for
    ``group_size`` > 1). The kernel needs a buffer of at most ``MAX_KERNEL_KP``.
    On CUDA it is also chosen by size: while the whole (out, in) product fits in one chunk
    the chunked path is used, as it is modeled faster (ViT-B 768 -> 3072, fp32, batch 256,
    exact, k = 8: 32 µs (``chunked_cost_model``) against 122-148 µs for the fused kernel,
    whose per-tile top-k merge is issue-bound); past one chunk the fused kernel saves the
    product's memory. With groups the kernel launches one program per ``BLOCK_M`` groups,
    so on CUDA it also needs at least ``_MIN_PROGRAMS`` programs (one per H100 SM, a rule,
    not a measurement); fewer would leave most of the GPU idle while the chunked path's
    GEMM fills it."""
    if buffer_width(k, kx) > MAX_KERNEL_KP:
        return False
    if not cuda:
        return True
    if _BYTES_PER_ELEMENT * out_features * in_features <= _CHUNK_BYTES:
        return False
    block_m = min(t[0] for t in _TILES)
    return group_size == 1 or out_features // group_size >= _MIN_PROGRAMS * block_m


_MIN_PROGRAMS = 132  # SMs of an H100 SXM


def gradient_topk(x, grad_output, k, exclude, scores, indices, group_size=1, precision="ieee"):
    """Launch the fused kernel (``buffer_width(k, Kx) <= MAX_KERNEL_KP``). x: (B, in),
    grad_output: (B, out) (any strides), exclude: (out / G, Kx) integer tensor or None;
    scores (out / G, k) fp32 and indices (out / G, k) int64 are written in full (the kernel
    writes the scores' float bits through an int32 view). ``precision``: "ieee" or "tf32".
    ``group_size`` G: each result row ranks ``sum_r |(grad_outputᵀ x)[gG + r, :]|`` over the
    G rows of its group (G = 1: one row); a program sums its groups' rows one at a time,
    ``tl.dot`` tile by tile, before the merge, so G may be any divisor of out."""
    B, in_features = x.shape
    n_groups = grad_output.shape[1] // group_size
    kx = exclude.shape[1] if exclude is not None else 0
    if buffer_width(k, kx) > MAX_KERNEL_KP:
        raise ValueError(f"k + Kx = {k + kx} needs a buffer past {MAX_KERNEL_KP}: use gradient_topk_chunked")
    ex = exclude if exclude is not None else indices  # a placeholder pointer when unused
    grid = lambda meta: (triton.cdiv(n_groups, meta["BLOCK_M"]),)  # noqa: E731
    with launch_device(x):
        _gradient_topk_kernel[grid](
            x, grad_output, ex, scores.view(torch.int32), indices,
            B, n_groups, in_features, k, kx, group_size, batch_bucket(B),
            x.stride(0), x.stride(1), grad_output.stride(0), grad_output.stride(1),
            ex.stride(0), ex.stride(1), scores.stride(0), indices.stride(0),
            KP=buffer_width(k, kx), HAS_EXCLUDE=exclude is not None, PRECISION=precision,
            GROUPED=group_size > 1,
        )
    return scores, indices


_CHUNK_BYTES = 256 * 2**20  # G and its masks for one chunk of rows
_BYTES_PER_ELEMENT = 16  # G (4), two bool masks and the int64 cumsum of one of them


def chunk_rows(out_features: int, in_features: int) -> int:
    """Rows of G per chunk in :func:`gradient_topk_chunked` (16 bytes per element)."""
    return max(1, min(out_features, _CHUNK_BYTES // max(_BYTES_PER_ELEMENT * in_features, 1)))


def gradient_topk_chunked(x, grad_output, k, exclude=None, tf32=False):
    """Per-row top-k of |grad_outputᵀ x| through row chunks of the dense product, for any
    k: each chunk of rows is one GEMM in fp32 (TF32 only if ``tf32`` and on CUDA), then the
    selection, best first, ties by ascending column; NaN and excluded columns are never
    selected. The selection is one Triton kernel (:func:`~tritonsparse.kernels.topk_select.topk_select`)
    on CUDA and in the interpreter when it serves the shape (in <= 4096, k's sort width
    <= 2048), else PyTorch operators (:func:`_select_torch`). Returns ``(scores fp32,
    indices int64)``, each (out, k); a row with fewer than k selectable columns is padded
    with -1 / -inf."""
    from . import topk_select as sel

    out_features, in_features = grad_output.shape[1], x.shape[1]
    xf, gf = x.float(), grad_output.float()
    scores = torch.empty(out_features, k, dtype=torch.float32, device=x.device)
    indices = torch.empty(out_features, k, dtype=torch.int64, device=x.device)
    use_kernel = backend_for(x.device) == "triton" and sel.serves(in_features, k)
    step = chunk_rows(out_features, in_features)
    with cuda_matmul_tf32(tf32, x.device):
        for r0 in range(0, out_features, step):
            r1 = min(out_features, r0 + step)
            g = gf[:, r0:r1].t() @ xf
            ex = exclude[r0:r1] if exclude is not None else None
            if use_kernel:
                sel.topk_select(g, k, ex, out=(scores[r0:r1], indices[r0:r1]))
            else:
                scores[r0:r1], indices[r0:r1] = _select_torch(g, k, ex)
    return scores, indices


def _select_torch(g, k, exclude=None):
    """The selection of :func:`gradient_topk_chunked` in PyTorch operators, on a chunk
    ``g`` (rows, in) of the product (overwritten): NaN and excluded columns score -1,
    ``torch.topk`` gives each row's k-th score t, and the row keeps every column above t
    plus the lowest-numbered columns equal to t, best first, ties by ascending column."""
    rows_n = g.shape[0]
    g = torch.nan_to_num_(g.abs_(), nan=-1.0, posinf=float("inf"))
    if exclude is not None:
        ex = exclude.long()
        keep = ex >= 0  # negative entries are padding
        rows = torch.arange(rows_n, device=g.device)[:, None].expand_as(ex)
        g[rows[keep], ex[keep]] = -1.0
    t = g.topk(k, dim=1, sorted=False).values.min(dim=1, keepdim=True).values
    above = g > t
    tied = g == t
    room = k - above.sum(dim=1, keepdim=True)
    chosen = above | (tied & (tied.cumsum(dim=1) <= room))
    cols = chosen.nonzero()[:, 1].view(rows_n, k)  # k per row, ascending column
    top = g.gather(1, cols)
    order = torch.sort(top, dim=1, descending=True, stable=True).indices  # ties keep ascending column
    top, cols = top.gather(1, order), cols.gather(1, order)
    valid = top >= 0
    return torch.where(valid, top, float("-inf")), torch.where(valid, cols, -1)


# H100 SXM constants of the shared SASS roofline model (tools/sass_model in the workspace)
_H100 = {"l2_bytes_per_s": 5.5e12, "floor_us": 2.0, "fp32_flops": 50e12, "tf32_flops": 400e12,
         "alu_warp_instr_per_s": 132 * 2 * 1.98e9}
# warp instructions of the selection kernel (topk_select), read from its sm_90 SASS
# (triton 3.9; 1-warp program at 768 -> 1024 columns / 256 survivors, 4 warps at 3072 ->
# 4096 / 1024): per survivor per bitonic stage, per row element per bisection pass, per
# row element once (load, key, cumsum, scatter); 83% of them run on the integer pipe
# (SEL, ISETP, LOP3, IMAD; the rest are shuffles, loads and stores).
_SELECT_SASS = {"per_key_stage": 11.0, "per_elem_pass": 3.8, "per_elem": 10.0, "int_share": 0.83}
SELECT_PASSES = 5  # bisection passes per row on the ViT-B problems' Gaussian data (mean 4.1, rounded up as the report does)


def chunked_cost_model(batch: int, in_features: int, out_features: int, tf32: bool = False,
                       k: int | None = None, passes: int = SELECT_PASSES) -> dict:
    """**Modeled** H100 SXM time (µs) of :func:`gradient_topk_chunked` next to the dense
    baseline ``(grad_outputᵀ x).abs()``, exclusion mask, ``torch.topk`` on fp32 scores.

    A model, not a measurement. GEMM at cuBLAS's achieved rate (fp32 50, TF32 400
    TFLOP/s) plus 2 µs. Selection (``k`` results per row, default ``in_features // 5``,
    SRigL's 2K at 90% sparsity), when :func:`~tritonsparse.kernels.topk_select.serves` it:
    the kernel's warp instructions (``_SELECT_SASS``, from its SASS: a bitonic sort of
    KP = ``sort_width(k)`` int64 keys per row, ``passes`` bisection passes over the row)
    at the integer pipe's 2 warp instructions per clock per SM (its bound), plus 2 µs;
    otherwise the PyTorch selection, its bytes through L2 at 5.5 TB/s (58 B per element of
    G, 11 kernels of 2 µs). Baseline: abs 8, exclusion mask 16, ``topk`` 16 (40 B, 3
    kernels)."""
    from . import topk_select as sel

    k = max(1, in_features // 5) if k is None else k
    rate = _H100["tf32_flops"] if tf32 else _H100["fp32_flops"]
    gemm = 2 * batch * in_features * out_features / rate * 1e6 + _H100["floor_us"]
    elems = in_features * out_features
    bw = _H100["l2_bytes_per_s"] / 1e6  # bytes per µs

    def passes_us(bytes_per_elem, kernels):
        return elems * bytes_per_elem / bw + kernels * _H100["floor_us"]

    if sel.serves(in_features, k):
        kp, c = sel.sort_width(k), _SELECT_SASS
        log = kp.bit_length() - 1
        per_row = kp / 32 * log * (log + 1) / 2 * c["per_key_stage"] + in_features / 32 * (
            c["per_elem"] + passes * c["per_elem_pass"])
        select = out_features * per_row * c["int_share"] / _H100["alu_warp_instr_per_s"] * 1e6 + _H100["floor_us"]
    else:
        select = passes_us(8 + 8 + 16 + 5 + 5 + 1 + 9 + 3 + 1 + 1 + 1, 11)
    dense = gemm + passes_us(8 + 16 + 16, 3)
    return {"gemm_us": gemm, "select_us": select, "chunked_us": gemm + select, "dense_topk_us": dense}


def _aot_specs():
    """(configs holder, signature, constexprs) for the ahead-of-time compile check: fp32
    (exact and TF32) and bf16 inputs, with and without an exclusion list, each config at
    every KP the prune keeps it for; the GROUPED variant for the launches
    :func:`grouped_kernel_serves` admits (exact fp32 or bf16)."""
    ints = {n: "i32" for n in ("B", "out_features", "in_features", "k", "Kx", "G", "b_bucket",
                               "stride_x_b", "stride_x_d", "stride_go_b", "stride_go_n",
                               "stride_ex_n", "stride_ex_k", "stride_s_n", "stride_i_n")}
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    specs = []
    for kp in sorted({kp for t in _TILES for kp in t[5]}):
        for dt, prec in (("fp32", "ieee"), ("fp32", "tf32"), ("bf16", "ieee")):
            exact = dt == "fp32" and prec == "ieee"
            for grouped in (False, True):
                holder = SimpleNamespace(fn=_gradient_topk_kernel.fn,
                                         configs=[c for c in _configs() if _serves(c, kp, exact, grouped)])
                if grouped and not grouped_kernel_serves(kp, dtypes[dt], prec):
                    continue
                for has_ex in (False, True):
                    sig = {"x_ptr": f"*{dt}", "go_ptr": f"*{dt}", "ex_ptr": "*i32", "scores_ptr": "*i32",
                           "idx_ptr": "*i64", **ints}
                    specs.append((holder, sig, {"KP": kp, "HAS_EXCLUDE": has_ex, "PRECISION": prec,
                                                "GROUPED": grouped}))
    return specs


AOT_SPECS = _aot_specs()
