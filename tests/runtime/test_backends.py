"""Backends: the life cycle the base class owns, options a backend honours or refuses, the registry
with a real entry-point plugin installed in a subprocess, the manifest's target block, and the
bound on a manifest's input size."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import engine_manifest

from leaneye.backends import (
    Backend,
    BackendOptions,
    backend_class,
    backend_names,
    format_extra_options,
    load_backend,
    parse_extra_options,
)
from leaneye.backends.onnxruntime import OnnxRuntimeBackend
from leaneye.cli import main as leaneye_main
from leaneye.detector import Detector
from leaneye.engine import MAX_INPUT_PIXELS, MAX_INPUT_SIDE, Target, load_manifest, parse_manifest, write_engine
from leaneye.errors import LeanEyeError

pytestmark = pytest.mark.runtime_core
pytest.importorskip("onnxruntime")

INPUT_SHAPE = (1, 3, 32, 32)
# For what never reads the model file: options, targets and manifests are checked before it is opened.
UNREAD_MODEL = Path("never-read.onnx")
# A NumPy backend for the registry tests, installed as a plugin distribution (test only).
IDENTITY_PLUGIN = '''
import numpy as np

from leaneye.backends import Backend


class IdentityBackend(Backend):
    """Test plugin: returns its input; takes one extra option."""

    name = "identity"
    extra_options = frozenset({"copies"})

    def _activate(self):
        pass

    def _infer(self, tensor):
        return [tensor.copy() for _ in range(self.options.extra.get("copies", 1))]

    def _deactivate(self):
        pass
'''


def doubling_model() -> bytes:
    """A real computation on the input, so that a run shows inference happened: output = 2 * images."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["images", "two"], ["doubled"])],
        "doubling",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, list(INPUT_SHAPE))],
        [helper.make_tensor_value_info("doubled", TensorProto.FLOAT, list(INPUT_SHAPE))],
        initializer=[numpy_helper.from_array(np.array(2.0, np.float32), "two")],
    )
    return _serialized(graph)


def detector_model() -> bytes:
    """Always emits one box of class 0 in the builtin decoder's layout (1, rows, 4 + classes)."""
    from onnx import TensorProto, helper, numpy_helper

    rows = np.array([[[4, 4, 20, 20, 0.9, 0.0]]], np.float32)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["emitted"], ["output"])],
        "one_box",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, list(INPUT_SHAPE))],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, list(rows.shape))],
        initializer=[numpy_helper.from_array(rows, "emitted")],
    )
    return _serialized(graph)


def _serialized(graph) -> bytes:
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def manifest_data(**changes) -> dict:
    data = {**engine_manifest(INPUT_SHAPE[2:], ["car", "person"], scale=1.0), "model_sha256": "0" * 64}
    data.update(changes)
    return data


@pytest.fixture
def model_path(tmp_path) -> Path:
    pytest.importorskip("onnx")  # absent from the NumPy-1 environment: only the tests that run a model skip
    path = tmp_path / "doubling.onnx"
    path.write_bytes(doubling_model())
    return path


@pytest.fixture
def identity_backend(tmp_path, monkeypatch) -> type[Backend]:
    """The test plugin's class, imported here directly (the registry tests install it properly)."""
    (tmp_path / "identity_plugin_direct.py").write_text(IDENTITY_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    import identity_plugin_direct

    return identity_plugin_direct.IdentityBackend


# --- life cycle --------------------------------------------------------------------------------


class RecordingBackend(OnnxRuntimeBackend):
    """The real ONNX Runtime backend, noting which of its hooks the base class calls."""

    def __init__(self, *args, **kwargs):
        self.calls = []
        super().__init__(*args, **kwargs)

    def _load(self, target):
        self.calls.append("load")
        super()._load(target)

    def _activate(self):
        self.calls.append("activate")
        super()._activate()

    def _infer(self, tensor):
        self.calls.append("infer")
        return super()._infer(tensor)

    def _deactivate(self):
        self.calls.append("deactivate")
        super()._deactivate()


def test_the_base_class_runs_the_hooks_in_order_and_checks_the_state(model_path):
    backend = RecordingBackend(model_path, "images", INPUT_SHAPE, BackendOptions(threads=1))
    assert backend.calls == ["load"] and not backend.active and backend.session is None
    tensor = np.random.default_rng(0).random(INPUT_SHAPE, np.float32)
    with pytest.raises(RuntimeError, match=r"backend 'onnxruntime' \(.*doubling.onnx\): infer\(\) before activate"):
        backend.infer(tensor)
    backend.activate()
    backend.activate()  # already active: nothing happens
    assert backend.calls == ["load", "activate"] and backend.active
    [doubled] = backend.infer(tensor)
    assert isinstance(doubled, np.ndarray)
    np.testing.assert_array_equal(doubled, tensor * 2)
    backend.deactivate()
    assert backend.session is None and not backend.active  # the session is freed
    backend.deactivate()  # already inactive: nothing happens
    with pytest.raises(RuntimeError, match="before activate"):
        backend.infer(tensor)
    backend.activate()  # as a ROS node going inactive -> active again
    np.testing.assert_array_equal(backend.infer(tensor)[0], tensor * 2)
    assert backend.calls == ["load", "activate", "infer", "deactivate", "activate", "infer"]


def test_a_failed_activate_leaves_the_backend_inactive(model_path):
    backend = OnnxRuntimeBackend(model_path, "pixels", INPUT_SHAPE)
    with pytest.raises(LeanEyeError, match=r"manifest field 'input.name' is 'pixels', but the model's inputs"):
        backend.activate()
    assert not backend.active
    with pytest.raises(RuntimeError, match="before activate"):
        backend.infer(np.zeros(INPUT_SHAPE, np.float32))


def test_a_backend_must_implement_the_hooks():
    class Incomplete(Backend):
        name = "incomplete"

        def _activate(self):
            pass

    with pytest.raises(TypeError, match="_deactivate"):
        Incomplete(UNREAD_MODEL, "images", INPUT_SHAPE)


# --- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        (
            BackendOptions(device="cuda:0"),
            r"^backend 'onnxruntime': option device='cuda:0' is not supported; it runs on cpu$",
        ),
        (
            BackendOptions(extra={"fp16": True}),
            r"^backend 'onnxruntime': unknown extra option 'fp16'; its extra options: none$",
        ),
    ],
)
def test_options_the_backend_does_not_honour_are_refused_in_one_line(options, message):
    with pytest.raises(LeanEyeError, match=message):
        OnnxRuntimeBackend(UNREAD_MODEL, "images", INPUT_SHAPE, options)


def test_a_backend_without_thread_control_refuses_a_thread_count_and_checks_its_extras(identity_backend):
    with pytest.raises(LeanEyeError, match=r"backend 'identity': option threads=2 is not supported"):
        identity_backend(UNREAD_MODEL, "images", INPUT_SHAPE, BackendOptions(threads=2))
    with pytest.raises(
        LeanEyeError, match=r"backend 'identity': unknown extra option 'copy'; its extra options: copies"
    ):
        identity_backend(UNREAD_MODEL, "images", INPUT_SHAPE, BackendOptions(extra={"copy": 2}))
    backend = identity_backend(UNREAD_MODEL, "images", INPUT_SHAPE, BackendOptions(extra={"copies": 2}))
    backend.activate()
    assert len(backend.infer(np.ones(INPUT_SHAPE, np.float32))) == 2


@pytest.mark.parametrize("threads", [-1, 1025, True, "2", 1.0])
def test_thread_counts_outside_the_range_are_refused(threads):
    with pytest.raises(LeanEyeError, match=r"^threads: expected 0 \(the backend's default\) to 1024, got"):
        BackendOptions(threads=threads)


def test_thread_counts_at_the_ends_of_the_range_are_taken():
    for threads in (0, 1024):
        assert OnnxRuntimeBackend(
            UNREAD_MODEL, "images", INPUT_SHAPE, BackendOptions(threads=threads)
        ).options.threads == (threads)


@pytest.mark.parametrize("options", [{"device": ""}, {"device": 0}, {"extra": ["fp16"]}, {"extra": {1: True}}])
def test_malformed_device_or_extra_is_refused(options):
    with pytest.raises(LeanEyeError, match=r"^(device|extra): expected"):
        BackendOptions(**options)


def test_no_device_means_the_backends_first():
    assert OnnxRuntimeBackend(UNREAD_MODEL, "images", INPUT_SHAPE, BackendOptions()).device == "cpu"


def test_backend_options_given_as_text_become_typed_extra_options():
    extra = parse_extra_options(["cuda_graph=true", "fp16=False", "workspace=64", "profile=fast"], "--backend-option")
    assert extra == {"cuda_graph": True, "fp16": False, "workspace": 64, "profile": "fast"}
    assert parse_extra_options(format_extra_options(extra), "again") == extra


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["cuda_graph"], "--backend-option: expected KEY=VALUE such as cuda_graph=true, got 'cuda_graph'"),
        (["=1"], "expected KEY=VALUE"),
        (["a=1", "a=2"], "--backend-option: a given twice"),
    ],
)
def test_malformed_backend_options_name_the_option(items, message):
    with pytest.raises(LeanEyeError, match=re.escape(message)):
        parse_extra_options(items, "--backend-option")


def test_the_cli_hands_device_and_backend_options_to_the_backend(tmp_path, capsys):
    engine = tmp_path / "engine"
    write_engine(engine, doubling_model(), manifest_data())
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    for flags, message in (
        (["--backend-option", "fp16=true"], "backend 'onnxruntime': unknown extra option 'fp16'"),
        (["--device", "cuda:0"], "backend 'onnxruntime': option device='cuda:0' is not supported"),
    ):
        assert leaneye_main(["detect", "--engine", str(engine), *flags, str(image)]) == 2
        assert message in capsys.readouterr().err


# --- registry ----------------------------------------------------------------------------------


def test_the_builtin_backend_is_registered():
    assert "onnxruntime" in backend_names()
    assert backend_class("onnxruntime") is OnnxRuntimeBackend
    backend = load_backend("onnxruntime", UNREAD_MODEL, "images", INPUT_SHAPE, BackendOptions(threads=1))
    assert isinstance(backend, OnnxRuntimeBackend) and backend.options.threads == 1
    with pytest.raises(LeanEyeError, match=r"^backend 'tensorrt9': expected one of .*onnxruntime"):
        backend_class("tensorrt9")


def install_test_plugins(site: Path, entry_points: str, modules: dict[str, str]) -> dict:
    """A real distribution `leaneye-test-plugins` in folder `site` (dist-info with METADATA and
    entry_points.txt, plus modules); returns the environment for a subprocess that has it on sys.path."""
    dist_info = site / "leaneye_test_plugins-0.1.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: leaneye-test-plugins\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    for name, source in modules.items():
        (site / f"{name}.py").write_text(source)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def run_python(script: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_an_entry_point_plugin_is_found_and_a_broken_one_is_a_one_line_error(tmp_path):
    env = install_test_plugins(
        tmp_path / "site",
        """
        [leaneye.backends]
        identity = leaneye_test_identity:IdentityBackend
        broken = leaneye_test_broken:BrokenBackend
        """,
        {
            "leaneye_test_identity": IDENTITY_PLUGIN,
            "leaneye_test_broken": "raise ImportError('libbroken.so.1: cannot open shared object file')\n",
        },
    )
    engine_dir = tmp_path / "broken_engine"
    result = run_python(
        f"""
        import json
        import numpy as np
        from leaneye.backends import backend_names, load_backend
        from leaneye.engine import parse_manifest, write_engine

        backend = load_backend("identity", {""!r}, "images", {INPUT_SHAPE!r})
        backend.activate()
        tensor = np.arange(np.prod({INPUT_SHAPE!r}), dtype=np.float32).reshape({INPUT_SHAPE!r})
        [out] = backend.infer(tensor)
        manifest = json.loads({json.dumps(json.dumps(manifest_data(backend="identity")))})
        write_engine({str(engine_dir)!r}, b"model", {{**manifest, "backend": "broken"}})
        print(json.dumps({{
            "names": backend_names(),
            "class": type(backend).__module__ + ":" + type(backend).__name__,
            "identity": bool(np.array_equal(out, tensor)),
            "manifest_backend": parse_manifest(manifest).backend,
        }}))
        """,
        env,
    )
    assert result.returncode == 0, result.stderr
    # Besides the built-in backends and the two plugins, leaneye_compress's `pytorch` where it is installed.
    installed = sorted({"broken", "identity", *backend_names()})
    assert json.loads(result.stdout) == {
        "names": installed,
        "class": "leaneye_test_identity:IdentityBackend",
        "identity": True,
        "manifest_backend": "identity",
    }
    # Here, without the plugin distribution, a manifest naming it is refused.
    with pytest.raises(LeanEyeError, match=r"field 'backend': expected one of .*onnxruntime.* \(got \"identity\"\)"):
        parse_manifest(manifest_data(backend="identity"))

    image = tmp_path / "frame.png"
    image.write_bytes(b"not read: the engine fails first")
    detect = run_python(
        f"from leaneye.cli import main; raise SystemExit(main(['detect', '--engine', {str(engine_dir)!r}, {str(image)!r}]))",
        env,
    )
    assert detect.returncode == 2
    assert detect.stderr.splitlines() == [
        "leaneye: error: entry point 'broken = leaneye_test_broken:BrokenBackend' (group leaneye.backends): "
        "cannot be loaded: libbroken.so.1: cannot open shared object file"
    ]


@pytest.mark.parametrize(
    "entry_point, message",
    [
        (
            "onnxruntime = leaneye_test_identity:IdentityBackend",
            "entry point 'onnxruntime = leaneye_test_identity:IdentityBackend' (group leaneye.backends): "
            "the name 'onnxruntime' is taken by the built-in backend",
        ),
        (
            "identity = leaneye_test_identity:np",
            "entry point 'identity = leaneye_test_identity:np' (group leaneye.backends): "
            "expected a subclass of leaneye.backends.Backend, got <module 'numpy'",
        ),
        (
            "twin = leaneye_test_identity:IdentityBackend",
            "entry point 'twin = leaneye_test_identity:IdentityBackend' (group leaneye.backends): "
            "the class's name attribute is 'identity', expected 'twin'",
        ),
    ],
)
def test_a_plugin_that_does_not_fit_is_a_one_line_error_naming_its_entry_point(tmp_path, entry_point, message):
    env = install_test_plugins(
        tmp_path / "site", f"[leaneye.backends]\n{entry_point}\n", {"leaneye_test_identity": IDENTITY_PLUGIN}
    )
    name = entry_point.split(" = ")[0]
    result = run_python(
        f"""
        from leaneye.backends import backend_class
        from leaneye.errors import LeanEyeError
        try:
            backend_class({name!r} if {name!r} != "onnxruntime" else "identity")
        except LeanEyeError as exc:
            print(exc)
        """,
        env,
    )
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    assert line.startswith(message), line


def test_entry_points_are_not_read_at_import(tmp_path):
    """Importing leaneye, its engine, backends and CLI must not scan the installed distributions."""
    result = run_python(
        """
        import importlib.metadata

        def refuse(*args, **kwargs):
            raise AssertionError("entry points read at import")

        importlib.metadata.entry_points = refuse
        import leaneye, leaneye.backends, leaneye.engine, leaneye.detector, leaneye.cli
        leaneye.cli.build_parser()
        """,
        dict(os.environ),
    )
    assert result.returncode == 0, result.stderr


# --- target block ------------------------------------------------------------------------------


@pytest.fixture
def detector_engine(tmp_path):
    """Writes an engine; its model is a placeholder unless asked for (what is refused never reads it)."""

    def write(runnable: bool = False, **changes) -> Path:
        path = tmp_path / f"engine{len(list(tmp_path.glob('engine*')))}"
        if runnable:
            pytest.importorskip("onnx")
        write_engine(path, detector_model() if runnable else b"placeholder, never read", manifest_data(**changes))
        return path

    return write


def test_the_target_block_round_trips_and_older_manifests_stay_valid(detector_engine):
    block = {"tensorrt_version": "10.3.0", "compute_capability": "8.7", "device_name": "Orin"}
    engine = detector_engine(target=block)
    manifest = load_manifest(engine)
    assert manifest.target == Target(tensorrt_version="10.3.0", compute_capability="8.7", device_name="Orin")
    assert json.loads((engine / "manifest.json").read_text())["target"] == block
    assert parse_manifest(manifest.to_dict()) == manifest
    older = load_manifest(detector_engine())
    assert older.target is None and "target" not in json.loads((detector_engine() / "manifest.json").read_text())
    assert "target" not in older.to_dict()


@pytest.mark.parametrize(
    "target, message",
    [
        ({"compute_capability": 8.7}, r"'target.compute_capability': expected major.minor as a string"),
        ({"compute_capability": "8"}, r"'target.compute_capability': expected major.minor"),
        ({"compute_capability": "sm_87"}, r"'target.compute_capability': expected major.minor"),
        ({"tensorrt_version": "ten"}, r"'target.tensorrt_version': expected a version string"),
        ({"onnxruntime_version": ["1", "17"]}, r"'target.onnxruntime_version': expected a version string"),
        ({"device_name": ""}, r"'target.device_name': expected the GPU's name"),
        ({"cuda_version": "12.6"}, r"'target.cuda_version': expected only tensorrt_version, compute_capability"),
        (["8.7"], r"'target': expected an object"),
    ],
)
def test_a_malformed_target_names_its_field(target, message):
    with pytest.raises(LeanEyeError, match=message) as error:
        parse_manifest(manifest_data(target=target), "engine/manifest.json")
    assert str(error.value).startswith("engine/manifest.json: field") and "\n" not in str(error.value)


@pytest.mark.parametrize(
    "target, message",
    [
        (
            {"compute_capability": "8.7"},
            r"the engine was built for compute capability 8.7 \(manifest field 'target.compute_capability'\), "
            r"but backend 'onnxruntime' runs on the CPU and has none",
        ),
        (
            {"tensorrt_version": "10.3.0"},
            r"built for tensorrt version 10.3.0 \(manifest field 'target.tensorrt_version'\), but backend",
        ),
        (
            {"onnxruntime_version": "999.1"},
            r"the engine was built for onnxruntime >= 999.1 \(manifest field 'target.onnxruntime_version'\), "
            r"but this machine has onnxruntime \d+\.\d+",
        ),
    ],
)
def test_the_onnxruntime_backend_refuses_a_target_it_does_not_meet(detector_engine, target, message):
    engine = detector_engine(target=target)
    with pytest.raises(LeanEyeError, match=message) as error:
        Detector.from_engine(engine)
    assert str(error.value).startswith(str((engine / "model.onnx").resolve())) and "\n" not in str(error.value)


def test_the_onnxruntime_backend_runs_a_target_it_meets(detector_engine):
    with Detector.from_engine(
        detector_engine(runnable=True, target={"onnxruntime_version": "1.0"}), threads=1
    ) as detector:
        found = detector.detect(np.zeros((32, 32, 3), np.uint8))
    assert found.names == ("car",)


def test_a_backend_that_checks_no_target_refuses_one(identity_backend):
    with pytest.raises(LeanEyeError, match=r"manifest field 'target.device_name' is 'Orin', but backend 'identity'"):
        identity_backend(UNREAD_MODEL, "images", INPUT_SHAPE, target=Target(device_name="Orin"))
    identity_backend(UNREAD_MODEL, "images", INPUT_SHAPE, target=Target())  # an empty block asks nothing


# --- input size bound --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape", [[1, 3, 100000, 100000], [1, 3, MAX_INPUT_SIDE + 1, 32], [1, 3, MAX_INPUT_SIDE, MAX_INPUT_SIDE]]
)
def test_an_input_shape_past_the_bounds_is_refused(shape):
    expected = f"H and W at most {MAX_INPUT_SIDE} and H \\* W at most {MAX_INPUT_PIXELS}"
    with pytest.raises(LeanEyeError, match=rf"field 'input.shape': expected \[1, 3, H, W\] with {expected}"):
        parse_manifest(manifest_data(input={**manifest_data()["input"], "shape": shape}))


def test_the_largest_input_within_the_bounds_is_taken():
    shape = [1, 3, MAX_INPUT_SIDE, MAX_INPUT_PIXELS // MAX_INPUT_SIDE]
    assert parse_manifest(manifest_data(input={**manifest_data()["input"], "shape": shape})).input.shape == tuple(shape)


def test_a_huge_input_shape_fails_before_anything_is_allocated(detector_engine, tmp_path, capsys):
    engine = detector_engine()
    data = json.loads((engine / "manifest.json").read_text())
    data["input"]["shape"] = [1, 3, 100000, 100000]  # 120 GB as float32
    (engine / "manifest.json").write_text(json.dumps(data))
    tracemalloc.start()
    try:
        with pytest.raises(LeanEyeError, match=r"manifest.json: field 'input.shape'"):
            Detector.from_engine(engine)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20, f"{peak} bytes allocated before the shape was refused"

    image = tmp_path / "frame.png"
    image.write_bytes(b"not read: the engine fails first")
    assert leaneye_main(["detect", "--engine", str(engine), str(image)]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"leaneye: error: {engine / 'manifest.json'}: field 'input.shape': expected [1, 3, H, W]")
