"""train-tape: make a quantized graph's forward record what its training step's backward reads
(docs/training.md). Every trained neuron gets its surrogate's band (in state units, as nrn holds it) and
a `tape` value, its active bits at every step, which the forward stores beside its spikes."""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import Graph
from ..train import TrainOptions, add_tapes
from . import Pass, register


@register
@dataclass
class TrainTape(Pass):
    name = "train-tape"
    band: float = TrainOptions.band  # the rectangular surrogate's half-width, a fraction of the threshold

    def run(self, graph: Graph) -> Graph:
        return add_tapes(graph, self.band)
