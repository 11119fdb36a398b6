"""tt-cores: a training step's tensor-train layers as their four cores (docs/training.md). Each float STT
layer becomes the convolutions its cores are, one after another, before quantize:

    G1 1x1 Cin -> R1,  G2 (3,1) R1 -> R2 (padding (1,0)),  G3 (1,3) R2 -> R3 (padding (0,1)),  G4 1x1 R3 -> Cout

a PTT layer G1, then G2 and G3 both on G1's result, their mean (an add that halves), then G4; and an HTT
layer (PTT for t < T/2, G4 on G1's result after) G1 on every step, PTT's mean on its first T/2 steps (time
slices), that mean and G1's later steps concatenated in time, then one G4 on all of it:

    m = time_concat((G2 u[:T/2] + G3 u[:T/2]) / 2, u[T/2:]),  y = b + G4 * m

so that G4 is one layer with one weight gradient (HTT's two halves share it) and G1 is too.

so that every core is a trained layer of its own (its gradient is its conv's weight gradient) and the
quantizer treats each as a conv: 16-bit weights, and a rescale before a core whose multi-bit input could
overflow its sums (inference keeps the cores' products exact instead, which leaves them few bits).
Each core is named for its module in the source model (TT-SNN's first_layer .. fourth_layer), so that the
trained state dict loads back into it."""
from __future__ import annotations

from dataclasses import dataclass

from ..ir import Add, Conv2d, Graph, TimeConcat, TimeSlice, TTConv2d
from . import Pass, register

#: (core, padding, the source module's attribute)
CORES = (("g1", (0, 0), "first_layer"), ("g2", (1, 0), "second_layer"), ("g3", (0, 1), "third_layer"),
         ("g4", (0, 0), "fourth_layer"))


@register
@dataclass
class TTCores(Pass):
    name = "tt-cores"

    def run(self, graph: Graph) -> Graph:
        for tt in [op for op in graph.ops if isinstance(op, TTConv2d)]:
            if tt.fracs is not None:
                tt.fail("is already quantized (tt-cores runs before quantize)")
            ops = []

            def core(k: int, x: str, last: bool = False) -> str:
                name, padding, module = CORES[k]
                op = Conv2d(name=tt.name if last else graph.fresh(f"{tt.name}.{name}"), inputs=(x,),
                            path=f"{tt.path}.{module}" if tt.path else module, weight=getattr(tt, name),
                            bias=tt.bias if last else None, padding=padding)
                return new(op)

            def new(op):
                ops.append(op)
                return op.name

            def mean(v: str) -> str:  # ptt's middle: (G2 v + G3 v) / 2
                return new(Add(name=graph.fresh(f"{tt.name}.mean"), inputs=(core(1, v), core(2, v)), path=tt.path,
                               halve=1))

            u = core(0, tt.inputs[0])
            if tt.variant == "stt":
                middle = core(2, core(1, u))
            elif tt.variant == "ptt":
                middle = mean(u)
            else:  # htt: ptt's middle on the first half of the steps, u itself on the rest
                steps = graph.op(tt.inputs[0]).type.time
                half = steps // 2
                early, late = (new(TimeSlice(name=graph.fresh(f"{tt.name}.steps{lo}"), inputs=(u,), path=tt.path,
                                             start=lo, stop=hi)) for lo, hi in ((0, half), (half, steps)))
                middle = new(TimeConcat(name=graph.fresh(f"{tt.name}.middle"), inputs=(mean(early), late), path=tt.path))
            core(3, middle, last=True)
            graph.replace_op(tt, ops)
        return graph.infer_types()
