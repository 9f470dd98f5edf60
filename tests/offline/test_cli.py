"""`leaneye-compress` without PyTorch: `--help` loads no heavy module, and `import` (which runs on
Jetsons without a PyTorch wheel) imports and checks a model without torch. Also runs in the NumPy-1
environment, where torch is absent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from leaneye_compress.cli import main as compress_main  # noqa: E402

pytestmark = pytest.mark.torch_free

HEAVY = ("torch", "onnxruntime", "rosbags", "rclpy")


def _run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    # A fresh interpreter, so that modules other tests imported do not count.
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, check=False)


def test_help_loads_none_of_torch_onnxruntime_rosbags_rclpy():
    probe = (
        "import sys\n"
        "from leaneye_compress.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as exit:\n    assert exit.code == 0\n"
        f"print(','.join(name for name in {HEAVY!r} if name in sys.modules), file=sys.stderr)"
    )
    result = _run_python(probe)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: leaneye-compress") and all(
        command in result.stdout for command in ("train", "export", "import")
    )
    assert result.stderr.strip() == "", f"leaneye-compress --help imported: {result.stderr.strip()}"
    script = Path(sys.executable).parent / "leaneye-compress"
    assert script.is_file(), f"{script}: pip did not install the console script"
    assert subprocess.run([str(script), "--help"], capture_output=True, timeout=120, check=False).returncode == 0


def _builtin_model(path: Path, height=64, width=128, classes=2) -> Path:
    """A tiny ONNX model in the builtin layout: [1, N, 4 + classes], one confident box."""
    cells = sum((height // s) * (width // s) for s in (8, 16, 32))
    output = np.zeros((1, cells, 4 + classes), np.float32)
    output[0, 0] = [10, 10, 40, 30, 0.9, 0.0]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["emitted"], ["output"])],
        "builtin",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, height, width])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, list(output.shape))],
        initializer=[numpy_helper.from_array(output, "emitted")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def test_import_of_a_builtin_model_runs_without_torch_and_follows_the_input_contract(tmp_path):
    model = _builtin_model(tmp_path / "model.onnx")
    classes = tmp_path / "classes.txt"
    classes.write_text("car\nperson\n")
    engine = tmp_path / "engine"
    probe = (
        "import sys\n"
        "from leaneye_compress.cli import main\n"
        "code = main(['import', sys.argv[1], '--decoder', 'builtin', '--classes', sys.argv[2], '--out', sys.argv[3]])\n"
        "print('torch' in sys.modules, file=sys.stderr)\n"
        "sys.exit(code)"
    )
    result = _run_python(probe, str(model), str(classes), str(engine))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "False", "import loaded torch"
    from leaneye.engine import load_manifest
    from leaneye_compress.models import contract

    manifest = load_manifest(engine)
    assert manifest.input.color == contract.COLOR and manifest.input.scale == contract.SCALE
    assert manifest.letterbox_align == contract.LETTERBOX_ALIGN and manifest.letterbox_pad_value == contract.PAD_VALUE


@pytest.mark.parametrize("size", [["100000", "640"], ["0", "640"]])
def test_import_input_size_out_of_bounds_is_one_line(tmp_path, capsys, size):
    model = _builtin_model(tmp_path / "model.onnx")
    engine = tmp_path / "engine"
    assert (
        compress_main(["import", str(model), "--decoder", "builtin", "--out", str(engine), "--input-size", *size]) == 2
    )
    [line] = capsys.readouterr().err.strip().splitlines()
    assert f"--input-size {size[0]}x{size[1]}" in line and "expected sides from 1 to 8192" in line
    assert not engine.exists()
