"""fold-neuron-input: a neuron's input gain and constant charge move into the layer that feeds it,

    h = u + gain * (W x + b) + charge  ==  u + (gain W) x + (gain b + charge)

so that the hardware neuron only adds its input (SpikingJelly's decay_input gain 1/tau and its
v_reset/tau charge). Exact in float where gain is a power of two."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import Conv2d, Graph, Linear, Neuron
from . import Pass, register


@register
@dataclass
class FoldNeuronInput(Pass):
    name = "fold-neuron-input"

    def run(self, graph: Graph) -> Graph:
        for n in [o for o in graph.ops if isinstance(o, Neuron)]:
            if n.input_gain == 1.0 and n.charge == 0.0:
                continue
            producer = graph.op(n.inputs[0])
            if not isinstance(producer, (Conv2d, Linear)) or len(graph.users(producer.name)) != 1:
                n.fail("has an input gain or charge but is not fed by a conv or linear layer of its own to fold it into")
            gain = np.float64(n.input_gain)
            bias = producer.bias.astype(np.float64) if producer.bias is not None else np.zeros(producer.weight.shape[0])
            producer.weight = (producer.weight.astype(np.float64) * gain).astype(np.float32)
            producer.bias = (bias * gain + n.charge).astype(np.float32)
            n.input_gain, n.charge = 1.0, 0.0
        return graph.infer_types()
