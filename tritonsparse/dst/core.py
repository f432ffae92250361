"""``DynamicSparsity``: the sparsifier that updates masks after ``optimizer.step()``."""
from __future__ import annotations

import torch
from torch import nn

from ..nn.condensed_linear import CondensedLinear
from .masked import _Masked
from .schedule import UpdateSchedule
from .sparsify import METHODS, _check_method, _matches, sparse_layers
from .groups import group_gradient_candidates, group_update
from .updates import condensed_update, gradient_candidates, masked_update, random_candidates


class _Capture:
    """Records (input, output gradient) pairs of a condensed layer, or the summed dense
    gradient of a masked layer's effective weight, while armed."""

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


class DynamicSparsity:
    """Dynamic sparse training driver: SRigL (with neuron ablation), RigL, SET or static.

    Call ``step()`` after every ``optimizer.step()``. Every ``delta_t`` steps until
    ``t_end · total_steps`` it prunes a cosine-decaying fraction α_t of each sparse
    layer's weights and regrows as many:

    * ``"srigl"`` (condensed layers): saliency-based neuron ablation, new fan-in
      K = B // active neurons, layer-wide magnitude prune then per-neuron cap K, and
      per-neuron regrowth to exactly K by |dL/dW| from :func:`tritonsparse.gradient_topk`
      on the captured layer input and output gradient (no dense gradient).
    * ``"set"`` (condensed layers): the same prune, random regrowth, no ablation.
    * ``"rigl"`` (masked layers): unstructured magnitude prune and |grad| regrowth.
    * ``"static"``: nothing changes; ``step()`` only counts.

    The parameters the optimizer holds never change identity; per-element optimizer
    state (momentum, Adam moments, ...) moves with the weights and is zero for grown
    ones. Inputs and gradients are captured only for the forward/backward of steps that
    end in an update (all micro-batches of that step are used).

    Args:
        model: a model prepared by :func:`sparsify` (or holding sparse layers).
        optimizer: any ``torch.optim`` optimizer over the model's parameters.
        method: ``"srigl" | "rigl" | "set" | "static"``.
        total_steps: total optimizer steps of the run (T).
        delta_t: steps between mask updates (ΔT).
        alpha: initial drop fraction α.
        t_end: fraction of training after which masks are frozen.
        gamma_sal: SRigL ablation threshold γ_sal (0 disables ablation).
        no_ablation: module-name prefixes never ablated (e.g. the classifier).
        seed: seed of SET's random regrowth.
    """

    def __init__(self, model: nn.Module, optimizer, method: str = "srigl", total_steps: int = 1000,
                 delta_t: int = 100, alpha: float = 0.3, t_end: float = 0.75, gamma_sal: float = 0.3,
                 no_ablation=(), seed: int = 0):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        _check_method(method)
        if not 0.0 <= gamma_sal <= 1.0:
            raise ValueError(f"gamma_sal must be in [0, 1], got {gamma_sal!r}")
        self.model, self.optimizer, self.method = model, optimizer, method
        self.schedule = UpdateSchedule(total_steps, delta_t, t_end, alpha)
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
        self.last_update = {}
        self._captures = {}
        self._arm()

    # -- capture -----------------------------------------------------------------------
    @property
    def needs_gradients(self) -> bool:
        return self.method in ("srigl", "rigl")

    def _arm(self):
        """Install the capture hooks if the next step ends in an update, else remove them."""
        armed = self.needs_gradients and self.schedule.is_update(self.step_count + 1)
        for name, m in self.layers.items():
            if armed:
                cap = self._captures.get(name) or _Capture(m)
                cap.clear()
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
        self._arm()

    @torch.no_grad()
    def _update(self, drop_frac: float):
        self.last_update = {}
        for name, m in self.layers.items():
            cap = self._captures.get(name)
            if isinstance(m, _Masked):
                grad = cap.dense_grad if cap is not None else None
                if self.method == "rigl" and grad is None:
                    continue  # the layer took no part in this step's training forward
                self.last_update[name] = masked_update(m, self.optimizer, drop_frac, grad, self.generator)
                continue
            groups = getattr(m, "group_size", 1)  # > 1: update over group columns (dst/groups.py)
            if self.method == "set":
                cands = random_candidates(m.out_features // groups, m.in_features, m.values.device, self.generator)
                gamma = None
            else:
                x, g = cap.tensors() if cap is not None else (None, None)
                if x is None:
                    continue
                cands = gradient_candidates(x, g) if groups == 1 else group_gradient_candidates(x, g, groups)
                ablate = self.gamma_sal > 0 and not _matches(name, self.no_ablation)
                gamma = self.gamma_sal if ablate else None
            update = condensed_update if groups == 1 else group_update
            self.last_update[name] = update(m, self.optimizer, drop_frac, cands, gamma)

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
        """The sparsifier's own state (step, RNG, settings). The masks and values live in
        the model's state_dict, the moved optimizer state in the optimizer's."""
        s = self.schedule
        return {"step": self.step_count, "rng_state": self.generator.get_state(), "method": self.method,
                "total_steps": s.total_steps, "delta_t": s.delta_t, "alpha": s.alpha, "t_end": s.t_end,
                "gamma_sal": self.gamma_sal, "no_ablation": list(self.no_ablation)}

    def load_state_dict(self, state: dict):
        """Restore :meth:`state_dict` (load the model and optimizer state too)."""
        if state.get("method") != self.method:
            raise ValueError(f"state is for method={state.get('method')!r} but this sparsifier uses {self.method!r}")
        self.step_count = int(state["step"])
        self.generator.set_state(state["rng_state"])
        self.schedule = UpdateSchedule(int(state["total_steps"]), int(state["delta_t"]), float(state["t_end"]),
                                       float(state["alpha"]))
        self.gamma_sal = float(state["gamma_sal"])
        self.no_ablation = tuple(state["no_ablation"])
        self._arm()

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
