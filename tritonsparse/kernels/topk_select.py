"""Per-row top-k selection of a dense fp32 block in ONE kernel: the selection step of
:func:`tritonsparse.kernels.gradient_topk.gradient_topk_chunked` (after its GEMM).

Given ``G`` (rows, in) fp32 (a chunk of ``grad_outputᵀ x``) and an optional ``exclude``
(rows, Kx) of integer columns (negative entries are padding), each row's ``k`` best
columns by ``|G|`` are written best first, with the rules of ``gradient_topk``: a NaN
score is never selected, excluded columns are never selected, equal scores are ordered by
ascending column, and a row with fewer than ``k`` selectable columns is padded with
index -1 and score -inf.

**Design** (one program per row; the row is held in registers):

1. Exclusions: the program stores NaN into its own row of ``G`` at the excluded columns
   (a scatter of Kx words; ``G`` is the caller's scratch chunk), then a CTA barrier.
2. Keys: ``key = bits(|g|)`` as int32 (|g| >= 0, so the float bits order like the value;
   +inf is 0x7F800000), ``-1`` for NaN (and so for excluded columns) and the masked tail.
3. Threshold: a bisection on the key between the row's smallest selectable key and its
   largest, ``count(key >= t)`` by a subtraction and a sum of sign bits over the row in
   registers, keeping ``lo`` with ``count(key >= lo) >= k``. It stops as soon as at most
   ``KP`` keys are ``>= lo`` (``KP`` = the sort width, at least 1.25 k, so a Gaussian row
   stops after ~6 passes), or when ``lo`` is the exact k-th key (ties at it).
4. Compaction: one ``tl.cumsum`` of (key > lo) + (key == lo) << 16 gives every survivor
   its slot in column order (ties at ``lo`` past the k-th result are dropped, lowest
   columns first); survivors go to a (rows, KP) int64 scratch as the sort key
   ``bits << 32 | (2**31 - 1 - column)`` (ties: smaller column first).
5. ``tl.sort`` of the KP survivors (descending), the first k written out. Before it the
   survivors are renumbered (a reshape and transpose, no data movement) so that the keys
   a thread holds are the sort's low axes, which the bitonic network compares most: those
   exchanges stay in registers (-30% shuffles, -7% instructions at KP 256 on one warp).

Rows wider than :data:`MAX_IN_FEATURES` or ``k`` past :data:`MAX_KP` are not served (the
caller keeps its PyTorch selection): the AOT check builds every width up to those with 0
spills for sm_80 and sm_90.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
import triton
import triton.language as tl

from .._triton import launch_device, next_power_of_2

MAX_IN_FEATURES = 4096  # the row is held in registers: BLOCK_D = next_power_of_2(in) <= this
MAX_KP = 2048  # sort width


@triton.jit
def _topk_select_kernel(
    g_ptr, ex_ptr, buf_ptr, scores_ptr, idx_ptr,
    in_features, k, Kx,
    stride_g, stride_ex_n, stride_ex_k, stride_buf, stride_s, stride_i,
    HAS_EXCLUDE: tl.constexpr, BLOCK_D: tl.constexpr, KP: tl.constexpr, BLOCK_X: tl.constexpr,
    THREADS: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    g_row = g_ptr + row * stride_g
    if HAS_EXCLUDE:  # excluded columns become NaN in this row's G (never selected)
        ex_row = ex_ptr + row * stride_ex_n
        nan = tl.full((BLOCK_X,), float("nan"), tl.float32)
        for x0 in range(0, Kx, BLOCK_X):
            xs = x0 + tl.arange(0, BLOCK_X)
            e = tl.load(ex_row + xs * stride_ex_k, mask=xs < Kx, other=-1).to(tl.int64)
            tl.store(g_row + e, nan, mask=e >= 0)
        tl.debug_barrier()

    ds = tl.arange(0, BLOCK_D)
    g = tl.load(g_row + ds, mask=ds < in_features, other=float("nan"))
    key = tl.where(g == g, tl.abs(g).to(tl.int32, bitcast=True), -1)

    # bisection on the key: count(key >= lo) >= k > count(key >= hi) = c_hi, starting from
    # the smallest selectable key and just above the largest
    c_lo = tl.sum((key >= 0).to(tl.int32), axis=0)
    lo = tl.min(tl.where(key >= 0, key, 0x7F800001), axis=0)
    hi = tl.max(key, axis=0) + 1
    c_hi = c_lo * 0
    while (c_lo > KP) & (hi - lo > 1):
        mid = lo + (hi - lo) // 2
        # count(key >= mid): BLOCK_D minus the sign bits of key - mid (no overflow: both
        # lie in [-1, 0x7F800001]), two instructions a key
        c = BLOCK_D - tl.sum(((key - mid).to(tl.uint32, bitcast=True) >> 31).to(tl.int32), axis=0)
        up = c >= k
        lo = tl.where(up, mid, lo)
        c_lo = tl.where(up, c, c_lo)
        hi = tl.where(up, hi, mid)
        c_hi = tl.where(up, c_hi, c)

    # survivors: key > lo, and key == lo up to `room` of them in column order
    exact = c_lo > KP  # lo is the k-th key and too many keys tie at it
    room = tl.where(exact, k - c_hi, KP)
    gt = key > lo
    eq = key == lo
    cs = tl.cumsum(gt.to(tl.int32) + (eq.to(tl.int32) << 16), axis=0)  # in_features < 2**16
    n_eq = tl.minimum(cs >> 16, room)
    keep = gt | (eq & ((cs >> 16) <= room))
    pos = (cs & 0xFFFF) + n_eq - 1
    skey = (key.to(tl.int64) << 32) | (2147483647 - ds).to(tl.int64)
    buf_row = buf_ptr + row * stride_buf
    tl.store(buf_row + pos, skey, mask=keep)
    n_keep = tl.where(exact, k, c_lo)
    tl.debug_barrier()

    cs_k = tl.arange(0, KP)
    top = tl.load(buf_row + cs_k, mask=cs_k < n_keep, other=-1)
    if KP >= 2 * THREADS:  # renumber so that each thread's keys are the low (most compared) sort axes
        top = tl.reshape(tl.permute(tl.reshape(top, [KP // THREADS, THREADS]), [1, 0]), [KP])
    top = tl.sort(top, descending=True)
    valid = top >= 0
    score = tl.where(valid, (top >> 32).to(tl.int32).to(tl.float32, bitcast=True), float("-inf"))
    index = tl.where(valid, 2147483647 - (top & 0xFFFFFFFF), -1)
    out = cs_k < k
    tl.store(scores_ptr + row * stride_s + cs_k, score, mask=out)
    tl.store(idx_ptr + row * stride_i + cs_k, index, mask=out)


def sort_width(k: int) -> int:
    """KP: the survivors a row keeps and sorts for ``k`` results (at least 1.25 k, so the
    bisection can stop early; a power of two, at least 16)."""
    return max(next_power_of_2(k + (k >> 2)), 16)


def block_d(in_features: int) -> int:
    """The row width held in registers (a power of two, at least 16)."""
    return max(next_power_of_2(in_features), 16)


def num_warps(block: int, kp: int) -> int:
    """Warps per row program: one warp (the sort's exchanges stay in registers and warp
    shuffles) up to a 1024-wide row and 256 survivors, more past that (registers), 16 at
    the widest (4096 columns, 2048 survivors: with 8 warps the sm_80 build keeps an 8 B
    stack frame when k is a multiple of 16)."""
    if block >= 4096 and kp >= 2048:
        return 16
    return max(1, min(8, max(block // 1024, kp // 256)))


def serves(in_features: int, k: int) -> bool:
    """Whether the kernel handles rows of ``in_features`` with ``k`` results (else the
    caller selects with PyTorch operators)."""
    return 1 <= k <= in_features <= MAX_IN_FEATURES and sort_width(k) <= MAX_KP


_BLOCK_X = 128


def topk_select(g: torch.Tensor, k: int, exclude: torch.Tensor | None = None, out=None):
    """Each row's ``k`` largest ``|g|`` (see the module doc for the rules). ``g``: (rows, in)
    fp32 with unit column stride, **overwritten** at the excluded columns (NaN);
    ``exclude``: (rows, Kx) int16/int32/int64 or None; ``out``: optional ``(scores,
    indices)`` to write, (rows, k) fp32 / int64 with unit column stride. Returns ``(scores
    fp32, indices int64)``, each (rows, k). Needs :func:`serves` ``(in, k)``."""
    if g.dtype != torch.float32 or g.dim() != 2 or (g.shape[1] > 1 and g.stride(1) != 1):
        raise ValueError(f"g must be a 2-D fp32 tensor with unit column stride, got {g.dtype} {tuple(g.shape)}")
    rows, in_features = g.shape
    if not serves(in_features, k):
        raise ValueError(f"topk_select: in_features={in_features}, k={k} not served (in <= {MAX_IN_FEATURES}, "
                         f"sort width {sort_width(k)} <= {MAX_KP})")
    if exclude is not None and (exclude.dim() != 2 or exclude.shape[0] != rows):
        raise ValueError(f"exclude must be (rows={rows}, Kx), got {tuple(exclude.shape)}")
    kp, bd = sort_width(k), block_d(in_features)
    warps = num_warps(bd, kp)
    if out is None:
        out = (torch.empty(rows, k, dtype=torch.float32, device=g.device),
               torch.empty(rows, k, dtype=torch.int64, device=g.device))
    scores, indices = out
    for name, t, dt in (("scores", scores, torch.float32), ("indices", indices, torch.int64)):
        if t.dtype != dt or tuple(t.shape) != (rows, k) or (k > 1 and t.stride(1) != 1):
            raise ValueError(f"out {name} must be ({rows}, {k}) {dt} with unit column stride, got {t.dtype} "
                             f"{tuple(t.shape)}")
    if rows == 0:
        return scores, indices
    buf = torch.empty(rows, kp, dtype=torch.int64, device=g.device)
    has_ex = exclude is not None and exclude.shape[1] > 0
    ex = exclude if has_ex else indices  # a placeholder pointer when unused
    with launch_device(g):
        _topk_select_kernel[(rows,)](
            g, ex, buf, scores, indices,
            in_features, k, ex.shape[1] if has_ex else 0,
            g.stride(0), ex.stride(0), ex.stride(1), buf.stride(0), scores.stride(0), indices.stride(0),
            HAS_EXCLUDE=has_ex, BLOCK_D=bd, KP=kp, BLOCK_X=_BLOCK_X, THREADS=32 * warps,
            num_warps=warps, num_stages=1,
        )
    return scores, indices


def _aot_specs():
    """Every (BLOCK_D, KP) width the launcher can pick with an int32 exclusion list (the
    exclusion loop only adds code), without one from BLOCK_D 1024, and int64 lists at the
    widest; each with the warps the launcher uses and the ints of a representative launch
    (in = 3/4 of BLOCK_D, unit column strides)."""
    specs = []
    for bd in (16, 32, 64, 128, 256, 512, 1024, 2048, 4096):
        for kp in (16, 32, 64, 128, 256, 512, 1024, 2048):
            if kp > 2 * bd or (kp > bd and bd < 16):
                continue
            warps = num_warps(bd, kp)
            cfg = triton.Config({}, num_warps=warps, num_stages=1)
            holder = SimpleNamespace(fn=_topk_select_kernel, configs=[cfg])
            in_f = max(bd * 3 // 4, 1)
            for ex_t in ("i32",) + (("i64",) if (bd, kp) == (4096, 2048) else ()):
                for has_ex in ((False, True) if bd >= 1024 else (True,)):
                    sig = {"g_ptr": "*fp32", "ex_ptr": f"*{ex_t}" if has_ex else "*i64", "buf_ptr": "*i64",
                           "scores_ptr": "*fp32", "idx_ptr": "*i64", "in_features": "i32", "k": "i32", "Kx": "i32",
                           "stride_g": "i32", "stride_ex_n": "i32", "stride_ex_k": "i32", "stride_buf": "i32",
                           "stride_s": "i32", "stride_i": "i32"}
                    k = max(1, min(in_f, kp * 3 // 4))
                    kx = in_f // 10 if has_ex else k
                    values = {"in_features": in_f, "k": k, "Kx": kx, "stride_g": in_f, "stride_ex_n": kx,
                              "stride_ex_k": 1, "stride_buf": kp, "stride_s": k, "stride_i": k}
                    specs.append((holder, sig, {"HAS_EXCLUDE": has_ex, "BLOCK_D": bd, "KP": kp, "BLOCK_X": _BLOCK_X,
                                         "THREADS": 32 * warps},
                                  values))
    return specs


AOT_SPECS = _aot_specs()


def bisection_passes(g: torch.Tensor, k: int, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Per row, the passes the kernel's bisection makes on ``g`` (rows, in) with ``k``
    results (a PyTorch replay of its loop, on a copy of ``g``): the trips of the kernel's
    hot loop, which the SASS report needs (they depend on the data, not on the binary)."""
    s = g.detach().float().abs()
    key = torch.where(s.isnan(), -1, s.view(torch.int32).long())
    if exclude is not None and exclude.numel():
        ex = exclude.long()
        rows = torch.arange(g.shape[0], device=g.device)[:, None].expand_as(ex)
        keep = ex >= 0
        key[rows[keep], ex[keep]] = -1
    kp = sort_width(k)
    c_lo = (key >= 0).sum(1)
    lo = torch.where(key >= 0, key, 0x7F800001).min(1).values
    hi = key.max(1).values + 1
    passes = torch.zeros_like(c_lo)
    while True:
        live = (c_lo > kp) & (hi - lo > 1)
        if not bool(live.any()):
            return passes
        mid = lo + (hi - lo) // 2
        c = (key >= mid[:, None]).sum(1)
        up = c >= k
        lo = torch.where(live & up, mid, lo)
        c_lo = torch.where(live & up, c, c_lo)
        hi = torch.where(live & ~up, mid, hi)
        passes += live.long()


def model_trips(args: dict) -> int | None:
    """Hot-loop trips per program for the SASS report's model, from a captured launch's
    arguments (``g_ptr`` holds the chunk the library computed): the mean bisection passes
    over its rows, rounded up (None when ``g_ptr`` holds no data)."""
    g = args.get("g_ptr")
    if not isinstance(g, torch.Tensor) or g.dim() != 2:
        return None
    ex = args.get("ex_ptr") if args.get("HAS_EXCLUDE") else None
    passes = bisection_passes(g, int(args["k"]), ex if isinstance(ex, torch.Tensor) else None)
    return int(-(-int(passes.sum()) // max(passes.numel(), 1)))
