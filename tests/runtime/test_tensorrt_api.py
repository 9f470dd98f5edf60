"""The TensorRT backend and builder without TensorRT (it cannot be installed here): every TensorRT name
the code uses checked against the real releases' API lists (../shared/fixtures/tensorrt_api), the
per-release option translation, manifest target checks, the build-on-target cache's keys and
invalidation, and the builder's logic run against a FAKE tensorrt module (tests/data/fake_tensorrt.py)."""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib.util
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import TINY_ENGINE_DIR
from onnx import TensorProto, helper

from leaneye.backends import BackendOptions
from leaneye.backends.tensorrt import builder, cache, options, platform
from leaneye.backends.tensorrt.options import RELEASE_LINES, BuildOptions, translate
from leaneye.backends.tensorrt.platform import Platform, cache_key, plan_mismatch
from leaneye.engine import load_manifest, parse_manifest
from leaneye.engine.target import Target
from leaneye.errors import LeanEyeError

pytestmark = pytest.mark.runtime_core

REPO_ROOT = Path(__file__).resolve().parents[2]

PACKAGE = REPO_ROOT / "ros2_ws/src/leaneye/leaneye/backends/tensorrt"
STAGE = REPO_ROOT / "compression/leaneye_compress/stages/engine_build.py"
# The modules that call TensorRT (the others call cuda-python or are pure Python).
TENSORRT_MODULES = [PACKAGE / "builder.py", PACKAGE / "backend.py", PACKAGE / "libraries.py", STAGE]
ALL_FIXTURES = sorted({version for line in RELEASE_LINES for version in line.fixtures})
ORIN = Platform("10.3.0", "Orin", "8.7")
H200_TRT11 = Platform("11.4.0.106", "NVIDIA H200", "9.0")


def names_of(fixtures: Path, version: str) -> list[str]:
    return (fixtures / "tensorrt_api" / f"tensorrt-{version}.txt").read_text().split()


def exists(name: str, identifiers: list[str]) -> bool:
    # The fixture's rule: a name exists when it ends one of the listed identifiers.
    return any(identifier.endswith(name) for identifier in identifiers)


def attribute_chains(path: Path, roots: tuple[str, ...] = ("trt", "tensorrt")) -> set[tuple[str, ...]]:
    """Every `R.A.B` / `self.R.A` attribute chain in a module whose root R is one of `roots` (TensorRT's
    names by default), without the root."""
    chains = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Attribute):
            continue
        parts, base = [], node
        while isinstance(base, ast.Attribute):
            parts.append(base.attr)
            base = base.value
        parts.reverse()
        if isinstance(base, ast.Name) and base.id in roots:
            chains.add(tuple(parts))
        elif isinstance(base, ast.Name) and base.id == "self" and parts[0] in roots and len(parts) > 1:
            chains.add(tuple(parts[1:]))
    return chains


def load_data_module(name: str):
    """A module of tests/data (the FAKE tensorrt and cudart), loaded by path."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "tests/data" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cudart_chains() -> set[tuple[str, ...]]:
    """Every `cudart.A.B` / `self.cudart.A` chain in the TensorRT package (cuda-python's runtime API)."""
    return set().union(*(attribute_chains(path, ("cudart",)) for path in PACKAGE.glob("*.py")))


def real_cudart():
    """The installed cuda.bindings.runtime, or skip: the `tensorrt` extra (make venv) installs it."""
    try:
        from cuda.bindings import runtime
    except ImportError as exc:
        pytest.skip(f"cuda.bindings not importable ({exc}); pip install -c constraints.txt cuda-bindings")
    return runtime


def test_every_tensorrt_name_the_code_uses_exists_in_every_release_it_claims(shared_fixtures):
    """The common path runs on every supported line, so its names must exist in every fixture."""
    chains = set().union(*(attribute_chains(path) for path in TENSORRT_MODULES))
    assert ("BuilderFlag",) in chains and ("NetworkDefinitionCreationFlag", "STRONGLY_TYPED") in chains
    missing = []
    for version in ALL_FIXTURES:
        identifiers = names_of(shared_fixtures, version)
        for chain in sorted(chains):
            # __version__ is set by the tensorrt package's Python __init__, not by the bindings listed.
            missing += [
                f"{'.'.join(chain)} ({version})" for n in chain if not n.startswith("__") and not exists(n, identifiers)
            ]
    assert not missing


def test_version_specific_names_exist_in_the_releases_their_line_claims(shared_fixtures):
    """The translation table's builder flags, per release line, against that line's fixtures; and the
    flags TensorRT 11 removed are asked of no 11.x line."""
    for line in RELEASE_LINES:
        wanted = {flag for flags in line.precision_flags.values() for flag in flags}
        wanted |= set(options.VERSION_COMPATIBLE_FLAGS) | (set(options.DLA_FLAGS) if line.dla else set())
        for version in line.fixtures:
            identifiers = names_of(shared_fixtures, version)
            assert [name for name in sorted(wanted) if not exists(name, identifiers)] == [], (line.name, version)
    eleven = names_of(shared_fixtures, "11.4.0.106")
    assert not exists("FP16", eleven) and not exists("int8_calibrator", eleven)  # the fixture knows the removal


def test_method_names_called_on_tensorrt_objects_exist_in_every_release(shared_fixtures):
    """Attributes called on TensorRT's objects (builder.create_network, context.execute_async_v3, ...)
    have no `trt.` prefix; every attribute in the TensorRT modules that is neither TensorRT's (in every
    fixture) nor Python's, NumPy's, onnx's or this package's own is a misspelt TensorRT name."""
    import leaneye.backends.tensorrt.backend as backend_module

    ours = set()
    for path in [*PACKAGE.glob("*.py"), STAGE]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                ours.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
                ours.add(node.attr)
    records = (Target, BuildOptions, options.BuildPlan, options.TensorSpec, Platform, builder.BuiltPlan, BackendOptions)
    ours |= {field.name for record in records for field in dataclasses.fields(record)}
    python = set().union(*(dir(kind) for kind in (str, bytes, dict, list, Path, np, np.ndarray, logging, onnx)))
    python |= set(dir(onnx.ModelProto)) | set(dir(backend_module)) | {"ParameterError"}
    python |= {name for chain in cudart_chains() for name in chain}  # checked against cuda-python below
    fixtures = [names_of(shared_fixtures, version) for version in ALL_FIXTURES]
    unknown = set()
    for path in (PACKAGE / "builder.py", PACKAGE / "backend.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr not in ours | python:
                if not all(exists(node.attr, identifiers) for identifiers in fixtures):
                    unknown.add(node.attr)
    assert unknown == set()


# --- option translation per release -------------------------------------------------------------


@pytest.mark.parametrize(
    "version, precision, flags, strongly_typed, cast",
    [
        ("10.3.0", "fp32", (), False, False),
        ("10.3.0", "fp16", ("FP16",), False, False),
        ("10.16.1.11", "int8", ("INT8",), False, False),
        ("10.16.1.11", "fp8", ("FP8",), False, False),
        ("11.4.0.106", "fp16", (), True, True),
        ("11.4.0.106", "int8", (), True, False),
        ("11.0.0", "fp8", (), True, False),
        ("11.5.0", "fp16", (), True, True),
    ],
)
def test_precision_becomes_flags_on_10_and_strong_types_on_11(version, precision, flags, strongly_typed, cast):
    plan = translate(BuildOptions(precision=precision), version, "9.0")
    assert (plan.builder_flags, plan.strongly_typed, plan.cast_onnx_to_fp16) == (flags, strongly_typed, cast)


def test_dla_exists_in_10_and_from_11_4_1_only():
    dla = BuildOptions(precision="fp16", dla_core=0)
    assert translate(dla, "10.3.0", "8.7").builder_flags == ("FP16", "GPU_FALLBACK")
    assert translate(dla, "11.4.1", "8.7").builder_flags == ("GPU_FALLBACK",)
    for version in ("11.0.0", "11.3.9", "11.4.0.106"):
        with pytest.raises(LeanEyeError, match=rf"^--dla-core 0: TensorRT {version} has no DLA support"):
            translate(dla, version, "8.7")
    with pytest.raises(LeanEyeError, match="DLA runs fp16 or int8, not fp32"):
        translate(BuildOptions(dla_core=0), "10.3.0", "8.7")


def test_what_the_gpu_or_tensorrt_lacks_is_one_line():
    with pytest.raises(LeanEyeError, match=r"^--precision fp8: this GPU \(compute capability 8.7\) lacks it"):
        translate(BuildOptions(precision="fp8"), "10.3.0", "8.7")
    assert translate(BuildOptions(precision="fp8"), "10.3.0", "8.9").builder_flags == ("FP8",)
    with pytest.raises(LeanEyeError, match=r"^TensorRT 8.6.1: not supported; leaneye builds with TensorRT 10.x"):
        translate(BuildOptions(), "8.6.1", "8.7")
    assert translate(BuildOptions(version_compatible=True), "10.3.0", "8.7").builder_flags == ("VERSION_COMPATIBLE",)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch", "4:2:8"], r"^--batch: expected MIN <= OPT <= MAX, got 4:2:8$"),
        (["--batch", "1:2"], r"^--batch: expected MIN:OPT:MAX, 3 positive integers"),
        (["--workspace", "-1"], r"^--workspace: expected 0 \(TensorRT's default\)"),
        (["--dla-core", "-1"], r"^--dla-core: expected none or a DLA core number"),
    ],
)
def test_bad_build_options_name_the_flag(tmp_path, capsys, argv, message):
    from leaneye_compress.cli import main

    onnx_path = TINY_ENGINE_DIR / "model.onnx"
    assert main(["engine", "--onnx", str(onnx_path), "--precision", "fp16", "--out", str(tmp_path / "e"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0].split("error: ", 1)[-1]), err


# --- manifest target and matching ---------------------------------------------------------------

PLAN_TARGET = {
    "tensorrt_version": "10.3.0",
    "compute_capability": "8.7",
    "device_name": "Orin",
    "onnx_sha256": "ab" * 32,
    "tensorrt_build": {
        "precision": "int8",
        "workspace_mb": 0,
        "dla_core": None,
        "batch": None,
        "version_compatible": False,
    },
    "tensorrt_io": [{"name": "images", "mode": "input", "dtype": "float", "shape": [1, 3, 64, 96]}],
}


def tiny_manifest(**changes) -> dict:
    data = json.loads((TINY_ENGINE_DIR / "manifest.json").read_text())
    data.update(changes)
    return data


def test_the_tensorrt_target_block_round_trips():
    manifest = parse_manifest(tiny_manifest(backend="tensorrt", target=PLAN_TARGET))
    assert manifest.target.tensorrt_build == BuildOptions(precision="int8")
    assert manifest.target.tensorrt_io[0].shape == (1, 3, 64, 96)
    assert manifest.to_dict()["target"] == PLAN_TARGET


@pytest.mark.parametrize(
    "change, message",
    [
        ({"tensorrt_build": {"precision": "int4"}}, r"'target.tensorrt_build.precision': expected one of fp32"),
        ({"tensorrt_build": {"batch": [8, 1, 1]}}, r"'target.tensorrt_build.batch': expected MIN <= OPT <= MAX"),
        ({"tensorrt_build": {"fast": True}}, r"'target.tensorrt_build.fast': unknown"),
        ({"tensorrt_io": [{"name": "x"}]}, r"'target.tensorrt_io\[0\]': expected an object with name, mode"),
        ({"onnx_sha256": "xyz"}, r"'target.onnx_sha256': expected the ONNX's sha256"),
    ],
)
def test_a_malformed_tensorrt_target_names_its_field(change, message):
    with pytest.raises(LeanEyeError, match=message):
        parse_manifest(tiny_manifest(backend="tensorrt", target={**PLAN_TARGET, **change}), "e/manifest.json")


def target(**fields) -> Target:
    return parse_manifest(tiny_manifest(target={**PLAN_TARGET, **fields})).target


@pytest.mark.parametrize(
    "running, fits",
    [
        (ORIN, True),
        (Platform("10.3.0.26", "Orin", "8.7"), False),
        (Platform("10.16.1.11", "Orin", "8.7"), False),
        (Platform("10.3.0", "Orin", "8.6"), False),
        (Platform("10.3.0", "Orin Nano", "8.7"), False),
    ],
)
def test_a_plan_runs_only_on_the_tensorrt_and_gpu_that_built_it(running, fits):
    assert (plan_mismatch(target(), running) is None) == fits


def test_a_version_compatible_plan_runs_on_later_tensorrt_on_the_same_gpu():
    compatible = target(tensorrt_build={**PLAN_TARGET["tensorrt_build"], "version_compatible": True})
    assert plan_mismatch(compatible, Platform("11.4.0.106", "Orin", "8.7")) is None
    assert "or later only" in plan_mismatch(compatible, Platform("10.2.0", "Orin", "8.7"))
    assert plan_mismatch(compatible, Platform("11.4.0.106", "NVIDIA H200", "9.0")) is not None


def test_a_mismatch_is_one_line_naming_both_sides_and_how_to_rebuild():
    with pytest.raises(LeanEyeError) as caught:
        platform.check_plan_target(Path("e/model.plan"), target(), H200_TRT11)
    text = str(caught.value)
    assert "\n" not in text and text.startswith("e/model.plan: it was built for TensorRT 10.3.0 on Orin")
    assert "TensorRT 11.4.0.106 on NVIDIA H200 (compute capability 9.0)" in text and "leaneye-compress engine" in text
    with pytest.raises(LeanEyeError, match="does not say which TensorRT and GPU built it"):
        platform.check_plan_target(Path("e/model.plan"), None, ORIN)


# --- build-on-target cache ----------------------------------------------------------------------


def test_cache_keys_change_with_each_thing_a_plan_depends_on():
    base = cache_key("ab" * 32, ORIN, BuildOptions(precision="fp16"))
    others = {
        cache_key("cd" * 32, ORIN, BuildOptions(precision="fp16")),
        cache_key("ab" * 32, dataclasses.replace(ORIN, tensorrt_version="10.3.1"), BuildOptions(precision="fp16")),
        cache_key("ab" * 32, dataclasses.replace(ORIN, device_name="Orin Nano"), BuildOptions(precision="fp16")),
        cache_key("ab" * 32, dataclasses.replace(ORIN, compute_capability="8.6"), BuildOptions(precision="fp16")),
        cache_key("ab" * 32, ORIN, BuildOptions(precision="int8")),
        cache_key("ab" * 32, ORIN, BuildOptions(precision="fp16", workspace_mb=64)),
        cache_key("ab" * 32, ORIN, BuildOptions(precision="fp16", version_compatible=True)),
    }
    assert base == cache_key("ab" * 32, ORIN, BuildOptions(precision="fp16")) and base not in others
    assert len(others) == 7


# --- the builder's logic, against the FAKE tensorrt ---------------------------------------------


@pytest.fixture
def fake_trt(shared_fixtures, monkeypatch):
    """fake_trt(version, dla_cores=0, cuda=None): the FAKE tensorrt of that release, installed as `tensorrt`."""
    fake = load_data_module("fake_tensorrt")

    def install(version: str, dla_cores: int = 0, cuda=None):
        module = fake.fake_tensorrt(version, set(names_of(shared_fixtures, version)), dla_cores, cuda)
        monkeypatch.setitem(sys.modules, "tensorrt", module)
        return module

    return install


def dynamic_onnx(path: Path) -> Path:
    """A real one-Conv ONNX with a dynamic batch dimension."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2, 3, 1, 1], np.ones(6, np.float32))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["out"], name="conv")],
        "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 2, 8, 8])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # loadable by the oldest ONNX Runtime the vehicle side supports (1.23 in .venv-numpy1)
    onnx.save(model, path)
    return path


def fake_build(trt, onnx_bytes, build_options, running, timing=b""):
    built = builder.build_plan(trt, onnx_bytes, build_options, running, "m.onnx", timing, log=lambda _: None)
    return json.loads(built.plan), built


def test_the_builder_sets_what_each_release_needs(fake_trt, tmp_path):
    onnx_bytes = dynamic_onnx(tmp_path / "m.onnx").read_bytes()
    ten, built = fake_build(fake_trt("10.3.0"), onnx_bytes, BuildOptions("fp16", 256, None, (1, 2, 4)), ORIN, b"t")
    assert ten["builder_flags"] == ["FP16"] and ten["network_flags"] == 0 and not ten["onnx_has_float16"]
    assert ten["pools"] == {"WORKSPACE": 256 << 20}
    assert ten["profiles"] == [{"images": [[1, 3, 8, 8], [2, 3, 8, 8], [4, 3, 8, 8]]}]
    assert built.timing_cache == b"t+timing" and [t.mode for t in built.tensors] == ["input", "output"]
    eleven, _ = fake_build(fake_trt("11.4.0.106"), onnx_bytes, BuildOptions("fp16"), H200_TRT11)
    assert eleven["builder_flags"] == [] and eleven["network_flags"] == 1 << 0 and eleven["onnx_has_float16"]
    dla, _ = fake_build(fake_trt("10.3.0", dla_cores=2), onnx_bytes, BuildOptions("int8", dla_core=1), ORIN)
    assert (dla["builder_flags"], dla["device"], dla["dla_core"]) == (["INT8", "GPU_FALLBACK"], "DLA", 1)


def test_the_fp16_cast_for_tensorrt_11_keeps_the_outputs(tmp_path):
    """Checked with ONNX Runtime: the cast model computes what the float32 one does, within FP16."""
    import onnxruntime

    onnx_bytes = dynamic_onnx(tmp_path / "m.onnx").read_bytes()
    x = np.random.default_rng(0).uniform(0, 255, (2, 3, 8, 8)).astype(np.float32)
    run = [
        onnxruntime.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
        for m in (onnx_bytes, builder.fp16_onnx(onnx_bytes, "m.onnx"))
    ]
    assert run[1].dtype == np.float32 and np.allclose(run[0], run[1], rtol=2e-3)


def test_builder_errors_are_one_line(fake_trt, tmp_path):
    onnx_bytes = dynamic_onnx(tmp_path / "m.onnx").read_bytes()
    trt = fake_trt("10.3.0")
    with pytest.raises(LeanEyeError, match=r"^m.onnx: TensorRT's ONNX parser rejects node Conv_0 \(Conv\): "):
        fake_build(trt, b"not an onnx", BuildOptions(), ORIN)
    with pytest.raises(LeanEyeError, match=r"^--dla-core 0: this machine \(Orin\) has no DLA$"):
        fake_build(trt, onnx_bytes, BuildOptions("fp16", dla_core=0), ORIN)
    with pytest.raises(LeanEyeError, match=r"timing cache is corrupt or from another TensorRT or GPU"):
        fake_build(trt, onnx_bytes, BuildOptions(), ORIN, b"foreign")
    fixed = (TINY_ENGINE_DIR / "model.onnx").read_bytes()
    with pytest.raises(LeanEyeError, match=r"^--batch 1:2:4: input 'images' of m.onnx has a fixed batch of 1"):
        fake_build(trt, fixed, BuildOptions(batch=(1, 2, 4)), ORIN)


def test_the_build_on_target_cache_reuses_and_rebuilds(fake_trt, tmp_path, monkeypatch):
    onnx_path = dynamic_onnx(tmp_path / "model.onnx")
    trt, build_options = fake_trt("10.3.0"), BuildOptions("fp16")
    builds = []
    real_build = cache.build_plan
    monkeypatch.setattr(cache, "build_plan", lambda *a, **k: builds.append(1) or real_build(*a, **k))
    plan = cache.cached_plan(trt, onnx_path, build_options, ORIN)
    assert plan.parent == tmp_path / "tensorrt_cache" and len(builds) == 1
    assert cache.cached_plan(trt, onnx_path, build_options, ORIN) == plan and len(builds) == 1  # reused
    plan.write_bytes(b"corrupt")
    assert cache.cached_plan(trt, onnx_path, build_options, ORIN) == plan and len(builds) == 2  # rebuilt
    record = plan.with_suffix(".json")
    record.write_text(json.dumps({**json.loads(record.read_text()), "identity": {"onnx_sha256": "other"}}))
    cache.cached_plan(trt, onnx_path, build_options, ORIN)
    assert len(builds) == 3 and json.loads(plan.read_bytes())["builder_flags"] == ["FP16"]
    cache.cached_plan(trt, onnx_path, BuildOptions("int8"), ORIN)  # other options: another entry
    assert len(builds) == 4 and len(list((tmp_path / "tensorrt_cache").glob("*.plan"))) == 2


def test_the_engine_stage_writes_a_plan_engine_leaneye_reads(fake_trt, tmp_path):
    from leaneye_compress.stages.engine_build import build_engine

    fake_trt("11.4.0.106")
    timing = tmp_path / "timing.cache"
    record, skipped = build_engine(
        BuildOptions("fp16"), tmp_path / "e", engine=TINY_ENGINE_DIR, timing_cache=timing, platform=H200_TRT11
    )
    manifest = load_manifest(tmp_path / "e")
    assert not skipped and manifest.backend == "tensorrt" and manifest.model == "model.plan"
    assert manifest.target.tensorrt_version == "11.4.0.106" and manifest.target.tensorrt_build.precision == "fp16"
    assert manifest.target.onnx_sha256 == load_manifest(TINY_ENGINE_DIR).model_sha256
    assert record["details"]["strongly_typed"] and timing.read_bytes() == b"+timing"
    again, skipped = build_engine(BuildOptions("fp16"), tmp_path / "e", engine=TINY_ENGINE_DIR, platform=H200_TRT11)
    assert skipped
    with pytest.raises(LeanEyeError, match=r"^--precision int8: .* has no QuantizeLinear/DequantizeLinear nodes"):
        build_engine(BuildOptions("int8"), tmp_path / "q", engine=TINY_ENGINE_DIR, platform=H200_TRT11)
    assert not (tmp_path / "q").exists()


# --- without TensorRT and CUDA ------------------------------------------------------------------


def test_a_missing_tensorrt_is_one_line_naming_the_package(monkeypatch):
    from leaneye.backends import load_backend

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # absent, whatever this machine has
    with pytest.raises(LeanEyeError, match="option device='cpu' is not supported"):  # a GPU backend: cuda:N only
        load_backend("tensorrt", "e/model.plan", "images", (1, 3, 64, 96), BackendOptions(device="cpu"))
    for device in (None, "cuda:0"):  # None: its first device, cuda:0
        with pytest.raises(LeanEyeError) as caught:
            load_backend("tensorrt", "e/model.plan", "images", (1, 3, 64, 96), BackendOptions(device=device))
        text = str(caught.value)
        assert "\n" not in text and "the tensorrt Python package" in text and "pip install tensorrt" in text


def test_import_leaneye_and_help_never_import_tensorrt_or_cuda():
    # Modules already there at start-up are not leaneye's doing: cuda-bindings' .pth file imports the
    # `cuda` namespace package at every start.
    code = (
        "import sys\n"
        "at_start = set(sys.modules)\n"
        "import leaneye, leaneye.engine, leaneye.backends, leaneye.backends.tensorrt.backend\n"
        "from leaneye.cli import build_parser\n"
        "build_parser().format_help()\n"
        "print(sorted(m for m in set(sys.modules) - at_start if m.split('.')[0] in ('tensorrt', 'cuda', 'pycuda')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# --- cuda-python: the real cuda.bindings.runtime (no driver here) and the FAKE one ---------------


def test_every_cudart_name_the_code_uses_exists_in_cuda_bindings():
    """Like the TensorRT names: each `cudart.X.Y` the package uses resolves in the installed cuda-python,
    the CUDA-graph calls (not runnable without a GPU) included."""
    runtime = real_cudart()
    chains = cudart_chains()
    assert ("cudaGraphLaunch",) in chains and ("cudaStreamCaptureMode", "cudaStreamCaptureModeThreadLocal") in chains

    def resolves(chain):
        value = runtime
        for name in chain:
            value = getattr(value, name, None)
        return value is not None

    assert sorted(".".join(chain) for chain in chains if not resolves(chain)) == []


def test_the_fake_cudart_has_only_names_of_the_real_one():
    runtime = real_cudart()
    fake = load_data_module("fake_cudart").fake_cudart()
    public = [name for name in vars(fake) if not name.startswith(("_", "fake_"))]
    assert "cudaMemcpyAsync" in public and [name for name in public if not hasattr(runtime, name)] == []
    for enum_name in ("cudaError_t", "cudaMemcpyKind", "cudaStreamCaptureMode"):
        real_members = getattr(runtime, enum_name).__members__
        fake_members = getattr(fake, enum_name).__members__
        assert {m: int(v) for m, v in fake_members.items()} == {m: int(real_members[m]) for m in fake_members}


def test_real_cuda_bindings_answer_one_line_or_run(shared_fixtures):
    """The real cuda.bindings.runtime. Without a driver or GPU (here): `running_platform` and
    `StreamBuffers` fail as one line naming CUDA's error. On a GPU: buffers round-trip a tensor, a
    captured CUDA graph replays a copy, and everything is freed."""
    from leaneye.backends.tensorrt.cuda_memory import StreamBuffers
    from leaneye.backends.tensorrt.libraries import cuda_check, running_platform

    cudart = real_cudart()
    trt = load_data_module("fake_tensorrt").fake_tensorrt("10.3.0", set(names_of(shared_fixtures, "10.3.0")))
    tensors = {"a": ((2, 3), np.float32), "b": ((2, 3), np.float32)}
    if cudart.cudaGetDeviceCount()[0] != cudart.cudaError_t.cudaSuccess:
        for call in (lambda: running_platform(trt, cudart, 0), lambda: StreamBuffers(cudart, tensors)):
            with pytest.raises(LeanEyeError) as caught:
                call()
            text = str(caught.value)
            assert "\n" not in text and re.search(r"\((cudaErrorInsufficientDriver|cudaErrorNoDevice)\)$", text), text
        return
    assert running_platform(trt, cudart, 0).compute_capability.count(".") == 1
    buffers = StreamBuffers(cudart, tensors)
    try:
        a, b = buffers.host("a"), buffers.host("b")

        def copy_a_to_b(stream_handle):
            kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice
            cuda_check(
                cudart,
                cudart.cudaMemcpyAsync(buffers.device("b"), buffers.device("a"), a.nbytes, kind, stream_handle),
                "copy",
            )

        buffers.capture_graph(copy_a_to_b)
        for value in (1.5, -2.0):
            a[:] = value
            buffers.to_device("a")
            buffers.launch_graph()
            buffers.to_host("b")
            buffers.synchronize()
            assert (b == value).all()
    finally:
        buffers.free()


def test_stream_buffers_free_everything_when_an_allocation_fails():
    from leaneye.backends.tensorrt.cuda_memory import StreamBuffers

    fake = load_data_module("fake_cudart").fake_cudart(allocations=3)
    tensors = {"images": ((1, 3, 8, 8), np.float32), "out": ((1, 2), np.float32)}
    with pytest.raises(
        LeanEyeError, match=r"^CUDA cannot allocate 8 bytes for 'out': out of memory \(cudaErrorMemoryAllocation\)$"
    ):
        StreamBuffers(fake, tensors)
    assert fake.fake_live == {} and fake.fake_calls["cudaMallocHost"] == 2


# --- build on target: leaneye-compress engine --on-target, then the first load builds ------------


@pytest.fixture
def fake_gpu(fake_trt, monkeypatch):
    """fake_gpu(version): the FAKE cudart (an H200) and the FAKE tensorrt of that release, installed."""

    def install(version: str):
        cuda = load_data_module("fake_cudart").fake_cudart()
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cuda)
        return fake_trt(version, cuda=cuda), cuda

    return install


def on_target_engine(tmp_path, *flags) -> Path:
    from leaneye_compress.cli import main

    out = tmp_path / "e"
    command = ["engine", "--engine", str(TINY_ENGINE_DIR), "--precision", "fp16", "--out", str(out), "--on-target"]
    assert main([*command, *flags]) == 0
    return out


FRAME = np.random.default_rng(1).integers(0, 255, (300, 500, 3), dtype=np.uint8)


def test_on_target_writes_the_onnx_and_options_without_tensorrt(tmp_path, monkeypatch, capsys):
    from leaneye.detector import Detector

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # absent, whatever this machine has
    out = on_target_engine(tmp_path, "--workspace", "64")
    assert "its first load builds the plan" in capsys.readouterr().out
    manifest = load_manifest(out)
    source = (TINY_ENGINE_DIR / "model.onnx").read_bytes()
    assert (manifest.backend, manifest.model, manifest.precision) == ("tensorrt", "model.onnx", "fp16")
    assert (out / "model.onnx").read_bytes() == source and manifest.target.onnx_sha256 == manifest.model_sha256
    assert manifest.target.tensorrt_build == BuildOptions("fp16", workspace_mb=64)
    assert manifest.target.tensorrt_version is None and not (out / "model.plan").exists()
    record = json.loads((out / "record.json").read_text())
    assert record["stage"] == "engine" and record["config"]["on_target"]
    assert on_target_engine(tmp_path, "--workspace", "64") == out  # unchanged: kept
    assert "up to date" in capsys.readouterr().out
    with pytest.raises(LeanEyeError) as caught:
        Detector.from_engine(out)
    text = str(caught.value)
    assert "\n" not in text and text.startswith(f"{out / 'model.onnx'}: TensorRT needs the tensorrt Python package")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--on-target", "--timing-cache", "t.cache"], r"^--timing-cache: not used with --on-target"),
        (["--on-target", "--precision", "int8"], r"^--precision int8: .* has no QuantizeLinear/DequantizeLinear"),
    ],
)
def test_on_target_refuses_what_it_cannot_honour(tmp_path, capsys, argv, message):
    from leaneye_compress.cli import main

    command = ["engine", "--engine", str(TINY_ENGINE_DIR), "--precision", "fp16", "--out", str(tmp_path / "e")]
    assert main([*command, *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0].split("error: ", 1)[-1]), err
    assert not (tmp_path / "e").exists()


def test_on_target_needs_an_engine_directorys_manifest(tmp_path):
    from leaneye_compress.stages.engine_build import carry_onnx

    with pytest.raises(LeanEyeError, match=r"^--on-target: .*m.onnx is in no engine directory"):
        carry_onnx(BuildOptions(), tmp_path / "e", onnx=dynamic_onnx(tmp_path / "m.onnx"))


def test_the_first_load_builds_and_caches_later_loads_reuse(fake_gpu, tmp_path, caplog):
    """Through Detector.from_engine, as the CLI and the detector node load: the FAKE tensorrt builds and
    runs (with ONNX Runtime, on the FAKE cudart's memory) what the ONNX Runtime backend runs."""
    from leaneye.detector import Detector

    out = on_target_engine(tmp_path)
    fake_gpu("10.16.1.11")
    caplog.set_level(logging.INFO, logger="leaneye.tensorrt")
    with Detector.from_engine(TINY_ENGINE_DIR) as detector:
        expected = detector.detect(FRAME)
    assert len(expected.boxes) == 2  # what the tiny engine emits, after NMS

    def load_and_detect(why: str):
        caplog.clear()
        with Detector.from_engine(out) as detector:
            detections = detector.detect(FRAME)
        assert np.array_equal(detections.boxes, expected.boxes) and np.array_equal(detections.scores, expected.scores)
        assert why in caplog.text, caplog.text

    load_and_detect("building (none cached)")
    plans = list((out / "tensorrt_cache").glob("*.plan"))
    assert len(plans) == 1 and json.loads(plans[0].read_bytes())["builder_flags"] == ["FP16"]
    load_and_detect(": cached, ")
    plans[0].write_bytes(b"corrupt")
    load_and_detect("building (the plan does not match its recorded sha256)")
    # A plan whose record vouches for it but that TensorRT refuses: rebuilt at activate.
    record_path = plans[0].with_suffix(".json")
    record = json.loads(record_path.read_text())
    plans[0].write_bytes(b"{}")
    record_path.write_text(json.dumps({**record, "plan_sha256": hashlib.sha256(b"{}").hexdigest()}))
    load_and_detect("building (TensorRT could not deserialize the cached plan)")


def test_cuda_graph_replays_the_inference_and_frees_it(fake_gpu, tmp_path):
    from leaneye.detector import Detector

    out = on_target_engine(tmp_path)
    _, cuda = fake_gpu("11.4.0.106")
    with Detector.from_engine(out) as detector:
        plain = detector.detect(FRAME)
    assert cuda.fake_calls["cudaGraphLaunch"] == 0 and cuda.fake_live == {}
    with Detector.from_engine(out, extra={"cuda_graph": True}) as detector:
        for _ in range(3):
            replayed = detector.detect(FRAME)
        assert cuda.fake_calls["cudaGraphLaunch"] == 4  # activate's check on a blank input, then 3 frames
    assert np.array_equal(replayed.boxes, plain.boxes) and np.array_equal(replayed.class_ids, plain.class_ids)
    assert cuda.fake_live == {}  # graph, executable graph, buffers and stream all freed at deactivate
    with pytest.raises(
        LeanEyeError, match=r"^backend 'tensorrt': extra option cuda_graph: expected true or false, got 'yes'$"
    ):
        Detector.from_engine(out, extra={"cuda_graph": "yes"})


def test_pre_and_post_processing_go_to_the_device_where_torch_is_installed(fake_gpu, tmp_path):
    """With leaneye_compress's `torch` device stages: the frame is letterboxed by torch, handed to the plan
    by a device-to-device copy and its outputs decoded by torch; here on the FAKE cudart, whose "device"
    memory is host memory (CUDA says so), so torch works on the CPU. Same detections as the CPU stages."""
    pytest.importorskip("torch", reason="the device stages are leaneye_compress's, with PyTorch")
    from leaneye.detector import Detector

    out = on_target_engine(tmp_path)
    _, cuda = fake_gpu("10.16.1.11")
    with Detector.from_engine(out, extra={"device_pipeline": False}) as detector:
        assert detector.on_device is None
        expected = detector.detect(FRAME)
    for extra in ({}, {"cuda_graph": True}):
        detector = Detector.from_engine(out, extra=extra)
        assert type(detector.on_device).__name__ == "TensorRTTorchStages"
        copies = cuda.fake_calls["cudaMemcpyAsync"]
        found = detector.detect(FRAME)
        # One copy in and one per output, all within the device: none of them through the host.
        assert cuda.fake_calls["cudaMemcpyAsync"] - copies == 1 + len(detector.backend.output_names)
        detector.deactivate()
        detector.activate()  # new buffers: the stages bind to them
        again = detector.detect(FRAME)
        detector.deactivate()
        for detections in (found, again):
            assert np.array_equal(detections.class_ids, expected.class_ids)
            np.testing.assert_allclose(detections.boxes, expected.boxes, atol=1.0)
    assert cuda.fake_live == {}


def test_without_torch_the_tensorrt_backend_keeps_the_cpu_stages(fake_gpu, tmp_path):
    if importlib.util.find_spec("torch") is not None:
        pytest.skip("checks the environment without PyTorch (make test-numpy1)")
    from leaneye.backends.registry import device_stages_factory
    from leaneye.detector import Detector

    out = on_target_engine(tmp_path)
    fake_gpu("10.16.1.11")
    assert device_stages_factory() is None
    with Detector.from_engine(out) as detector:
        assert detector.on_device is None and len(detector.detect(FRAME).boxes) == 2
