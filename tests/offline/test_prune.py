"""The prune stage removes channels for real (fewer parameters, narrower convolutions, widths in
multiples of 8), keeps the detection head's outputs, meets its FLOPs target, and writes a model
that reloads to the same outputs and exports; a generic `module:factory` model prunes and reloads;
bad factories and weights are one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from leaneye.errors import LeanEyeError
from leaneye_compress.checkpoint import load_model, model_payload, save_checkpoint
from leaneye_compress.cli import main as compress_main
from leaneye_compress.config import from_mapping
from leaneye_compress.models.detector import LeanDet, LeanDetConfig, count_parameters, gflops, layer_channels
from leaneye_compress.models.factory import load_pruned_module
from leaneye_compress.stages.prune import PruneConfig, _Groups, _Plan, _scores, _Subject, prune

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = ["car", "person", "bicycle"]
HEAD_OUTPUTS = {"cls_out": len(CLASSES), "box_out": 4}
NO_LATENCY = {"latency": {"runs": 0}}


def _config(**values) -> PruneConfig:
    return from_mapping(PruneConfig, {**NO_LATENCY, **values}, "test")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    torch.manual_seed(0)
    model = LeanDet(LeanDetConfig(num_classes=len(CLASSES), width=0.25, input_height=64, input_width=128)).eval()
    # Distinct BatchNorm scales, so that importance has something to rank.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.2, 1.5)
    path = tmp_path_factory.mktemp("teacher") / "model.pt"
    save_checkpoint(path, model_payload(model, CLASSES))
    return path


def _check_widths(model: LeanDet, original: LeanDet) -> None:
    before, after = layer_channels(original), layer_channels(model)
    for name, (_, c_out) in after.items():
        kind = name.rpartition(".")[2]
        if kind in HEAD_OUTPUTS:
            assert c_out == HEAD_OUTPUTS[kind], name  # the contract: never pruned
        else:
            assert c_out % 8 == 0 and c_out > 0, (name, c_out)
            assert c_out <= before[name][1]
    assert sum(c for _, c in after.values()) < sum(c for _, c in before.values())


@pytest.mark.parametrize(
    "settings",
    [
        {"importance": "magnitude"},
        {"importance": "bn_scale", "global_ranking": True},
        {"importance": "magnitude", "steps": 2},
    ],
)
def test_prune_to_a_flops_ratio_removes_channels_and_reloads(teacher, tmp_path, settings):
    record, skipped = prune(_config(flops_ratio=0.5, **settings), teacher, tmp_path / "pruned")
    assert not skipped
    original, _ = load_model(teacher)
    model, meta = load_model(tmp_path / "pruned" / "model.pt")
    assert meta["class_names"] == CLASSES
    _check_widths(model, original)
    assert count_parameters(model) < 0.7 * count_parameters(original)
    ratio = gflops(model) / gflops(original)
    assert 0.4 <= ratio <= 0.5  # at the target, from below, not far under it
    assert record["metrics"]["gflops_ratio"] == pytest.approx(ratio, abs=1e-3)
    assert len(record["details"]["steps"]) == settings.get("steps", 1)
    assert sorted(record["details"]["protected"]) == sorted(
        f"heads.{k}.{name}" for k in range(3) for name in HEAD_OUTPUTS
    )
    x = torch.rand(2, 3, 64, 128)
    with torch.no_grad():
        cls, boxes = model(x)
        cls0, boxes0 = original(x)
    assert cls.shape == cls0.shape and boxes.shape == boxes0.shape and torch.isfinite(cls).all()


def test_a_pruned_checkpoint_reloads_to_identical_outputs(teacher, tmp_path):
    subject = _Subject(_config(), teacher)
    model = subject.model
    groups = _Groups(model, subject.trace_example, ("heads.0.cls_out", "heads.0.box_out"))
    plan = _Plan(_config(), groups, _scores(groups, "magnitude"), {r: groups.channels(r) for r in groups.groups})
    for root, keep in plan.widths(0.5).items():
        if keep < groups.channels(root):
            groups.remove(root, list(range(keep, groups.channels(root))))
    path = tmp_path / "model.pt"
    save_checkpoint(path, model_payload(model, CLASSES))
    reloaded, _ = load_model(path)
    assert layer_channels(reloaded) == layer_channels(model)
    x = torch.rand(1, 3, 64, 128)
    with torch.no_grad():
        for a, b in zip(model.eval()(x), reloaded(x)):
            assert torch.equal(a, b)


def test_per_layer_ratios_prune_only_the_named_layers(teacher, tmp_path):
    prune(_config(target="layers", layer_ratios={"stage5": 0.5}), teacher, tmp_path / "pruned")
    original, _ = load_model(teacher)
    model, _ = load_model(tmp_path / "pruned" / "model.pt")
    changed = {n for n, w in layer_channels(model).items() if w[1] != layer_channels(original)[n][1]}
    assert changed and all(name.startswith("stage5.") for name in changed)
    assert (
        layer_channels(model)["stage5.1.blocks.0.conv1.0"][1]
        == layer_channels(original)["stage5.1.blocks.0.conv1.0"][1] // 2
    )


def test_an_unknown_layer_name_is_one_line_naming_the_closest(teacher, tmp_path):
    with pytest.raises(LeanEyeError, match=r"layer_ratios: no module 'stage5.1.blocks.0.conv' .*closest"):
        prune(_config(target="layers", layer_ratios={"stage5.1.blocks.0.conv": 0.5}), teacher, tmp_path / "p")
    assert not (tmp_path / "p").exists()


def test_an_unchanged_rerun_is_skipped_and_another_config_needs_force(teacher, tmp_path):
    out = tmp_path / "pruned"
    first, _ = prune(_config(flops_ratio=0.6), teacher, out)
    again, skipped = prune(_config(flops_ratio=0.6), teacher, out)
    assert skipped and again == first
    with pytest.raises(LeanEyeError, match="pass --force"):
        prune(_config(flops_ratio=0.7), teacher, out)
    _, skipped = prune(_config(flops_ratio=0.7), teacher, out, force=True)
    assert not skipped and json.loads((out / "record.json").read_text())["config"]["flops_ratio"] == 0.7


def test_target_checks_are_one_line():
    with pytest.raises(LeanEyeError, match="target latency needs exactly one of latency_ms and latency_ratio"):
        from_mapping(PruneConfig, {"target": "latency"}, "x.yaml")
    with pytest.raises(LeanEyeError, match="model_factory needs input_shape"):
        from_mapping(PruneConfig, {"model_factory": "a:b"}, "x.yaml")
    with pytest.raises(LeanEyeError, match=r"x.yaml: layer_ratios\[stage5\] 1.0: expected >= 0 and <= 0.95"):
        from_mapping(PruneConfig, {"target": "layers", "layer_ratios": {"stage5": 1.0}}, "x.yaml")


# --- a generic module:factory model -----------------------------------------------------------


def tiny_classifier() -> nn.Module:
    """A small CNN classifier (10 classes): a factory the tests name as test_prune:tiny_classifier."""

    def block(c_in, c_out, stride):
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())

    return nn.Sequential(
        block(3, 32, 2),
        block(32, 64, 2),
        block(64, 64, 1),
        block(64, 128, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, 10),
    )


FACTORY = f"{__name__}:tiny_classifier"
INPUT_SHAPE = [1, 3, 32, 32]


def test_a_factory_model_prunes_and_reloads(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "weights.pt"
    torch.save(tiny_classifier().state_dict(), weights)
    config = _config(model_factory=FACTORY, input_shape=INPUT_SHAPE, flops_ratio=0.5)
    record, _ = prune(config, weights, tmp_path / "pruned")
    model, data = load_pruned_module(tmp_path / "pruned" / "model.pt")
    assert data["factory"] == FACTORY
    assert record["details"]["protected"] == ["6"]  # the classifier: its outputs are the model's
    assert model[6].out_features == 10 and model[6].in_features < 128
    assert [model[k][0].out_channels for k in range(4)] != [32, 64, 64, 128]
    assert all(model[k][0].out_channels % 8 == 0 for k in range(4))
    assert record["metrics"]["parameters_ratio"] < 0.7
    assert 0.4 <= record["metrics"]["gflops_ratio"] <= 0.5
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    # and prunes further from its own pruned file
    again, _ = prune(_config(flops_ratio=0.8), tmp_path / "pruned" / "model.pt", tmp_path / "again")
    assert again["metrics"]["gflops_ratio"] <= 0.8


def _one_error_line(capsys, argv) -> str:
    assert compress_main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_bad_factories_and_weights_are_one_line_errors(tmp_path, capsys):
    weights = tmp_path / "weights.pt"
    torch.save(tiny_classifier().state_dict(), weights)
    common = ["--weights", str(weights), "--input-shape", *map(str, INPUT_SHAPE), "--out", str(tmp_path / "p")]
    line = _one_error_line(capsys, ["prune", "--model-factory", "no_such_package.models:net", *common])
    assert "--model-factory no_such_package.models:net: cannot import module 'no_such_package.models'" in line
    line = _one_error_line(capsys, ["prune", "--model-factory", f"{__name__}:no_such_function", *common])
    assert f"module {__name__!r} has no callable 'no_such_function'" in line
    line = _one_error_line(capsys, ["prune", "--model-factory", "no_colon", *common])
    assert "expected package.module:function" in line
    other = nn.Sequential(nn.Conv2d(3, 16, 3))
    torch.save(other.state_dict(), weights)
    line = _one_error_line(capsys, ["prune", "--model-factory", FACTORY, *common])
    assert f"--weights {weights}: does not fit --model-factory {FACTORY}" in line
    assert not (tmp_path / "p").exists()


def test_cli_prunes_a_checkpoint(teacher, tmp_path, capsys):
    config = tmp_path / "prune.yaml"
    config.write_text("latency:\n  runs: 0\n", encoding="utf-8")
    out = tmp_path / "pruned"
    argv = ["prune", str(teacher), "--out", str(out), "--config", str(config), "--flops-ratio", "0.5"]
    assert compress_main(argv) == 0
    printed = capsys.readouterr().out
    assert "GFLOPs" in printed and f"wrote {out}" in printed
    assert compress_main(argv) == 0
    assert "up to date" in capsys.readouterr().out


# --- export, latency (slow), taylor ----------------------------------------------------------


@pytest.mark.slow
def test_a_pruned_checkpoint_exports_and_runs_in_onnx_runtime(teacher, tmp_path):
    import onnxruntime as ort

    from leaneye_compress.stages.export import export_engine

    prune(_config(flops_ratio=0.5), teacher, tmp_path / "pruned")
    exported = export_engine(tmp_path / "pruned" / "model.pt", tmp_path / "engine")
    assert exported["max_abs_difference_vs_torch"] < 1e-3
    session = ort.InferenceSession(str(tmp_path / "engine" / "model.onnx"), providers=["CPUExecutionProvider"])
    [output] = session.run(None, {session.get_inputs()[0].name: np.zeros((1, 3, 64, 128), np.float32)})
    cells = sum((64 // s) * (128 // s) for s in (8, 16, 32))
    assert output.shape == (1, cells, 4 + len(CLASSES))


@pytest.mark.slow
def test_a_latency_target_is_measured_and_met(teacher, tmp_path):
    config = from_mapping(
        PruneConfig,
        {
            "target": "latency",
            "latency_ratio": 0.9,
            "flops_ratio": 0.3,
            "latency_flops_step": 0.25,
            "latency": {"runs": 20, "warmup": 3, "threads": 1},
        },
        "test",
    )
    record, _ = prune(config, teacher, tmp_path / "pruned")
    metrics = record["metrics"]
    assert metrics["pruned"]["latency_ms"] <= 0.9 * metrics["original"]["latency_ms"]
    assert all("latency_ms" in step for step in record["details"]["steps"])


def test_taylor_importance_uses_the_detection_loss_on_generated_scenes(teacher, tmp_path):
    config = _config(
        importance="taylor",
        flops_ratio=0.5,
        taylor_batches=1,
        batch_size=2,
        frame_size=[256, 128],
        scenes={"first_seed": 1000, "sequences": 2, "frames_per_sequence": 1, "frame_step": 1},
    )
    record, _ = prune(config, teacher, tmp_path / "pruned", work_dir=tmp_path / "work")
    assert 0.4 <= record["metrics"]["gflops_ratio"] <= 0.5
    assert any((tmp_path / "work" / "cache").iterdir())


@pytest.mark.parametrize("which", ["leandet", "factory"])
def test_computed_flops_match_the_pruned_models_measured_flops(teacher, which):
    from leaneye_compress.stages.prune import _apply, _FlopsModel, _layer_costs

    if which == "leandet":
        model, example = load_model(teacher)[0], torch.zeros(1, 3, 64, 128)
    else:
        model, example = tiny_classifier().eval(), torch.zeros(INPUT_SHAPE)
    groups = _Groups(model, example, ())
    flops = _FlopsModel(groups, model, example)
    rng = np.random.default_rng(0)
    widths = {root: int(rng.integers(1, groups.channels(root) // 8 + 1)) * 8 for root in groups.groups}
    _apply(groups, widths, None)
    measured = sum(cost * o * (1 if dw else i) for cost, i, o, dw in _layer_costs(model, example).values()) / 1e9
    assert flops.gflops(widths) == pytest.approx(measured, rel=1e-9)
    assert measured < flops.gflops({})
