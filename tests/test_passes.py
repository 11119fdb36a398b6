"""Golden tests of every pass: tests/golden/*.ir hold `// RUN: <pass> [option=value ...]`, the input
IR, `// CHECK:` and the exact IR the pass must print."""
from pathlib import Path

import pytest

from ttc.compiler.ir import IRError
from ttc.compiler.ir_text import parse_graph, print_graph
from ttc.compiler.passes import PIPELINE, REGISTRY, TRAIN_PIPELINE, make_pass

GOLDEN = sorted((Path(__file__).parent / "golden").glob("*.ir"))


def _option(value: str):
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.stem)
def test_golden(path):
    source, expected = path.read_text().split("// CHECK:\n")
    name, *options = source.splitlines()[0].removeprefix("// RUN:").split()
    graph = parse_graph(source)
    out = print_graph(make_pass(name, **{k: _option(v) for k, v in (o.split("=") for o in options)}).run(graph).verify())
    assert out == expected
    assert print_graph(parse_graph(out)) == out


def test_every_pipeline_pass_has_a_golden_test():
    covered = {p.read_text().splitlines()[0].removeprefix("// RUN:").split()[0] for p in GOLDEN}
    assert set(PIPELINE) <= set(TRAIN_PIPELINE)  # the training pipeline is the inference one with its own passes
    assert set(TRAIN_PIPELINE) <= covered and set(TRAIN_PIPELINE) == set(REGISTRY)


def test_unknown_pass_option_is_an_error():
    with pytest.raises(ValueError, match="unknown options bogus"):
        make_pass("quantize", bogus=1)


def test_batchnorm_that_cannot_fold_is_an_error():
    text = (Path(__file__).parent / "golden" / "fold_batchnorm.ir").read_text().split("// CHECK:\n")[0]
    text = text.replace("%b = batchnorm(%c)", "%b = batchnorm(%x)").replace(
        ": seq2<f32[2,2,2]>\n  %s", ": seq2<f32[1,2,2]>\n  %s", 1)
    with pytest.raises(IRError):
        make_pass("fold-batchnorm").run(parse_graph(text))


def test_layer_that_does_not_fit_names_layer_and_buffer():
    source = (Path(__file__).parent / "golden" / "tile.ir").read_text().split("// CHECK:\n")[0]
    graph = parse_graph(source)
    from ttc.isa.hwconfig import load_hw
    import dataclasses

    hw = load_hw("sata")
    tiny = dataclasses.replace(hw, buffers={**hw.buffers, "psum": dataclasses.replace(hw.buffers["psum"], kib=2 / 1024)})
    with pytest.raises(IRError, match=r"%c \(conv2d, from 'conv'\): its smallest tile \(\(output channels, output rows, "
                       r"input channels\) = \(1, 2, 1\)\) needs 32 bytes of the psum buffer, which holds 2 bytes"):
        make_pass("tile", hw=tiny).run(graph)
