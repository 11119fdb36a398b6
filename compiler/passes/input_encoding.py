"""input-encoding: what the model's inputs carry.

* `fixed` (the default): multi-bit values, which quantize turns into `fix{input_bits}.{input_frac}`
  (the runtime rounds and saturates them);
* `spikes`: binary events (DVS-style [T, N, 2, H, W] 0/1 frames, rate-coded spike trains). The input's
  dtype becomes `spike`, so it is stored bit-packed like every spike tensor (docs/memory.md) and the
  layers that read it are spike-driven (sconv: adds, no multiplies), which the counts, the cost model
  and the simulator then all see. The runtime and the quantized reference refuse an input that is not
  all 0/1 (ttc.isa.io.spike_input) rather than threshold it.

The pass runs first, so the counts of the model (taken after fold-batchnorm) see spike inputs as such.
A spike input may be read by weighted layers (conv, linear, tensor-train conv) and poolings, through
the ops that only move it (flatten, repeat, time slices): a neuron or residual add on raw spikes has
no quantized meaning here, and saying so beats the type error such a graph would give later.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import SPIKE, AvgPool, Conv2d, Flatten, Graph, Linear, MaxPool, Op, Repeat, TimeSlice, TTConv2d
from . import OptionError, Pass, register, user_option

ENCODINGS = ("fixed", "spikes")
PASS_THROUGH = (Flatten, Repeat, TimeSlice, MaxPool)  # a max of spikes is a spike (an OR)
SPIKE_READERS = (Conv2d, Linear, TTConv2d, AvgPool)


@register
@dataclass
class InputEncoding(Pass):
    name = "input-encoding"
    encoding: str = user_option("fixed", "input_encoding", "what the model's inputs carry: fixed-point values, or "
                                "0/1 spikes (events), stored bit-packed and read with adds", choices=ENCODINGS)

    def run(self, graph: Graph) -> Graph:
        if self.encoding not in ENCODINGS:
            raise OptionError(f"unknown input encoding {self.encoding!r} (one of {', '.join(ENCODINGS)})")
        if self.encoding == "spikes":
            for op in graph.inputs:
                if op.declared.dtype.kind != "f32":
                    op.fail(f"is already {op.declared.dtype}: spike encoding applies to a float model's input")
                op.declared = op.declared.with_(dtype=SPIKE)
                self.check_readers(graph, op)
        return graph.infer_types()

    def check_readers(self, graph: Graph, value: Op) -> None:
        for user in graph.users(value.name):
            if isinstance(user, PASS_THROUGH):
                self.check_readers(graph, user)
            elif not isinstance(user, SPIKE_READERS):
                user.fail("reads the model input, declared as spikes (input_encoding = spikes): only conv, linear "
                          "and pooling layers read raw spikes; compile with the fixed input encoding instead")
