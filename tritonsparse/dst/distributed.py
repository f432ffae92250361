"""Dynamic sparsity under ``torch.distributed`` data parallelism (DDP).

:class:`~tritonsparse.dst.DynamicSparsity` calls into this module when a process group
with more than one rank is initialised. The rules:

* **One rank decides, with the single-process rules.** Rank 0 runs
  ``DynamicSparsity._update_layer``, the same code as one process (exact salient set,
  ``tf32`` setting, NaN/inf check), on the global gradient; every other rank receives
  the result (values, column indices, active rows, fan-in, the per-element optimizer state
  and gradient of the moved parameter, and for SET the sparsifier's RNG state). The
  pattern is therefore identical on every rank by construction: floating-point noise,
  autotuned tile order or a different reduction order cannot split ranks. A skipped
  update (NaN or inf on any rank) raises ``NonFiniteError`` on every rank, so
  ``skipped_updates`` and the warning agree; ``state_dict`` gathers every rank's
  ``grad_accumulation_n`` captures, so it is the same on every rank.
* **Regrowth sees the global gradient.** Scores come from the DDP-averaged gradient
  ``G = (1/world) Σ_r G_rᵀ X_r``, the gradient a single process would get on the
  concatenated batch, and never from one rank's micro-batch. Per layer, with
  ``N = Σ_r B_r`` captured rows, the cheaper of two exchanges is used:

  - ``"gather"`` when ``N·(in + out) < in·out``: rank 0 gathers every rank's captured
    ``(x, grad_output)`` and runs :func:`tritonsparse.gradient_topk` on the
    concatenation (``(N - B_0)·(in + out)`` elements move);
  - ``"reduce"`` otherwise: each rank forms its partial product ``G_rᵀ X_r`` one chunk
    of rows at a time and the chunks are summed onto rank 0, which keeps only each
    row's top-k; no rank ever holds the dense ``out × in`` gradient at once
    (``(world - 1)·rows·in`` fp32 elements move per candidate list SRigL asks for: all
    ``out`` rows for the first list, only the rows that need a longer one while the
    exact layer-wide salient set is found).

  Both rank the same gradient; they differ only by rounding (the reduce path sums fp32
  partial products per rank, in TF32 on a GPU only with ``tf32=True``; the gather path
  runs ``gradient_topk`` as one process does).

* DDP must not broadcast the pattern buffers (``indices`` is int16, which gloo cannot
  send, and a broadcast bypasses the layer's views): call :func:`prepare_ddp` (or
  :func:`wrap_ddp`) before wrapping.

Not supported (a clear error, never silent divergence): FSDP / ZeRO-sharded parameters
and tensor parallelism (DTensor parameters).
"""
from __future__ import annotations

import hashlib
import os

import torch
import torch.distributed as dist
from torch import nn

from .._triton import cuda_matmul_tf32
from ..nn.condensed_linear import CondensedLinear
from .masked import _Masked
from .sparsify import sparse_layers
from .updates import NonFiniteError, gradient_candidates

COMM_PATHS = ("auto", "gather", "reduce")
_PATTERN_BUFFERS = ("indices", "active_mask", "fan_in_buffer")
_CHUNK_ELEMENTS = 1 << 24  # fp32 elements of one reduced row chunk (64 MiB)


# -- process group and model checks ------------------------------------------------------
def world_size() -> int:
    """Ranks of the default process group (1 when ``torch.distributed`` is not initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the default group (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _ddp_class():
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (``model`` itself otherwise)."""
    return model.module if dist.is_available() and isinstance(model, _ddp_class()) else model


def check_supported(model: nn.Module, optimizer=None):
    """Raise ``NotImplementedError`` for the parallel schemes dynamic sparsity does not
    support yet: FSDP (1 or 2) and ZeRO-sharded parameters or optimizer state, and
    tensor parallelism (DTensor parameters). A no-op without an initialised process
    group (none of them can exist then)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    from torch.distributed.fsdp import FullyShardedDataParallel

    fsdp2 = getattr(torch.distributed.fsdp, "FSDPModule", ())
    for name, m in model.named_modules():
        if isinstance(m, FullyShardedDataParallel) or (fsdp2 and isinstance(m, fsdp2)):
            raise NotImplementedError(
                f"model: {f'module {name!r}' if name else 'the model'} is FSDP-sharded; dynamic sparsity supports DDP (replicated "
                "parameters) only, not FSDP / ZeRO-3 sharding")
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - older torch
        DTensor = ()
    for name, p in model.named_parameters():
        if DTensor and isinstance(p, DTensor):
            raise NotImplementedError(
                f"model: parameter {name!r} is a DTensor (tensor parallelism or FSDP2); dynamic sparsity "
                "supports DDP (replicated parameters) only")
    from torch.distributed.optim import ZeroRedundancyOptimizer

    if isinstance(optimizer, ZeroRedundancyOptimizer):
        raise NotImplementedError("optimizer: ZeroRedundancyOptimizer shards the optimizer state across ranks; "
                                  "dynamic sparsity moves per-weight state and needs a replicated optimizer "
                                  "(e.g. torch.optim.SGD / AdamW under DDP)")


def _pattern_buffer_names(model: nn.Module) -> list:
    names = []
    for name, m in sparse_layers(model).items():
        own = ("mask",) if isinstance(m, _Masked) else _PATTERN_BUFFERS
        names += [f"{name}.{b}" if name else b for b in own]
    return names


@torch.no_grad()
def prepare_ddp(model: nn.Module) -> nn.Module:
    """Make ``model`` (not yet wrapped) ready for ``DistributedDataParallel``.

    Tells DDP to leave the sparse layers' pattern buffers alone (``indices``,
    ``active_mask``, ``fan_in_buffer``; ``mask`` of masked layers): DDP would broadcast
    them at every forward, which fails on gloo for int16 and bypasses the layer's views.
    Their consistency is kept by construction instead: when a process group is
    initialised, rank 0's patterns and values are broadcast here once, and later updates
    are decided on rank 0 and broadcast by :class:`~tritonsparse.dst.DynamicSparsity`.
    Returns ``model``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if dist.is_available() and isinstance(model, _ddp_class()):
        raise ValueError("model is already wrapped in DistributedDataParallel: call prepare_ddp(model) before "
                         "wrapping (or construct DDP with broadcast_buffers=False)")
    names = _pattern_buffer_names(model)
    old = list(getattr(model, "_ddp_params_and_buffers_to_ignore", []))
    _ddp_class()._set_params_and_buffers_to_ignore_for_model(model, old + [n for n in names if n not in old])
    if world_size() > 1:
        sync_patterns(model)
    return model


def wrap_ddp(model: nn.Module, **ddp_kwargs) -> nn.Module:
    """``DistributedDataParallel(prepare_ddp(model), **ddp_kwargs)``."""
    return _ddp_class()(prepare_ddp(model), **ddp_kwargs)


def _check_ddp_wrapper(ddp):
    if not getattr(ddp, "broadcast_buffers", False):
        return
    missing = [n for n in _pattern_buffer_names(ddp.module) if n not in ddp.parameters_to_ignore]
    if missing:
        raise ValueError(f"model: DistributedDataParallel broadcasts the pattern buffer {missing[0]!r} at every "
                         "forward (int16 indices fail on gloo; the layer's views would not follow). Call "
                         "tritonsparse.dst.distributed.prepare_ddp(model) before wrapping, use wrap_ddp(model), "
                         "or pass broadcast_buffers=False")


# -- communication helpers -------------------------------------------------------------
def _comm_device(like: torch.device) -> torch.device:
    if dist.get_backend() == "nccl":
        return like if like.type == "cuda" else torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _bcast(t: torch.Tensor, wire_dtype=None) -> torch.Tensor:
    """Broadcast ``t`` from rank 0 (returned on ``t``'s device and dtype; ``t`` itself is
    left as is)."""
    dev, wire = _comm_device(t.device), wire_dtype or t.dtype
    if rank() == 0:
        buf = t.detach().to(dev, wire).contiguous()
    else:  # a fresh buffer: the result must never alias ``t``
        buf = torch.empty(t.shape, dtype=wire, device=dev)
    dist.broadcast(buf, 0)
    return buf.to(t.device, t.dtype)


def _bcast_object(obj):
    box = [obj]
    dist.broadcast_object_list(box, 0)
    return box[0]


def _per_element_state(optimizer, param) -> dict:
    if optimizer is None or param not in optimizer.state:
        return {}
    return {k: v for k, v in optimizer.state[param].items() if torch.is_tensor(v) and v.shape == param.shape}


def _bcast_param_state(optimizer, param, lead: bool):
    """Rank 0's per-element optimizer state and gradient of ``param`` onto every rank."""
    state = _per_element_state(optimizer, param)
    keys = _bcast_object((sorted(state), param.grad is not None) if lead else None)
    names, has_grad = keys
    for k in names:
        ref = state.get(k, torch.zeros_like(param))
        got = _bcast(ref)
        if not lead:
            optimizer.state[param][k] = got if k not in state else state[k].copy_(got)
    if has_grad:
        got = _bcast(param.grad if param.grad is not None else torch.zeros_like(param))
        if not lead:
            param.grad = got if param.grad is None else param.grad.copy_(got)
    elif not lead:
        param.grad = None


@torch.no_grad()
def _bcast_condensed(m: CondensedLinear):
    """Rank 0's pattern and values of a condensed layer onto every rank (via set_pattern)."""
    shape = _bcast(torch.tensor([m.n_active, m.fan_in], dtype=torch.int64))
    values = _bcast(m.values)
    indices = _bcast(m.indices, torch.int32)
    active = _bcast(m.active_mask, torch.uint8).bool()
    if rank() != 0:
        n, k = (int(v) for v in shape)
        m.set_pattern(values[: n * k].view(n, k), indices[: n * k].view(n, k),
                      torch.nonzero(active).flatten())


@torch.no_grad()
def _bcast_masked(m):
    w = _bcast(m.weight)
    mask = _bcast(m.mask, torch.uint8)
    if rank() != 0:
        m.weight.copy_(w)
        m.mask.copy_(mask.bool())


@torch.no_grad()
def sync_patterns(model: nn.Module):
    """Broadcast rank 0's sparse patterns and values to every rank (collective)."""
    for m in sparse_layers(unwrap(model)).values():
        _bcast_masked(m) if isinstance(m, _Masked) else _bcast_condensed(m)


# -- global regrowth scores --------------------------------------------------------------
def choose_path(total_rows: int, in_features: int, out_features: int) -> str:
    """``"gather"`` when moving the captured rows is cheaper than moving the dense
    gradient, ``total_rows·(in + out) < in·out``; else ``"reduce"``."""
    return "gather" if total_rows * (in_features + out_features) < in_features * out_features else "reduce"


def _partial_rows(x, g, rows, world, tf32):
    """This rank's share of the given ``rows`` (int64) of the averaged gradient, fp32
    on the comm device."""
    dev = _comm_device(x.device)
    with cuda_matmul_tf32(tf32):
        return (g.index_select(1, rows.to(g.device)).to(dev, torch.float32).t()
                @ x.to(dev, torch.float32)).div_(world)


def _row_chunks(n_rows: int, in_f: int):
    chunk = max(1, _CHUNK_ELEMENTS // max(in_f, 1))
    return [(r0, min(n_rows, r0 + chunk)) for r0 in range(0, n_rows, chunk)]


def _reduce_candidates(x, g, out_f, in_f, world, tf32):
    """``candidates(k, exclude, rows=None)`` on rank 0 for the reduce path (the
    contract of :func:`~tritonsparse.dst.updates.gradient_candidates`): each call
    broadcasts ``k`` and the requested rows, and the other ranks (in
    :func:`_serve_reduce`) sum those rows of the gradient onto rank 0 one chunk of rows
    at a time; rank 0 keeps each row's top-k of a chunk before the next arrives."""
    from ..kernels.gradient_topk import _select_torch as select_rows

    dev = _comm_device(x.device)

    def candidates(k, exclude, rows=None):
        sel = torch.arange(out_f, device=dev) if rows is None else rows.to(dev, torch.int64)
        dist.broadcast(torch.tensor([k, -1 if rows is None else sel.numel()], dtype=torch.int64, device=dev), 0)
        if rows is not None:
            dist.broadcast(sel, 0)
        ex = exclude if (rows is None or exclude is None) else exclude[rows]
        scores, cols = [], []
        for r0, r1 in _row_chunks(sel.numel(), in_f):
            part = _partial_rows(x, g, sel[r0:r1], world, tf32)
            dist.reduce(part, 0)
            # gradient_topk's selection rule (NaN and excluded never chosen, ties to the smaller column)
            s, c = select_rows(part, k, ex[r0:r1].to(part.device) if ex is not None else None)
            scores.append(s)
            cols.append(c)
        return torch.cat(scores).to(x.device), torch.cat(cols).to(x.device)

    return candidates


def _end_reduce(device):
    dist.broadcast(torch.tensor([0, -1], dtype=torch.int64, device=_comm_device(device)), 0)


def _serve_reduce(x, g, out_f, in_f, world, tf32):
    """The non-deciding ranks' side of :func:`_reduce_candidates`, until rank 0 says done."""
    dev = _comm_device(x.device)
    while True:
        req = torch.zeros(2, dtype=torch.int64, device=dev)
        dist.broadcast(req, 0)
        k, n_rows = (int(v) for v in req)
        if k == 0:
            return
        if n_rows < 0:
            sel = torch.arange(out_f, device=dev)
        else:
            sel = torch.empty(n_rows, dtype=torch.int64, device=dev)
            dist.broadcast(sel, 0)
        for r0, r1 in _row_chunks(sel.numel(), in_f):
            dist.reduce(_partial_rows(x, g, sel[r0:r1], world, tf32), 0)


def _gather_rows(t: torch.Tensor, sizes: list):
    """Rank 0: the concatenation of every rank's ``t`` (B_r, d); others: None."""
    dev = _comm_device(t.device)
    wire = torch.float32 if (dev.type == "cpu" and t.dtype == torch.bfloat16) else t.dtype
    pad = torch.zeros(max(sizes), t.shape[1], dtype=wire, device=dev)
    pad[: t.shape[0]] = t.to(dev, wire)
    bufs = [torch.empty_like(pad) for _ in sizes] if rank() == 0 else None
    dist.gather(pad, bufs, 0)
    if rank() != 0:
        return None
    return torch.cat([b[:n] for b, n in zip(bufs, sizes)]).to(t.device, t.dtype)


def _comm_path_setting(state) -> str:
    path = state.comm or os.environ.get("TRITONSPARSE_DDP_COMM", "auto")
    if path not in COMM_PATHS:
        raise ValueError(f"comm path must be one of {COMM_PATHS}, got {path!r} (TRITONSPARSE_DDP_COMM)")
    return path


def _finite(*tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


# -- the distributed update --------------------------------------------------------------
class DistributedState:
    """What :class:`~tritonsparse.dst.DynamicSparsity` keeps about the process group,
    and its collective per-layer update.

    Attributes:
        world, rank: of the default process group.
        comm: ``None`` (the rule, or ``TRITONSPARSE_DDP_COMM``), ``"gather"`` or
            ``"reduce"`` to force one exchange (tests compare them).
        check: run :func:`check_consistent` after every update (default: the
            ``TRITONSPARSE_DDP_CHECK=1`` environment variable; the tests set it).
        last_paths: {layer: path} of the last update, for logging.
    """

    def __init__(self, dst):
        # No reference to the DDP wrapper: it must die when its owner drops it, before
        # the process group is destroyed (a DDP reducer that outlives the group until
        # interpreter shutdown can abort the process with gloo)
        self.dst = dst
        self.world, self.rank = world_size(), rank()
        self.comm = None
        self.check = os.environ.get("TRITONSPARSE_DDP_CHECK", "0") == "1"
        self.last_paths = {}

    def update_layer(self, name, m, drop_frac):
        """The collective form of ``DynamicSparsity._update_layer`` (same contract):
        every rank contributes its captured gradient, rank 0 runs ``_update_layer`` on
        the global one, and the outcome reaches every rank: the new pattern, values and
        per-element optimizer state, None (the layer took no part), or NonFiniteError
        raised on every rank (nothing changed), so ``skipped_updates`` and the warning
        are the same everywhere."""
        dst, lead = self.dst, self.rank == 0
        if name == next(iter(dst.layers)):
            self.last_paths = {}
        make_gradient, serve = self._global_gradient(name, m)
        if lead:
            error = None
            try:
                given = {} if make_gradient is None else {"gradient": make_gradient()}
                outcome = ("ok", dst._update_layer(name, m, drop_frac, **given))
            except NonFiniteError as e:
                outcome = ("skip", str(e))
            except Exception as e:  # noqa: BLE001 - release the other ranks, then fail on every rank
                outcome, error = ("error", f"rank 0 failed updating {name!r}: {e!r}"), e
            if serve is not None:
                _end_reduce(m.values.device)
            _bcast_object(outcome)
            if error is not None:
                raise error
        else:
            if serve is not None:
                serve()
            outcome = _bcast_object(None)
        kind, payload = outcome
        if kind == "error":
            raise RuntimeError(f"the mask update failed on rank 0: {payload}")
        if kind == "skip":
            raise NonFiniteError(payload)
        if payload is None:
            return None  # no rank ran this layer in a training forward: nothing changed
        if isinstance(m, _Masked):
            _bcast_masked(m)
            _bcast_param_state(dst.optimizer, m.weight, lead)
        else:
            _bcast_condensed(m)
            _bcast_param_state(dst.optimizer, m.values, lead)
        return payload

    def _global_gradient(self, name, m):
        """Collective. Returns ``(make, serve)``: on rank 0 ``make()`` gives the
        ``gradient`` argument of ``_update_layer`` from every rank's captures (it raises
        NonFiniteError where the single process would; ``make`` is None for SET, which
        needs no gradient); ``serve`` is the other ranks' part of the reduce exchange
        (None on the gather path)."""
        dst = self.dst
        cap = dst._captures.get(name)
        if isinstance(m, _Masked):  # the dense baseline: its dense gradient is all-reduced
            grad = cap.dense_grad if cap is not None else None
            dev = _comm_device(m.weight.device)
            flag = torch.tensor([int(grad is not None)], device=dev)
            dist.all_reduce(flag)
            if int(flag) == 0:
                return (lambda: None), None
            full = (grad if grad is not None else torch.zeros_like(m.weight)).to(dev, torch.float32)
            dist.all_reduce(full)
            full = full.div_(self.world).to(m.weight.device)
            return (lambda: full), None
        if dst.method == "set":
            return None, None  # random regrowth: rank 0's generator (broadcast afterwards), no gradient
        x, g = cap.tensors() if cap is not None else (None, None)
        if x is None:
            x = torch.zeros(0, m.in_features, device=m.values.device, dtype=m.values.dtype)
            g = torch.zeros(0, m.out_features, device=m.values.device, dtype=m.values.dtype)
        # rows captured per rank, and how many ranks captured NaN / inf
        counts = torch.zeros(self.world + 1, dtype=torch.int64, device=_comm_device(x.device))
        counts[self.rank], counts[-1] = x.shape[0], int(not _finite(x, g))
        dist.all_reduce(counts)
        sizes, bad = counts[:-1].tolist(), int(counts[-1])
        if sum(sizes) == 0:
            return (lambda: None), None  # no rank ran this layer in a training forward
        path = _comm_path_setting(self)
        if path == "auto":
            path = choose_path(sum(sizes), m.in_features, m.out_features)
        self.last_paths[name] = path
        tf32, world = dst.tf32, self.world
        if path == "gather":
            xs, gs = _gather_rows(x, sizes), _gather_rows(g, sizes)
            # the concatenated global batch into the single process's code (it checks finiteness)
            return (lambda: gradient_candidates(xs, gs / world, tf32=tf32)), None

        def make():
            if bad:
                raise NonFiniteError(f"the captured layer inputs / output gradients hold NaN or inf (on {bad} rank(s))")
            return _reduce_candidates(x, g, m.out_features, m.in_features, world, tf32)

        return make, (lambda: _serve_reduce(x, g, m.out_features, m.in_features, world, tf32))

    def after_update(self):
        """After every layer: SET's RNG is rank 0's on every rank; the optional check."""
        if self.dst.method == "set":
            self.dst.generator.set_state(_bcast(self.dst.generator.get_state()))
        if self.check:
            check_consistent(self.dst)


def gather_captures(captures: dict) -> list:
    """Every rank's captures (``{layer: {"pairs", "dense_grad"}}``), moved to the CPU,
    in rank order, on every rank (collective; ``[captures]`` in a single process)."""
    cpu = {n: {"pairs": [(x.cpu(), g.cpu()) for x, g in c["pairs"]],
               "dense_grad": c["dense_grad"].cpu() if c["dense_grad"] is not None else None}
           for n, c in captures.items()}
    if world_size() <= 1:
        return [cpu]
    every = [None] * world_size()
    dist.all_gather_object(every, cpu)
    return every


def captures_of_this_rank(state: dict, ds) -> dict:
    """The captures in a :meth:`DynamicSparsity.state_dict` that belong to this process;
    ValueError if the state holds the captures of an unfinished window made by another
    number of processes (they cannot be split or merged exactly)."""
    world = ds.world if ds is not None else 1
    by_rank = state.get("captures_by_rank")
    if by_rank is None:  # saved by a single process
        caps = state.get("captures") or {}
        if caps and world > 1:
            raise ValueError(f"state: it holds the captures of an unfinished grad_accumulation_n window made by 1 "
                             f"process; {world} processes cannot resume it exactly (resume with 1 process)")
        return caps
    if not any(by_rank):
        return {}
    if len(by_rank) != world:
        raise ValueError(f"state: it holds the captures of an unfinished grad_accumulation_n window made by "
                         f"{len(by_rank)} processes; {world} cannot resume it exactly (use {len(by_rank)})")
    return by_rank[ds.rank if ds is not None else 0]


def setup(dst, model: nn.Module, optimizer) -> DistributedState | None:
    """Called by :class:`~tritonsparse.dst.DynamicSparsity`: rejects unsupported
    parallelism, checks a DDP wrapper, and (with >1 rank) broadcasts rank 0's patterns,
    values, per-element optimizer state and RNG state.
    Returns the state the distributed update uses, or None for a single process."""
    inner = unwrap(model)
    check_supported(inner, optimizer)
    ddp = model if inner is not model else None
    if ddp is not None:
        _check_ddp_wrapper(ddp)
    if world_size() <= 1:
        return None
    sync_patterns(inner)
    dst.generator.set_state(_bcast(dst.generator.get_state()))  # SET's RNG: rank 0's on every rank
    for m in dst.layers.values():
        _bcast_param_state(optimizer, m.weight if isinstance(m, _Masked) else m.values, rank() == 0)
    return DistributedState(dst)


# -- consistency check -----------------------------------------------------------------
def _digest(*tensors_or_bytes) -> str:
    h = hashlib.blake2b(digest_size=8)
    for t in tensors_or_bytes:
        if torch.is_tensor(t):
            t = t.detach().to("cpu").contiguous()
            h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
            t = t.view(torch.uint8) if t.dtype != torch.bool else t.to(torch.uint8)
            h.update(t.numpy().tobytes())
        else:
            h.update(repr(t).encode())
    return h.hexdigest()


def pattern_hashes(dst, values: bool = True) -> dict:
    """{layer name: hash of its pattern (and values)}, plus ``"<state>"``: the hash of
    the sparsifier's step, ``skipped_updates`` and RNG state. Local; no communication."""
    out = {}
    for name, m in dst.layers.items():
        if isinstance(m, _Masked):
            parts = [m.mask] + ([m.weight] if values else [])
        else:
            parts = [m.fan_in, m.active_rows, m.weight_indices] + ([m.weight_values] if values else [])
        out[name] = _digest(*parts)
    out["<state>"] = _digest(dst.step_count, dst.skipped_updates, dst.generator.get_state())
    return out


def check_consistent(dst, values: bool = True) -> str:
    """Compare the patterns (and values) of every sparse layer across ranks; raise
    ``RuntimeError`` naming the first layer and the ranks that differ. Returns the
    combined hash (also in a single process). Collective: call it on every rank.

    Cost: one blake2b pass over the layers' condensed arrays (O(nnz), copied to the CPU)
    and an all-gather of 8 bytes per layer."""
    mine = pattern_hashes(dst, values)
    combined = _digest(*sorted(mine.items()))
    if world_size() <= 1:
        return combined
    every = [None] * world_size()
    dist.all_gather_object(every, mine)
    for name in mine:
        seen = [h.get(name) for h in every]
        if len(set(seen)) > 1:
            bad = [r for r, h in enumerate(seen) if h != seen[0]]
            what = "sparsifier state (step / skipped updates / RNG)" if name == "<state>" else f"layer {name!r}"
            raise RuntimeError(f"dynamic sparsity diverged across ranks: {what} differs on rank(s) {bad} from rank 0 "
                               f"at step {dst.step_count}")
    return combined


__all__ = ["COMM_PATHS", "DistributedState", "check_consistent", "check_supported", "choose_path", "pattern_hashes",
           "prepare_ddp", "rank", "setup", "sync_patterns", "unwrap", "world_size", "wrap_ddp"]
