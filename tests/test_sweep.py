"""Design-space sweeps (ttc.sweep, `ttc sweep`): every point's result file and the CSV, failing points
recorded without stopping the sweep, resumption, the same results from one and two workers, bad specs."""
import csv
import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from ttc import sweep
from ttc.cli import main
from ttc.demo import MODEL
from ttc.digits import load_digits_split

RUN_SCHEMA = json.loads((Path(__file__).parent.parent / "docs" / "schema" / "run.schema.json").read_text())

# every key of a point is valid alone, but 3 groups do not divide an 8 x 16 array: the point fails, the sweep goes on
BAD_GROUPS = 3


def write_spec(tmp_path, axes: str, data: str = 'digits = "test"\nlimit = 8\nsteps = 2', model: str | None = None):
    model = model or f'path = "{MODEL}"\ninput_shape = "T,N,1,8,8"'
    spec = tmp_path / "spec.toml"
    spec.write_text(f"[model]\n{model}\n\n[data]\n{data}\n\n[axes]\n{axes}\n")
    return spec


def points_of(out):
    return {p.stem: json.loads(p.read_text()) for p in (out / "points").glob("*.json")}


def test_a_sweep_writes_every_point_and_the_csv_and_records_a_failing_point(tmp_path, capsys):
    spec = write_spec(tmp_path, f'"hw.array.rows" = [4, 8]\n"hw.array.groups" = [{BAD_GROUPS}, 2]\nT = [2, 3]')
    out = tmp_path / "out"
    assert main(["-q", "sweep", str(spec), "-o", str(out), "--workers", "1"]) == 0
    assert "8 points, 8 run (4 failed), 0 kept" in capsys.readouterr().out
    points = points_of(out)
    assert len(points) == 8
    for result in points.values():
        s = result["sweep"]
        if s["settings"]["hw.array.groups"] == BAD_GROUPS:
            assert s["status"] == "failed" and "cycles_per_inference" not in result
            assert s["error"] == (f"HwConfigError: point {s['id']}: [array] groups = 3 must divide the "
                                  f"{s['settings']['hw.array.rows'] * 16} PEs and be at most 4")
        else:
            assert s["status"] == "ok" and s["error"] is None and 0 <= s["accuracy"] <= 1
            assert result["cycles_per_inference"] > 0 and result["batch"] == 8
            assert result["provenance"]["hardware"]["name"] == "sata-sweep"
            jsonschema.validate(result, RUN_SCHEMA)  # a report.json, with the sweep block beside
    ok = [r for r in points.values() if r["sweep"]["status"] == "ok"]
    # the axes reach the machine: a smaller array takes more cycles, more time steps take more
    by = {(r["sweep"]["settings"]["hw.array.rows"], r["sweep"]["settings"]["T"]): r["cycles_per_inference"] for r in ok}
    assert by[4, 2] > by[8, 2] and by[8, 3] > by[8, 2]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["id"] for r in rows] == [p.id for p in sweep.load_spec(spec).points()]
    assert {r["id"] for r in rows} == set(points)
    assert (out / "pareto.png").stat().st_size > 0
    front = list(csv.DictReader((out / "pareto.csv").open()))
    assert front and all(points[r["id"]]["sweep"]["status"] == "ok" for r in front)
    assert main(["sweep", "--report", str(out), "--objectives", "cycles,data_bytes"]) == 0
    printed = capsys.readouterr().out
    # the fastest point is on every front that minimises cycles
    fastest = min((r for r in points.values() if r["sweep"]["status"] == "ok"), key=lambda r: r["cycles_per_inference"])
    assert printed.startswith("Pareto front over cycles, data_bytes: ") and fastest["sweep"]["id"] in printed
    for r in rows:
        assert r["status"] == points[r["id"]]["sweep"]["status"]
        assert float(r["hw.array.rows"]) == points[r["id"]]["sweep"]["settings"]["hw.array.rows"]
        assert (r["cycles_per_inference"] == "") == (r["status"] == "failed")


def test_an_interrupted_sweep_recomputes_only_the_missing_points(tmp_path, monkeypatch):
    spec = sweep.load_spec(write_spec(tmp_path, '"hw.array.rows" = [4, 8, 16]'))
    out = tmp_path / "out"
    sweep.run_sweep(spec, out, workers=1)
    files = sorted((out / "points").glob("*.json"))
    before = {f: (f.stat().st_mtime_ns, f.read_text()) for f in files}
    files[1].unlink()
    ran = []
    run_point = sweep.run_point
    monkeypatch.setattr(sweep, "run_point", lambda work, point: ran.append(point.id) or run_point(work, point))
    summary = sweep.run_sweep(spec, out, workers=1)
    assert ran == [files[1].stem] and (summary.ran, summary.skipped) == (1, 2)
    for f, (mtime, text) in before.items():
        assert f.read_text() == text
        if f != files[1]:
            assert f.stat().st_mtime_ns == mtime
    assert sweep.run_sweep(spec, out, workers=1).ran == 0 and ran == [files[1].stem]


def test_one_and_two_workers_give_identical_result_files(tmp_path):
    spec = sweep.load_spec(write_spec(tmp_path, f'"hw.array.cols" = [8, 16]\n"hw.array.groups" = [{BAD_GROUPS}, 2]'))
    sweep.run_sweep(spec, tmp_path / "one", workers=1)
    sweep.run_sweep(spec, tmp_path / "two", workers=2)
    one, two = points_of(tmp_path / "one"), points_of(tmp_path / "two")
    assert len(one) == 4 and one == two
    assert (tmp_path / "one" / "results.csv").read_text() == (tmp_path / "two" / "results.csv").read_text()


@pytest.mark.slow  # starting a local Ray takes seconds
def test_ray_tasks_give_the_same_result_files_as_the_process_pool(tmp_path):
    spec = sweep.load_spec(write_spec(tmp_path, f'"hw.array.rows" = [4, 8]\n"hw.array.groups" = [{BAD_GROUPS}, 2]'))
    sweep.run_sweep(spec, tmp_path / "pool", workers=1)
    summary = sweep.run_sweep(spec, tmp_path / "ray", workers=2, ray_address="local")
    assert (summary.ran, summary.failed) == (4, 2)
    assert points_of(tmp_path / "ray") == points_of(tmp_path / "pool")
    assert (tmp_path / "ray" / "results.csv").read_text() == (tmp_path / "pool" / "results.csv").read_text()


def test_a_builder_with_parameters_and_a_compile_option_axis(tmp_path):
    model = 'builder = "ttc.digits:build_tt_digits_snn"\nparams = { variant = "stt", rank = 2 }\ninput_shape = "T,N,1,8,8"'
    spec = sweep.load_spec(write_spec(tmp_path, '"options.schedule" = ["cores", "merged"]', model=model))
    sweep.run_sweep(spec, tmp_path / "out", workers=1)
    results = sorted(points_of(tmp_path / "out").values(), key=lambda r: r["sweep"]["settings"]["options.schedule"])
    assert [r["sweep"]["status"] for r in results] == ["ok", "ok"]
    # the plans compute the same function at different costs
    assert results[0]["actions_per_inference"] != results[1]["actions_per_inference"]


def test_a_builder_parameter_axis_builds_one_model_per_value_once(tmp_path, monkeypatch):
    model = 'builder = "ttc.digits:build_tt_digits_snn"\nparams = { variant = "stt" }\ninput_shape = "T,N,1,8,8"'
    spec = sweep.load_spec(write_spec(tmp_path, '"params.rank" = [2, 4]\n"hw.array.skip" = ["none", "event"]', model=model))
    built = []
    builder = sweep._builder

    def counting(name, where):
        function = builder(name, where)
        return lambda **params: built.append(params) or function(**params)

    monkeypatch.setattr(sweep, "_builder", counting)
    sweep.run_sweep(spec, tmp_path / "out", workers=1)
    assert built == [dict(variant="stt", rank=2), dict(variant="stt", rank=4)]  # per value, not per point
    results = points_of(tmp_path / "out").values()
    assert [r["sweep"]["status"] for r in results] == ["ok"] * 4
    data = {(r["sweep"]["settings"]["params.rank"], r["sweep"]["settings"]["hw.array.skip"]): r["sweep"]["program_data_bytes"]
            for r in results}
    # the rank reaches the model (its cores' bytes); the skip mode does not change the program's data
    assert data[2, "none"] == data[2, "event"] < data[4, "none"] == data[4, "event"]
    # resumed, only the models of the missing points are built
    for r in results:
        if r["sweep"]["settings"]["params.rank"] == 4:
            (tmp_path / "out" / "points" / f"{r['sweep']['id']}.json").unlink()
    built.clear()
    assert sweep.run_sweep(spec, tmp_path / "out", workers=1).ran == 2 and built == [dict(variant="stt", rank=4)]


def test_the_trained_tt_builder_is_deterministic_on_one_thread():
    import torch

    from ttc.digits import build_tt_digits_snn, train_tt_digits_snn

    threads = torch.get_num_threads()
    a, b = (train_tt_digits_snn(rank=2, epochs=1).state_dict() for _ in range(2))
    assert torch.get_num_threads() == threads
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(0)
    untrained = build_tt_digits_snn("stt", 2).state_dict()
    assert not all(torch.equal(a[k], untrained[k]) for k in a)  # it trained


def test_npy_data_with_labels_gives_the_accuracy_and_cites_the_file(tmp_path):
    _, _, x, y = load_digits_split(2)
    np.save(tmp_path / "x.npy", x[:, :6])
    np.save(tmp_path / "y.npy", y[:6])
    spec = sweep.load_spec(write_spec(tmp_path, '"hw.array.skip" = ["none", "event"]',
                                      data='input = "x.npy"\nlabels = "y.npy"\nlimit = 5',
                                      model=f'path = "{MODEL}"\ninput_shape = "2,N,1,8,8"'))
    sweep.run_sweep(spec, tmp_path / "out", workers=1)
    results = {r["sweep"]["settings"]["hw.array.skip"]: r for r in points_of(tmp_path / "out").values()}
    for r in results.values():
        assert r["batch"] == 5 and r["provenance"]["input"]["path"] == str(tmp_path / "x.npy")
    # the array's schedule changes the time, not the function
    assert results["none"]["sweep"]["accuracy"] == results["event"]["sweep"]["accuracy"] >= 0.6
    assert results["event"]["cycles_per_inference"] < results["none"]["cycles_per_inference"]


def fake_point(id, energy, cycles, accuracy, status="ok"):
    return dict(sweep=dict(id=id, settings={}, status=status, accuracy=accuracy, program_data_bytes=1),
                energy_pj_per_inference=energy, cycles_per_inference=cycles)


def test_the_pareto_front_keeps_exactly_the_points_nothing_dominates():
    points = [fake_point("a", 1, 9, 0.5), fake_point("b", 2, 2, 0.9), fake_point("c", 3, 3, 0.9),  # c: b is better
              fake_point("d", 2, 2, 0.9), fake_point("e", 9, 1, 0.1), fake_point("f", 1, 1, 1.0, "failed"),
              fake_point("g", 2, 3, 0.95)]
    assert [p["sweep"]["id"] for p in sweep.pareto_front(points, ("energy", "cycles", "accuracy"))] == ["a", "b", "d", "g", "e"]
    assert [p["sweep"]["id"] for p in sweep.pareto_front(points, ("energy", "cycles"))] == ["a", "b", "d", "e"]
    with pytest.raises(sweep.SweepError, match="give two or more different objectives of energy, cycles"):
        sweep.parse_objectives("energy,speed")


def test_point_ids_are_stable_and_follow_the_model_and_the_settings(tmp_path):
    spec = sweep.load_spec(write_spec(tmp_path, '"hw.array.rows" = [4, 8]'))
    ids = [p.id for p in spec.points()]
    assert ids == [p.id for p in sweep.load_spec(tmp_path / "spec.toml").points()] and len(set(ids)) == 2
    grown = sweep.load_spec(write_spec(tmp_path, '"hw.array.rows" = [4, 8, 16]'))
    assert [p.id for p in grown.points()][:2] == ids  # a grown axis keeps the results already there
    other_data = sweep.load_spec(write_spec(tmp_path, '"hw.array.rows" = [4, 8]', data='digits = "test"\nlimit = 9'))
    assert not set(ids) & {p.id for p in other_data.points()}


@pytest.mark.parametrize("axes, data, message", [
    ('"hw.array.rowz" = [4]', None, "axes.'hw.array.rowz': unknown hardware-config key 'rowz'"),
    ('"hw.arrays.rows" = [4]', None, "axes.'hw.arrays.rows': names no hardware-config section"),
    ('"hw.array.rows" = [0]', None, "rows must be a positive integer, got 0"),
    ('"hw.array.skip" = ["some"]', None, "skip must be one of none, tile, event, got 'some'"),
    ('"hw.buffers.wgt.kib" = ["big"]', None, "kib must be a number, got 'big'"),
    ('"hw.array.rows" = []', None, "axes.hw.array.rows: [] should be non-empty"),
    ('"hw.array.rows" = [4, 4]', None, "a value is repeated"),
    ('"hw.array.rows" = { from = 8, to = 4 }', None, "the range ends (4) before it starts (8)"),
    ('"hw.array.rows" = { from = 4, to = 8, step = 0 }', None, "step: 0 is less than or equal to the minimum of 0"),
    ('"hw.array.rows" = { from = 4, to = 8, step = 2, times = 2 }', None, "a step or a factor (times), not both"),
    ('"hw.array.rows" = { from = 4, upto = 8 }', None, "axes.hw.array.rows: unknown key ('upto' was unexpected)"),
    ('"hw.array.rows" = { from = 4 }', None, "'to' is a required property"),
    ('"options.tt_rnk" = ["2"]', None, "unknown compile option 'tt_rnk'"),
    ('"options.objective" = ["speed"]', None, "objective must be one of"),
    ("T = [0]", None, "time steps must be positive integers, got 0"),
    ("T = [2]", 'input = "x.npy"', "an .npy input has its own time steps"),
    ("depth = [2]", None, "an axis is T, hw.SECTION.KEY"),
    ("", 'digits = "validation"', "data.digits: 'validation' is not one of ['train', 'test']"),
    ("", 'digits = "test"\ninput = "x.npy"', "data: give exactly one of digits"),
    ("", 'digits = "test"\nbatch = 3', "data: unknown key ('batch' was unexpected)"),
    ("", 'input = "missing.npy"', "data.input: no file"),
    ("", 'digits = "test"\nlabels = "x.npy"', "data.labels: the digits split brings its own labels"),
])
def test_a_bad_spec_is_one_line_naming_the_key(tmp_path, capsys, axes, data, message):
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 1, 8, 8), np.float32))
    spec = write_spec(tmp_path, axes, **({"data": data} if data else {}))
    with pytest.raises(sweep.SweepError) as e:
        sweep.load_spec(spec)
    assert message in str(e.value) and str(e.value).startswith("spec.toml: ")
    assert main(["sweep", str(spec), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ttc: error: spec.toml: ") and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_an_axis_given_as_a_range_is_the_list_it_spans(tmp_path):
    listed = [p.id for p in sweep.load_spec(write_spec(tmp_path, '"hw.array.rows" = [4, 8, 12, 16]')).points()]
    stepped = sweep.load_spec(write_spec(tmp_path, '"hw.array.rows" = { from = 4, to = 16, step = 4 }')).points()
    assert [p.id for p in stepped] == listed
    doubled = sweep.load_spec(write_spec(tmp_path, '"hw.buffers.wgt.kib" = { from = 16, to = 144, times = 2 }'))
    assert [p.settings["hw.buffers.wgt.kib"] for p in doubled.points()] == [16, 32, 64, 128]
    halves = sweep.load_spec(write_spec(tmp_path, '"hw.array.frequency_mhz" = { from = 100.0, to = 200.0, step = 50.0 }'))
    assert [p.settings["hw.array.frequency_mhz"] for p in halves.points()] == [100.0, 150.0, 200.0]


def test_a_spec_names_one_model_source_and_a_builder_that_imports(tmp_path):
    both = f'path = "{MODEL}"\nbuilder = "ttc.digits:build_digits_snn"\ninput_shape = "T,N,1,8,8"'
    with pytest.raises(sweep.SweepError, match="model: give exactly one of path"):
        sweep.load_spec(write_spec(tmp_path, "", model=both))
    fixed_time = f'path = "{MODEL}"\ninput_shape = "4,N,1,8,8"'
    with pytest.raises(sweep.SweepError, match="model.input_shape: write the time axis as T"):
        sweep.load_spec(write_spec(tmp_path, "T = [2, 4]", model=fixed_time))
    missing = 'builder = "ttc.digits:build_nothing"\ninput_shape = "T,N,1,8,8"'
    with pytest.raises(sweep.SweepError, match="model.builder: cannot import 'ttc.digits:build_nothing'"):
        sweep.load_spec(write_spec(tmp_path, "", model=missing))
    with pytest.raises(sweep.SweepError, match="axes.'params.rank': a builder-parameter axis needs model.builder"):
        sweep.load_spec(write_spec(tmp_path, '"params.rank" = [2]'))
    tt = 'builder = "ttc.digits:build_tt_digits_snn"\nparams = { rank = 2 }\ninput_shape = "T,N,1,8,8"'
    with pytest.raises(sweep.SweepError, match="axes.'params.rank': rank is also fixed in model.params"):
        sweep.load_spec(write_spec(tmp_path, '"params.rank" = [2, 4]', model=tt))
    with pytest.raises(sweep.SweepError, match="model.builder: ttc.digits:build_tt_digits_snn takes no parameter "
                                               "'ranks' \\(it takes: variant, rank\\)"):
        sweep.load_spec(write_spec(tmp_path, '"params.ranks" = [2, 4]', model=tt.replace("rank = 2", "")))
    with pytest.raises(sweep.SweepError, match="a builder parameter's value is a string, number or boolean"):
        sweep.load_spec(write_spec(tmp_path, '"params.variant" = [["stt"]]', model=tt))


def test_a_base_config_that_is_not_a_hardware_config_names_the_file(tmp_path):
    spec = write_spec(tmp_path, '"hw.array.rows" = [4]')
    (tmp_path / "mine.toml").write_text("name = 'mine'\n[array\n")
    spec.write_text(spec.read_text() + '\n[hw]\nbase = "mine.toml"\n')
    with pytest.raises(sweep.SweepError, match="spec.toml: hw.base: mine.toml: not valid TOML: "):
        sweep.load_spec(spec)
    (tmp_path / "mine.toml").write_text("name = 'mine'\n[array]\nrows = 8\n")
    with pytest.raises(sweep.SweepError, match="spec.toml: hw.base: mine.toml: missing key 'description'"):
        sweep.load_spec(spec)


def test_the_command_runs_a_spec_into_a_directory_or_reports_one(tmp_path, capsys):
    assert main(["sweep", "--report", str(tmp_path)]) == 1
    assert capsys.readouterr().err == f"ttc: error: {tmp_path}: no sweep results (no points/*.json)\n"
    spec = write_spec(tmp_path, '"hw.array.rows" = [4]')
    for args in ([str(spec)], [str(spec), "--report", str(tmp_path)], ["-o", str(tmp_path)]):
        assert main(["sweep", *args]) == 1
        assert "give a spec and -o DIR to run a sweep, or --report DIR" in capsys.readouterr().err
    assert main(["sweep", str(spec), "-o", str(tmp_path / "out"), "--objectives", "energy"]) == 1
    assert "--objectives 'energy': give two or more different objectives" in capsys.readouterr().err
