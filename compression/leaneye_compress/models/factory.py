"""Any `torch.nn.Module` as a compression input: built by a `package.module:function` factory, its
weights read with `torch.load(weights_only=True)`; and the file format of such a module once pruned.

A pruned module no longer matches what its factory builds (its layers are narrower), so it is saved
as a "pruned module" file (`model.pt`), a dict that `torch.load(weights_only=True)` reads:

    {"format": "leaneye-pruned-module", "version": 1,
     "factory": "package.module:function",
     "input_shape": [1, 3, H, W],                 # the example input it was traced and checked with
     "structure": {module name: {attribute: int or [int, ...]}},   # widths of every resizable layer
     "state_dict": {...}, "meta": {...}}

`load_pruned_module` builds the factory's module, sets each listed layer's width attributes
(`in_channels`, `out_features`, `num_features`, ...), gives every parameter and buffer the shape
recorded in the state dict, loads the weights strictly and runs one forward pass on a zero input of
`input_shape`: a file that does not fit its factory fails there, in one line.
"""

from __future__ import annotations

import importlib
import io
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from leaneye.atomic import atomic_write_bytes
from leaneye.errors import LeanEyeError, first_line

FORMAT = "leaneye-pruned-module"
VERSION = 1

# The attributes that carry a layer's widths, per layer type (what structural pruning changes).
WIDTH_ATTRIBUTES: tuple[tuple[type, tuple[str, ...]], ...] = (
    (nn.modules.conv._ConvNd, ("in_channels", "out_channels", "groups")),
    (nn.Linear, ("in_features", "out_features")),
    (nn.modules.batchnorm._BatchNorm, ("num_features",)),
    (nn.GroupNorm, ("num_groups", "num_channels")),
    (nn.LayerNorm, ("normalized_shape",)),
    (nn.PReLU, ("num_parameters",)),
)


def import_factory(spec: str, option: str = "--model-factory") -> Callable[[], nn.Module]:
    """The callable named by `package.module:function` (one line naming `option` when it cannot be had)."""
    module_name, colon, function_name = spec.partition(":")
    if not colon or not module_name or not function_name:
        raise LeanEyeError(f"{option} {spec!r}: expected package.module:function")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the module raises while importing
        raise LeanEyeError(
            f"{option} {spec}: cannot import module {module_name!r} ({type(exc).__name__}: {first_line(exc)})"
        ) from None
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise LeanEyeError(f"{option} {spec}: module {module_name!r} has no callable {function_name!r}")
    return factory


def build_module(spec: str, option: str = "--model-factory") -> nn.Module:
    """Call the factory with no arguments; it must return a torch.nn.Module."""
    try:
        model = import_factory(spec, option)()
    except LeanEyeError:
        raise
    except Exception as exc:
        raise LeanEyeError(f"{option} {spec}: the factory failed ({type(exc).__name__}: {first_line(exc)})") from None
    if not isinstance(model, nn.Module):
        raise LeanEyeError(f"{option} {spec}: the factory returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _load_weights_file(path: Path) -> object:
    path = Path(path)
    if not path.is_file():
        raise LeanEyeError(f"--weights {path}: file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or hostile files
        raise LeanEyeError(
            f"--weights {path}: not a readable weights file ({type(exc).__name__}); "
            "expected a state dict saved with torch.save"
        ) from None


def _describe_mismatch(exc: RuntimeError) -> str:
    # load_state_dict lists every problem on its own line; the first concrete one names the layer.
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[1] if len(lines) > 1 else first_line(exc)


def load_factory_model(spec: str, weights: Path) -> nn.Module:
    """The factory's module with `weights` (a state dict, or a dict holding one under "state_dict") loaded strictly."""
    model = build_module(spec)
    state = _load_weights_file(weights)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LeanEyeError(f"--weights {weights}: expected a state dict (parameter name -> tensor)")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise LeanEyeError(
            f"--weights {weights}: does not fit --model-factory {spec} ({_describe_mismatch(exc)})"
        ) from None
    return model.eval()


def _width_attributes(module: nn.Module) -> tuple[str, ...]:
    for kind, attributes in WIDTH_ATTRIBUTES:
        if isinstance(module, kind):
            return attributes
    return ()


def module_structure(model: nn.Module) -> dict[str, dict]:
    """{module name: {width attribute: value}} of every layer whose widths pruning can change."""
    structure = {}
    for name, module in model.named_modules():
        attributes = _width_attributes(module)
        if attributes:
            structure[name] = {
                a: list(v) if isinstance(v, tuple) else int(v) for a in attributes for v in [getattr(module, a)]
            }
    return structure


def save_pruned_module(path: Path, model: nn.Module, factory: str, input_shape, meta: dict | None = None) -> None:
    buffer = io.BytesIO()
    torch.save(
        {
            "format": FORMAT,
            "version": VERSION,
            "factory": factory,
            "input_shape": [int(d) for d in input_shape],
            "structure": module_structure(model),
            "state_dict": model.state_dict(),
            "meta": meta or {},
        },
        buffer,
    )
    atomic_write_bytes(path, buffer.getvalue())


def is_pruned_module(data: object) -> bool:
    return isinstance(data, dict) and data.get("format") == FORMAT


def _resize(model: nn.Module, structure: dict, state: dict) -> None:
    """Give the layers the recorded widths and every tensor the recorded shape (values come from `state`)."""
    modules = dict(model.named_modules())
    for name, attributes in structure.items():
        module = modules.get(name)
        if module is None or set(attributes) != set(_width_attributes(module)):
            raise ValueError(f"structure names {name!r}, which the factory's module has not (or of another type)")
        for attribute, value in attributes.items():
            setattr(module, attribute, tuple(value) if isinstance(value, list) else value)
    for key, tensor in state.items():
        module_name, _, tensor_name = key.rpartition(".")
        module = modules.get(module_name)
        if module is None:
            continue  # load_state_dict names it as unexpected
        if tensor_name in module._parameters and module._parameters[tensor_name] is not None:
            current = module._parameters[tensor_name]
            if current.shape != tensor.shape:
                module._parameters[tensor_name] = nn.Parameter(
                    torch.empty(tensor.shape, dtype=current.dtype), current.requires_grad
                )
        elif tensor_name in module._buffers and module._buffers[tensor_name] is not None:
            current = module._buffers[tensor_name]
            if current.shape != tensor.shape:
                module._buffers[tensor_name] = torch.empty(tensor.shape, dtype=current.dtype)


def load_pruned_module(path: Path, data: dict | None = None) -> tuple[nn.Module, dict]:
    """Rebuild a pruned module from its file (see the module docstring); returns (module in eval mode, file data)."""
    path = Path(path)
    if data is None:
        if not path.is_file():
            raise LeanEyeError(f"{path}: file not found")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise LeanEyeError(f"{path}: not a readable pruned module ({type(exc).__name__})") from None
    if not is_pruned_module(data):
        raise LeanEyeError(f"{path}: expected a pruned module file (format {FORMAT!r})")
    if data.get("version") != VERSION:
        raise LeanEyeError(f"{path}: pruned module version {data.get('version')!r}; this tool reads version {VERSION}")
    for key in ("factory", "input_shape", "structure", "state_dict"):
        if key not in data:
            raise LeanEyeError(f"{path}: pruned module file has no {key!r}")
    model = build_module(data["factory"], option=f"{path}: factory")
    try:
        _resize(model, data["structure"], data["state_dict"])
        model.load_state_dict(data["state_dict"])
        model.eval()
        with torch.no_grad():
            model(torch.zeros(data["input_shape"]))
    except (TypeError, RuntimeError, ValueError) as exc:
        raise LeanEyeError(f"{path}: does not fit its factory {data['factory']} ({_describe_mismatch(exc)})") from None
    return model, data
