"""Stage output folders (artifacts.run_stage): written whole with a record.json, skipped while inputs
and config are unchanged, never half-written. Needs no PyTorch."""

from __future__ import annotations

import hashlib
import json

import pytest

from leaneye.errors import LeanEyeError
from leaneye_compress.artifacts import RECORD_NAME, read_record, run_stage

pytestmark = pytest.mark.torch_free


def _producer(calls: list):
    def produce(folder):
        calls.append(folder)
        (folder / "model.bin").write_bytes(b"weights")
        return {"metrics": {"mAP50": 0.5}, "details": {"note": "tiny"}}

    return produce


def test_record_then_skip_while_inputs_and_config_are_unchanged(tmp_path):
    source = tmp_path / "teacher.pt"
    source.write_bytes(b"teacher weights")
    out, calls = tmp_path / "pruned", []
    record, skipped = run_stage(
        "prune", out, {"checkpoint": source}, {"ratio": 0.5}, _producer(calls), versions=("leaneye",)
    )
    assert not skipped and len(calls) == 1 and (out / "model.bin").read_bytes() == b"weights"
    on_disk = json.loads((out / RECORD_NAME).read_text())
    assert on_disk == record == read_record(out)
    assert record["stage"] == "prune" and record["config"] == {"ratio": 0.5}
    assert record["inputs"] == {
        "checkpoint": {"path": str(source), "sha256": hashlib.sha256(b"teacher weights").hexdigest()}
    }
    assert record["metrics"] == {"mAP50": 0.5} and record["details"] == {"note": "tiny"}
    assert set(record["tool_versions"]) == {"leaneye"} and record["wall_s"] >= 0

    # Unchanged: skipped, nothing rerun.
    again, skipped = run_stage("prune", out, {"checkpoint": source}, {"ratio": 0.5}, _producer(calls))
    assert skipped and again == record and len(calls) == 1
    # A moved input with the same content is unchanged too.
    moved = tmp_path / "moved.pt"
    source.rename(moved)
    assert run_stage("prune", out, {"checkpoint": moved}, {"ratio": 0.5}, _producer(calls))[1]
    # Changed config or changed input content: the stage must rerun, which needs --force.
    moved.write_bytes(b"retrained teacher")
    for config in ({"ratio": 0.5}, {"ratio": 0.25}):
        with pytest.raises(LeanEyeError, match="made from other inputs or another config; pass --force"):
            run_stage("prune", out, {"checkpoint": moved}, config, _producer(calls))
    assert len(calls) == 1
    record, skipped = run_stage("prune", out, {"checkpoint": moved}, {"ratio": 0.25}, _producer(calls), force=True)
    assert not skipped and len(calls) == 2 and record["config"] == {"ratio": 0.25}


def test_a_folder_without_a_record_or_a_missing_input_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(LeanEyeError, match="has no record.json; pass --force"):
        run_stage("train", out, {}, {}, _producer([]))
    with pytest.raises(LeanEyeError, match="checkpoint .*absent.pt: file not found"):
        run_stage("prune", tmp_path / "new", {"checkpoint": tmp_path / "absent.pt"}, {}, _producer([]))
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("failure", [KeyboardInterrupt, RuntimeError])
def test_an_interrupted_stage_leaves_the_previous_output_and_no_temporary(tmp_path, failure):
    out = tmp_path / "out"
    run_stage("train", out, {}, {"iterations": 1}, _producer([]))
    before = (out / RECORD_NAME).read_bytes()

    def produce(folder):
        (folder / "model.bin").write_bytes(b"half")
        raise failure

    with pytest.raises(failure):
        run_stage("train", out, {}, {"iterations": 2}, produce, force=True)
    assert (out / RECORD_NAME).read_bytes() == before and (out / "model.bin").read_bytes() == b"weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
