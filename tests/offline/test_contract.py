"""LeanDet's input contract: the training and evaluation frames are exactly what the runtime's
own preparation (leaneye.detector.InputTensor) feeds an exported LeanDet. Needs no PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

from leaneye.detector import InputTensor
from leaneye.scenes.render import SceneSequence
from leaneye_compress.data import SceneSetConfig, render_scene_set
from leaneye_compress.models import contract

pytestmark = pytest.mark.torch_free


def test_scene_sets_hold_the_pixels_the_runtime_feeds_the_network(tmp_path):
    config = SceneSetConfig(first_seed=5, sequences=1, frames_per_sequence=2, frame_step=3, input_size=(96, 320))
    scene_set = render_scene_set(config, tmp_path, workers=1)
    tensor = InputTensor(contract.input_spec(config.input_size), contract.LETTERBOX_ALIGN, contract.PAD_VALUE)
    sequence = SceneSequence(config.first_seed, config.frame_size)
    for k in range(config.frames_per_sequence):
        frame = sequence.frame(k * config.frame_step)
        transform = tensor.fill(frame.image)
        assert transform == scene_set.transform
        np.testing.assert_array_equal(contract.network_input(scene_set.images[k : k + 1]), tensor.tensor)
    # The cached copy is the same set.
    cached = render_scene_set(config, tmp_path, workers=1)
    np.testing.assert_array_equal(cached.images, scene_set.images)


def test_the_contract_is_the_default_of_every_consumer():
    from leaneye_compress.stages.import_onnx import DEFAULTS, INPUT_FORMATS

    spec = contract.input_spec()
    assert spec.size == contract.INPUT_SIZE == (192, 640) and (spec.color, spec.scale) == ("bgr", 1 / 255)
    input_format, align, pad = DEFAULTS["builtin"]
    assert INPUT_FORMATS[input_format] == (spec.color, spec.scale) and (align, pad) == ("center", 114)
    scene_defaults = SceneSetConfig(first_seed=0, sequences=1, frames_per_sequence=1)
    assert (scene_defaults.input_size, scene_defaults.letterbox_align, scene_defaults.pad_value) == (
        contract.INPUT_SIZE,
        contract.LETTERBOX_ALIGN,
        contract.PAD_VALUE,
    )
