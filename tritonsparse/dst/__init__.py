"""Dynamic sparse training on condensed layers: SRigL (with neuron ablation), RigL, SET
and static sparsity, sharing one schedule and one density distribution.

    model = sparsify(model, sparsity=0.9, method="srigl", distribution="erk")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    dst = DynamicSparsity(model, optimizer, method="srigl", total_steps=T)
    for batch in data:
        loss(model(batch)).backward(); optimizer.step(); optimizer.zero_grad(); dst.step()
"""
from .core import DynamicSparsity
from .distribution import erk_densities, layer_densities, uniform_densities
from .masked import MaskedConv2d, MaskedLinear
from .schedule import UpdateSchedule, drop_fraction
from .sparsify import METHODS, sparse_layers, sparsify
from .updates import NonFiniteError, condensed_update, masked_update, move_optimizer_state, salient_gradient_positions

__all__ = ["DynamicSparsity", "METHODS", "MaskedConv2d", "MaskedLinear", "NonFiniteError", "UpdateSchedule",
           "condensed_update", "drop_fraction", "erk_densities", "layer_densities", "masked_update",
           "move_optimizer_state", "salient_gradient_positions", "sparse_layers", "sparsify", "uniform_densities"]
