"""fold-neuron-input: a neuron's input gain and constant charge move into the layer that feeds it,

    h = u + gain * (W x + b) + charge  ==  u + (gain W) x + (gain b + charge)

so that the hardware neuron only adds its input (SpikingJelly's decay_input gain 1/tau and its
v_reset/tau charge). Exact in float where gain is a power of two.

Thresholds per channel (theta_c) fold into that layer too: with u'_c = u_c / theta_c, channel c fires
at 1 for every c, so the layer's channel c is divided by theta_c (a reset to 0 and a start at 0 stay 0;
exact in float where every theta_c is a power of two).

A neuron fed by anything else (a residual add, a pooling, the input) is scaled instead: with u' = u / gain,

    h' = decay u' + x + charge / gain,   spike iff h' cmp theta / gain,   reset to v_reset / gain

fires exactly as it did (a positive scale keeps every comparison), so its threshold, reset and initial
membranes take the 1/gain; what is left is a charge only where v_reset is not 0 (refused), and a
recorded membrane would come out scaled (refused too)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import Conv2d, Graph, Linear, Membrane, Neuron
from . import Pass, register


@register
@dataclass
class FoldNeuronInput(Pass):
    name = "fold-neuron-input"

    def run(self, graph: Graph) -> Graph:
        for n in [o for o in graph.ops if isinstance(o, Neuron)]:
            per_channel = isinstance(n.theta, np.ndarray)
            if n.input_gain == 1.0 and n.charge == 0.0 and not per_channel:
                continue
            producer = graph.op(n.inputs[0])
            if not isinstance(producer, (Conv2d, Linear)) or len(graph.users(producer.name)) != 1:
                if per_channel:
                    n.fail("has a threshold per channel but is not fed by a conv or linear layer of its own to fold it into")
                self.scale(graph, n)
                continue
            gain = np.float64(n.input_gain)
            bias = producer.bias.astype(np.float64) if producer.bias is not None else np.zeros(producer.weight.shape[0])
            weight, bias = producer.weight.astype(np.float64) * gain, bias * gain + n.charge
            if per_channel:
                if n.v_reset != 0.0 or n.v_init != 0.0 or any(isinstance(u, Membrane) for u in graph.users(n.name)):
                    n.fail("has a threshold per channel with a non-zero reset or initial membrane, or a recorded "
                           "membrane: dividing its channels by their thresholds would change those")
                theta = n.theta.astype(np.float64)
                weight = weight / theta.reshape(-1, *[1] * (weight.ndim - 1))
                bias, n.theta = bias / theta, 1.0
            producer.weight, producer.bias = weight.astype(np.float32), bias.astype(np.float32)
            n.input_gain, n.charge = 1.0, 0.0
        return graph.infer_types()

    @staticmethod
    def scale(graph: Graph, n: Neuron) -> None:
        gain = float(n.input_gain)
        if not gain > 0 or n.charge != 0.0 or any(isinstance(u, Membrane) for u in graph.users(n.name)):
            n.fail("has an input gain or charge but is not fed by a conv or linear layer of its own to fold it into "
                   "(a neuron fed otherwise can take a positive gain into its threshold, but not a charge from a "
                   "non-zero v_reset, nor have its membrane recorded)")
        n.theta, n.v_reset, n.v_init, n.input_gain = n.theta / gain, n.v_reset / gain, n.v_init / gain, 1.0
