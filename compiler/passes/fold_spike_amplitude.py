"""fold-spike-amplitude: a neuron whose spikes stand for `amplitude` times their level (an MT neuron passes
on theta times its level, MT-SNN) hands the factor to the layers that read them,

    W (a * q) + b  ==  (a W) q + b

through flattens, so that the machine's spikes stay 0/1 planes and the readers' weights carry the scale
(rounded with them by quantize: exact when the amplitude is a power of two)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import Conv2d, Flatten, Graph, Linear, Membrane, Neuron, Op
from . import Pass, register


@register
@dataclass
class FoldSpikeAmplitude(Pass):
    name = "fold-spike-amplitude"

    def run(self, graph: Graph) -> Graph:
        for n in [o for o in graph.ops if isinstance(o, Neuron) and o.amplitude != 1.0]:
            for layer in self.readers(graph, n, n):
                layer.weight = (layer.weight.astype(np.float64) * n.amplitude).astype(np.float32)
            n.amplitude = 1.0
        return graph.infer_types()

    def readers(self, graph: Graph, neuron: Neuron, value: Op) -> list[Op]:
        if value.name in graph.outputs:
            neuron.fail(f"its spikes stand for {neuron.amplitude} times their level and are a model output: "
                        "read them with a linear layer, which takes the factor into its weights")
        out = []
        for user in graph.users(value.name):
            if isinstance(user, (Conv2d, Linear)):
                out.append(user)
            elif isinstance(user, Flatten):
                out += self.readers(graph, neuron, user)
            elif not isinstance(user, Membrane):
                user.fail(f"reads spikes that stand for {neuron.amplitude} times their level (from {neuron.where()}), "
                          "and only a conv or linear layer can take that factor into its weights")
        return out
