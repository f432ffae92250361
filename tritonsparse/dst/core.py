"""``DynamicSparsity``: the sparsifier that updates masks after ``optimizer.step()``."""
from __future__ import annotations

import warnings

import torch
from torch import nn

from ..nn.condensed_linear import CondensedLinear
from . import distributed as _distributed
from .masked import _Masked
from .schedule import UpdateSchedule
from .sparsify import METHODS, _check_method, _matches, sparse_layers
from .groups import group_gradient_candidates, group_update
from .updates import NonFiniteError, condensed_update, gradient_candidates, masked_update, random_candidates


_LOCAL = object()  # DynamicSparsity._update_layer: the gradient from this process's captures


class _Capture:
    """Records (input, output gradient) pairs of a condensed layer, or the summed dense
    gradient of a masked layer's effective weight, while armed (over the last
    ``grad_accumulation_n`` steps before an update: the pairs of all of them are
    concatenated along the batch, which sums their gradients exactly)."""

    def __init__(self, layer):
        self.layer = layer
        self.pairs = []
        self.dense_grad = None

    def __call__(self, *args):
        if not self.layer.training:
            return
        if len(args) == 1:  # masked layer: the effective weight
            args[0].register_hook(self._add_dense)
            return
        x, y = args
        x2 = x.detach().reshape(-1, x.shape[-1])
        y.register_hook(lambda g, x2=x2: self.pairs.append((x2, g.detach().reshape(-1, g.shape[-1]))))

    def _add_dense(self, g):
        g = g.detach()
        self.dense_grad = g.clone() if self.dense_grad is None else self.dense_grad + g

    def tensors(self):
        if not self.pairs:
            return None, None
        x = torch.cat([p[0] for p in self.pairs])
        g = torch.cat([p[1] for p in self.pairs]).to(x.dtype)
        return x, g

    def clear(self):
        self.pairs, self.dense_grad = [], None

    def state(self) -> dict:
        return {"pairs": list(self.pairs), "dense_grad": self.dense_grad}

    def load(self, state: dict):
        dev = (self.layer.weight if isinstance(self.layer, _Masked) else self.layer.values).device
        self.pairs = [(x.to(dev), g.to(dev)) for x, g in state.get("pairs", [])]
        dense = state.get("dense_grad")
        self.dense_grad = dense.to(dev) if dense is not None else None


class DynamicSparsity:
    """Dynamic sparse training driver: SRigL (with neuron ablation), RigL, SET or static.

    Call ``step()`` after every ``optimizer.step()``. Every ``delta_t`` steps until
    ``t_end · total_steps`` it prunes a cosine-decaying fraction α_t of each sparse
    layer's weights and regrows as many:

    * ``"srigl"`` (condensed layers): the update of the SRigL authors' code (see
      :func:`~tritonsparse.dst.condensed_update`): saliency-based neuron ablation
      (threshold ``max(1, int(γ_sal · K0))`` on the initial fan-in K0, salient = top
      magnitudes or layer-wide top |dL/dW|, at least budget // in + 1 neurons kept),
      new fan-in K = B // active neurons, layer-wide magnitude prune over the surviving
      neurons then per-neuron cap K, and per-neuron regrowth to exactly K by |dL/dW|
      from :func:`tritonsparse.gradient_topk` on the captured layer input and output
      gradient (no dense gradient; exact fp32 ranking by default).
    * ``"set"`` (condensed layers): the same prune, random regrowth, no ablation.
    * ``"rigl"`` (masked layers): unstructured magnitude prune and |grad| regrowth.
    * ``"static"``: nothing changes; ``step()`` only counts.

    The parameters the optimizer holds never change identity; per-element optimizer
    state (momentum, Adam moments, ...) moves with the weights and is zero for grown
    ones. Inputs and gradients are captured only for the forward/backward of steps that
    end in an update (all micro-batches of that step are used), or of the last
    ``grad_accumulation_n`` steps before it.

    If the captured gradients (or the dense gradient of a masked layer), or the
    weights, of a layer hold NaN or inf at an update step, that layer's update is
    skipped and its pattern kept; one ``RuntimeWarning`` per such step names the step
    and the layers, and ``skipped_updates`` counts the skipped layer-updates.

    Args:
        model: a model prepared by :func:`sparsify` (or holding sparse layers), or the
            ``DistributedDataParallel`` wrapping it. Under ``torch.distributed`` updates
            use the global gradient, rank 0 decides and every rank receives the same
            pattern (see :mod:`tritonsparse.dst.distributed`; ``check_consistent()``).
        optimizer: any ``torch.optim`` optimizer over the model's parameters.
        method: ``"srigl" | "rigl" | "set" | "static"``.
        total_steps: total optimizer steps of the run (T).
        delta_t: steps between mask updates (ΔT).
        alpha: initial drop fraction α.
        t_end: fraction of training after which masks are frozen.
        gamma_sal: SRigL ablation threshold γ_sal (0 disables ablation).
        no_ablation: module-name prefixes never ablated (e.g. the classifier).
        seed: seed of SET's random regrowth.
        grad_accumulation_n: the regrowth / saliency gradient of an update is the sum
            over the last n steps before it (the reference's ``grad_accumulation_n``,
            which averages: same ranking), 1 <= n <= delta_t. Memory: the inputs and
            output gradients of n steps are held, n · batch · (in + out) elements per
            condensed layer (a masked layer holds one dense out x in gradient).
        tf32: let the GPU kernel of :func:`tritonsparse.gradient_topk` rank regrowth
            candidates in TF32 (~1e-3 relative error, so near-ties may rank differently
            from the CPU); the default ranks in exact fp32, cheap since updates are rare.
    """

    def __init__(self, model: nn.Module, optimizer, method: str = "srigl", total_steps: int = 1000,
                 delta_t: int = 100, alpha: float = 0.3, t_end: float = 0.75, gamma_sal: float = 0.3,
                 no_ablation=(), seed: int = 0, grad_accumulation_n: int = 1, tf32: bool = False):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        _check_method(method)
        if not 0.0 <= gamma_sal <= 1.0:
            raise ValueError(f"gamma_sal must be in [0, 1], got {gamma_sal!r}")
        wrapper, model = model, _distributed.unwrap(model)  # a DDP wrapper: work on the module inside
        self.model, self.optimizer, self.method = model, optimizer, method
        self.schedule = UpdateSchedule(total_steps, delta_t, t_end, alpha)
        n = grad_accumulation_n
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= delta_t:
            raise ValueError(f"grad_accumulation_n must be an int in [1, delta_t={delta_t}], got {n!r}")
        if not isinstance(tf32, bool):
            raise TypeError(f"tf32 must be a bool, got {type(tf32).__name__}")
        self.grad_accumulation_n, self.tf32 = n, tf32
        self.gamma_sal = float(gamma_sal)
        self.no_ablation = (no_ablation,) if isinstance(no_ablation, str) else tuple(no_ablation)
        self.layers = sparse_layers(model)
        if not self.layers:
            raise ValueError("model has no sparse layer: call tritonsparse.dst.sparsify(model, ...) first")
        want = _Masked if method == "rigl" else CondensedLinear
        wrong = [n for n, m in self.layers.items() if not isinstance(m, want)]
        if wrong and method != "static":
            kind = "masked (sparsify(method='rigl'))" if method == "rigl" else "condensed (sparsify(method=...))"
            raise ValueError(f"method={method!r} needs {kind} layers, but {wrong[0]!r} is a {type(self.layers[wrong[0]]).__name__}")
        if optimizer is not None:
            held = {id(p) for g in optimizer.param_groups for p in g["params"]}
            for n, m in self.layers.items():
                p = m.weight if isinstance(m, _Masked) else m.values
                if id(p) not in held:
                    raise ValueError(f"the optimizer does not hold the weights of {n!r}: build it after sparsify()")
        self.generator = torch.Generator().manual_seed(seed)
        self.step_count = 0
        self.skipped_updates = 0
        self.last_update = {}
        self.last_skipped = []
        self._captures = {}
        self.distributed = _distributed.setup(self, wrapper, optimizer)  # None in a single process
        self._arm()

    # -- capture -----------------------------------------------------------------------
    @property
    def needs_gradients(self) -> bool:
        return self.method in ("srigl", "rigl")

    def _captures_step(self, step: int) -> bool:
        """True if optimizer step ``step`` is one of the last ``grad_accumulation_n``
        steps before an update."""
        if not self.needs_gradients:
            return False
        d = self.schedule.delta_t
        upd = -(-step // d) * d
        return upd - step < self.grad_accumulation_n and self.schedule.is_update(upd)

    def _arm(self):
        """Install the capture hooks if the next step feeds an update (keeping what the
        earlier steps of the same window captured), else remove them."""
        armed = self._captures_step(self.step_count + 1)
        for name, m in self.layers.items():
            if armed:
                cap = self._captures.get(name) or _Capture(m)
                self._captures[name] = cap
                m.capture_hook = cap
            else:
                m.capture_hook = None
        if not armed:
            self._captures = {}

    # -- the update ----------------------------------------------------------------------
    def step(self):
        """Count one optimizer step; update the masks if the schedule says so."""
        self.step_count += 1
        if self.method != "static" and self.schedule.is_update(self.step_count):
            self._update(self.schedule.drop_fraction(self.step_count))
            self._captures = {}
        self._arm()

    @torch.no_grad()
    def _update(self, drop_frac: float):
        self.last_update, self.last_skipped = {}, []
        # under torch.distributed every rank takes part, rank 0 runs _update_layer on the global gradient
        update_layer = self._update_layer if self.distributed is None else self.distributed.update_layer
        for name, m in self.layers.items():
            try:
                info = update_layer(name, m, drop_frac)
            except NonFiniteError:
                self.last_skipped.append(name)
                continue
            if info is not None:
                self.last_update[name] = info
        if self.last_skipped:
            self.skipped_updates += len(self.last_skipped)
            warnings.warn(f"DynamicSparsity: step {self.step_count}: NaN/inf gradients or weights in "
                          f"{', '.join(self.last_skipped)}; their mask update was skipped and the pattern kept "
                          f"(skipped_updates={self.skipped_updates})", RuntimeWarning, stacklevel=3)
        if self.distributed is not None:
            self.distributed.after_update()

    def _update_layer(self, name, m, drop_frac, gradient=_LOCAL):
        """One layer's update; None if it took no part in the captured steps. Raises
        NonFiniteError, with the layer unchanged, on NaN/inf gradients or weights.

        ``gradient`` is the layer's gradient, by default from this process's captures:
        for a masked layer its dense gradient (or None), for a condensed one a
        ``candidates`` function (or None). Under ``torch.distributed`` rank 0 passes the
        global one (:mod:`tritonsparse.dst.distributed`), so both run these same rules."""
        cap = self._captures.get(name)
        if isinstance(m, _Masked):
            grad = (cap.dense_grad if cap is not None else None) if gradient is _LOCAL else gradient
            if self.method == "rigl" and grad is None:
                return None  # the layer took no part in this step's training forward
            return masked_update(m, self.optimizer, drop_frac, grad, self.generator)
        groups = getattr(m, "group_size", 1)  # > 1: the update runs over group columns (dst/groups.py)
        if self.method == "set":
            cands = random_candidates(m.out_features // groups, m.in_features, m.values.device, self.generator)
            gamma = None
        else:
            if gradient is _LOCAL:
                x, g = cap.tensors() if cap is not None else (None, None)
                if x is None:
                    gradient = None
                elif groups == 1:
                    gradient = gradient_candidates(x, g, tf32=self.tf32)
                else:
                    gradient = group_gradient_candidates(x, g, groups, tf32=self.tf32)
            if gradient is None:
                return None
            cands = gradient
            ablate = self.gamma_sal > 0 and not _matches(name, self.no_ablation)
            gamma = self.gamma_sal if ablate else None
        update = condensed_update if groups == 1 else group_update
        return update(m, self.optimizer, drop_frac, cands, gamma)

    def check_consistent(self, values: bool = True) -> str:
        """Under ``torch.distributed``: raise ``RuntimeError`` if any rank's patterns
        (and values), step, ``skipped_updates`` or RNG state differ from rank 0's (a hash per layer is
        compared; collective, call it on every rank). Returns the hash of this state."""
        return _distributed.check_consistent(self, values)

    # -- reporting and checkpoints ---------------------------------------------------------
    def layer_stats(self) -> dict:
        """{layer name: {"density", "active_neurons", "out_features", "fan_in" (None for
        masked layers), "nnz"}}."""
        stats = {}
        for name, m in self.layers.items():
            if isinstance(m, _Masked):
                rows = m.mask.reshape(m.mask.shape[0], -1)
                nnz = int(rows.sum())
                stats[name] = {"density": nnz / rows.numel(), "active_neurons": int(rows.any(1).sum()),
                               "out_features": rows.shape[0], "fan_in": None, "nnz": nnz}
            else:
                nnz = m.n_active * m.fan_in
                stats[name] = {"density": nnz / (m.out_features * m.in_features), "active_neurons": m.n_active,
                               "out_features": m.out_features, "fan_in": m.fan_in, "nnz": nnz}
        return stats

    def state_dict(self) -> dict:
        """The sparsifier's own state (step, RNG, settings, ``skipped_updates``, and what
        was captured so far inside a ``grad_accumulation_n`` window, so a resume there is
        exact). The masks and values live in the model's state_dict, the moved optimizer
        state in the optimizer's.

        Under ``torch.distributed`` this is collective (call it on every rank): each
        rank captured its own micro-batch, so every rank's captures are gathered (on the
        CPU) into ``"captures_by_rank"``, and the returned state is the same on every rank."""
        captures = {n: c.state() for n, c in self._captures.items() if c.pairs or c.dense_grad is not None}
        if self.distributed is not None:
            return dict(self._settings(), world_size=self.distributed.world, captures={},
                        captures_by_rank=_distributed.gather_captures(captures))
        return dict(self._settings(), captures=captures)

    def _settings(self) -> dict:
        s = self.schedule
        return {"step": self.step_count, "rng_state": self.generator.get_state(), "method": self.method,
                "total_steps": s.total_steps, "delta_t": s.delta_t, "alpha": s.alpha, "t_end": s.t_end,
                "gamma_sal": self.gamma_sal, "no_ablation": list(self.no_ablation),
                "grad_accumulation_n": self.grad_accumulation_n, "tf32": self.tf32,
                "skipped_updates": self.skipped_updates}

    def load_state_dict(self, state: dict):
        """Restore :meth:`state_dict` (load the model and optimizer state too). Captures
        of an unfinished ``grad_accumulation_n`` window belong to the ranks that made
        them: such a state loads only into a job with the same number of processes."""
        if state.get("method") != self.method:
            raise ValueError(f"state is for method={state.get('method')!r} but this sparsifier uses {self.method!r}")
        captures = _distributed.captures_of_this_rank(state, self.distributed)
        self.step_count = int(state["step"])
        self.generator.set_state(state["rng_state"])
        self.schedule = UpdateSchedule(int(state["total_steps"]), int(state["delta_t"]), float(state["t_end"]),
                                       float(state["alpha"]))
        self.gamma_sal = float(state["gamma_sal"])
        self.no_ablation = tuple(state["no_ablation"])
        self.grad_accumulation_n = int(state.get("grad_accumulation_n", 1))
        self.tf32 = bool(state.get("tf32", False))
        self.skipped_updates = int(state.get("skipped_updates", 0))
        self._captures = {}
        self._arm()
        for name, cs in captures.items():
            if name in self._captures:
                self._captures[name].load(cs)

    def remove_hooks(self):
        """Detach the capture hooks (e.g. before exporting the model)."""
        for m in self.layers.values():
            m.capture_hook = None
        self._captures = {}

    def __repr__(self):
        s = self.schedule
        return (f"DynamicSparsity(method={self.method!r}, layers={len(self.layers)}, step={self.step_count}, "
                f"total_steps={s.total_steps}, delta_t={s.delta_t}, alpha={s.alpha}, t_end={s.t_end})")


__all__ = ["DynamicSparsity", "METHODS"]
