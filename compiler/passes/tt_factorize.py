"""tt-factorize: dense 3x3 convolutions become sequential tensor-train layers (STT, TT-SNN) by TT-SVD
(Oseledets 2011, through tensorly). The kernel, read as the 4-way tensor W[ci, u, v, co], is

    W[ci, u, v, co] ~ sum_{a,b,c} F1[ci, a] F2[a, u, b] F3[b, v, c] F4[c, co]

whose factors are the cores G1 (1x1 Cin -> R1), G2 (3x1 R1 -> R2), G3 (1x3 R2 -> R3), G4 (1x1 R3 -> Cout)
of `tt_conv2d`; the bias (and so a folded batch norm) stays the layer's. The relative error
||W - W_tt||_F / ||W||_F is what the factorisation loses; quantization comes after, as for any layer.

Options: `rank` ("8": every eligible conv; "path=8,path=4": those layers) and `error` (a relative error
budget: the smallest rank R, each bond capped at what its unfolding allows, whose error meets it, for
every eligible conv not given a rank). A layer is eligible when its kernel is 3x3 with stride 1 and
padding 1 (TT-SNN's strided layers pool after the cores, another function); "every" means every
eligible layer that reads spikes (as TT-SNN, the stem on a multi-bit input stays dense unless named);
a layer whose cores would hold no fewer parameters than its kernel stays dense. Each layer's outcome (ranks, error,
parameters, or why it stayed dense) goes to `graph.notes["factorize"]`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import Conv2d, Graph, IRError, TTConv2d
from . import Pass, parse_per_layer, register, user_option


def tt_svd(weight: np.ndarray, rank: int) -> tuple[list[np.ndarray], float]:
    """The STT cores of a [Cout, Cin, 3, 3] kernel at rank at most `rank` per bond, and the relative error."""
    # imported here: tensorly (with scipy) takes about 0.4 s to import, and only --tt-rank/--tt-error use it
    from tensorly import tt_to_tensor
    from tensorly.decomposition import tensor_train

    w = weight.astype(np.float64).transpose(1, 2, 3, 0)  # [ci, u, v, co]
    factors = list(tensor_train(w, rank=[1, rank, rank, rank, 1]))
    error = float(np.linalg.norm(tt_to_tensor(factors) - w) / max(np.linalg.norm(w), np.finfo(float).tiny))
    for left, right in zip(factors, factors[1:]):  # fix SVD's sign freedom: each bond's largest entry > 0
        flat = left.reshape(-1, left.shape[2])
        signs = np.where(flat[np.abs(flat).argmax(0), np.arange(flat.shape[1])] < 0, -1.0, 1.0)
        left *= signs
        right *= signs[:, None, None]
    f1, f2, f3, f4 = factors
    cores = [f1[0].T[:, :, None, None], f2.transpose(2, 0, 1)[:, :, :, None],
             f3.transpose(2, 0, 1)[:, :, None, :], f4[:, :, 0].T[:, :, None, None]]
    return [c.astype(np.float32) for c in cores], error


def _smallest_rank(weight: np.ndarray, budget: float) -> int:
    """The smallest R whose TT-SVD error is within `budget` (the error falls as R grows; at the largest
    useful R, min(3 Cin, 3 Cout), TT-SVD is exact)."""
    cout, cin = weight.shape[:2]
    lo, hi = 1, 3 * min(cin, cout)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if tt_svd(weight, mid)[1] <= budget else (mid + 1, hi)
    return lo


def _ineligible(conv: Conv2d) -> str | None:
    if conv.weight.shape[2:] != (3, 3) or tuple(conv.stride) != (1, 1) or tuple(conv.padding) != (1, 1):
        return (f"kernel {conv.weight.shape[2]}x{conv.weight.shape[3]}, stride {tuple(conv.stride)}, padding "
                f"{tuple(conv.padding)}: only 3x3 convs of stride 1 and padding 1 are tensor-train layers")
    if conv.weight_frac is not None:
        return "already quantized (factorise before quantize)"
    return None


@register
@dataclass
class TTFactorize(Pass):
    name = "tt-factorize"
    rank: str | int = user_option("", "tt_rank", "factorise dense 3x3 convs (every eligible one, or the named) into STT "
                                  "cores of rank R by TT-SVD", metavar="R|PATH=R,...")
    error: float = user_option(0.0, "tt_error", "factorise every eligible dense 3x3 conv at the smallest rank whose "
                               "relative error is at most E", metavar="E")

    def run(self, graph: Graph) -> Graph:
        ranks = parse_per_layer(self.rank, "--tt-rank", int)
        if any(r < 1 for r in ranks.values()):
            raise IRError(f"--tt-rank {self.rank!r}: ranks must be at least 1")
        if not 0 <= self.error < 1:
            raise IRError(f"--tt-error {self.error}: a relative error budget lies in [0, 1)")
        if not ranks and not self.error:
            return graph
        paths = {op.path or op.name: op for op in graph.ops}
        for path in set(ranks) - {"*"}:
            if not isinstance(paths.get(path), Conv2d):
                raise IRError(f"--tt-rank names {path!r}, which is not a convolution of the model")
        notes = graph.notes.setdefault("factorize", {})
        for conv in [o for o in graph.ops if isinstance(o, Conv2d)]:
            path = conv.path or conv.name
            rank = ranks.get(path, ranks.get("*"))
            if rank is None and not self.error:
                continue  # not asked about
            why = _ineligible(conv)
            if why is None and path not in ranks and graph.op(conv.inputs[0]).type.dtype.kind != "spike":
                why = "reads a multi-bit input (TT-SNN keeps such layers dense): name it in --tt-rank to factorise it"
            if why is not None:
                if path in ranks:
                    conv.fail(f"cannot be factorised: {why}")
                notes[path] = {"factorised": False, "why": why}
                continue
            rank = rank or _smallest_rank(conv.weight, self.error)
            cores, error = tt_svd(conv.weight, rank)
            dense_params, tt_params = conv.weight.size, sum(c.size for c in cores)
            note = {"ranks": [c.shape[0] for c in cores[:3]], "error": error,
                    "params_dense": int(dense_params), "params_tt": int(tt_params)}
            if tt_params >= dense_params:
                notes[path] = {"factorised": False, **note,
                               "why": f"ranks {note['ranks']} hold {tt_params} weights, the kernel {dense_params}"}
                continue
            notes[path] = {"factorised": True, **note}
            tt = TTConv2d(name=conv.name, inputs=conv.inputs, path=conv.path, g1=cores[0], g2=cores[1],
                          g3=cores[2], g4=cores[3], bias=conv.bias, variant="stt")
            graph.replace_op(conv, [tt])
        return graph.infer_types()
