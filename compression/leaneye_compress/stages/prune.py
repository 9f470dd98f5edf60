"""Pruning stage: structural channel pruning of a LeanDet checkpoint (or any `module:factory` model)
to a FLOPs ratio, a latency measured on the target backend, or per-layer ratios.

    leaneye-compress prune MODEL --out DIR [--config YAML] [--flops-ratio R | --latency-ms MS]

Channels are removed for real (torch-pruning's DependencyGraph finds every layer coupled to a
channel: the next convolution's inputs, BatchNorms, residual additions, concatenations), so the
pruned network is smaller and faster everywhere, not only sparse. This stage decides how many
channels each coupled group keeps and which ones:

- how many: one ratio for every group (`global_ranking: false`, uniform widths), or one importance
  threshold across all groups (`global_ranking: true`); every kept width a multiple of `round_to`
  and at least `1 - max_layer_ratio` of the group's original width. The ratio is searched (by
  bisection, on copies) so that the FLOPs land at or just under the target;
- which ones: the least important by `importance` (magnitude: the group's L2 norm; bn_scale: its
  BatchNorm scales; taylor: |weight × gradient| of the detection loss on generated scenes);
- never: the detection head's output convolutions (`heads.*.cls_out`, `heads.*.box_out`; their
  output channels are the exported contract), and for any model every layer whose output reaches
  the model's outputs without passing another convolution or linear layer, plus `protect`.

Targets: `flops` prunes to `flops_ratio` of the original GFLOPs, in `steps` equal FLOPs steps;
`latency` prunes `latency_flops_step` of the original FLOPs at a time, exports the model to ONNX in
memory and measures its median latency on ONNX Runtime CPU FP32, until it is at most `latency_ms`
(or `latency_ratio` of the original's); `flops_ratio` is then the floor it never goes below;
`layers` prunes each named layer (or every layer under a named module) by its `layer_ratios` value,
in `steps`. Between steps, `recover_iterations` > 0 distills the pruned model briefly from the
unpruned one.

DIR receives `model.pt` (a LeanDet v2 checkpoint whose `layer_channels` hold the pruned widths; for
a `model_factory` model, the pruned-module format of models/factory.py) and `record.json` with
parameters, GFLOPs and measured latency of the original and after every step.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from leaneye.errors import LeanEyeError

from ..artifacts import run_stage
from ..config import bounded, positive, to_mapping
from ..frames import FramesConfig, GeneratedFrames
from .distill import DistillConfig
from .train import ScenesConfig, default_work_dir

STAGE = "prune"
IMPORTANCES = ("magnitude", "bn_scale", "taylor")
TARGETS = ("flops", "latency", "layers")
# The detection head's output convolutions: their output channels are the exported contract.
LEANDET_PROTECTED = ("cls_out", "box_out")
BISECTION_ROUNDS = 14


@dataclass(frozen=True)
class LatencyConfig:
    """ONNX Runtime CPU FP32 latency of the model exported in memory: the median of `runs` runs."""

    threads: int = positive(2)
    runs: int = bounded(50, low=0)  # 0: not measured (flops and layers targets only)
    warmup: int = bounded(5, low=0)


@dataclass(frozen=True)
class PruneConfig:
    target: str = bounded("flops", choices=TARGETS)
    flops_ratio: float = bounded(0.5, low=0.02, high=1.0)  # target flops: the goal; target latency: the floor
    latency_ms: float = bounded(0.0, low=0)  # target latency: the goal in ms ...
    latency_ratio: float = bounded(0.0, low=0, high=1)  # ... or as a fraction of the original's latency
    latency_flops_step: float = bounded(0.05, low=0.01, high=0.5)  # FLOPs (fraction of the original) per step
    # target layers: {module name: fraction of its channels to remove}; a name covers every layer under it
    layer_ratios: dict[str, float] = dataclasses.field(
        default_factory=dict, metadata=bounded(0.0, low=0, high=0.95).metadata
    )
    importance: str = bounded("magnitude", choices=IMPORTANCES)
    global_ranking: bool = False  # true: one importance threshold across layers (non-uniform widths)
    round_to: int = positive(8)
    max_layer_ratio: float = bounded(0.75, low=0, high=0.95)  # never remove more of any layer's channels
    steps: int = positive(1)
    recover_iterations: int = bounded(0, low=0)  # distillation iterations between steps
    # how the recovery distills (its `iterations` is recover_iterations): a small set of training scenes
    recover: DistillConfig = DistillConfig(
        frames=FramesConfig(scenes=GeneratedFrames(first_seed=1000, sequences=16, frames_per_sequence=4, frame_step=8))
    )
    # taylor importance: the detection loss on generated scenes (training seeds, never held-out ones)
    taylor_batches: int = positive(4)
    batch_size: int = positive(8)
    scenes: ScenesConfig = ScenesConfig(first_seed=1000, sequences=8, frames_per_sequence=4, frame_step=8)
    frame_size: tuple[int, int] = bounded((1224, 370), low=16, high=8192)
    latency: LatencyConfig = LatencyConfig()
    # any torch.nn.Module: MODEL is then its weights file
    model_factory: str = ""  # package.module:function
    input_shape: tuple[int, ...] = bounded((), low=1)  # its example input, e.g. [1, 3, 224, 224]
    protect: tuple[str, ...] = ()  # module names whose output channels are kept
    seed: int = bounded(0, low=0)

    def __post_init__(self):
        if self.target == "latency":
            if (self.latency_ms > 0) == (self.latency_ratio > 0):
                raise ValueError("target latency needs exactly one of latency_ms and latency_ratio above 0")
            if self.latency.runs == 0:
                raise ValueError("target latency needs latency.runs above 0")
        if self.target == "layers" and not self.layer_ratios:
            raise ValueError("target layers needs layer_ratios ({module name: ratio})")
        if self.model_factory and not self.input_shape:
            raise ValueError("model_factory needs input_shape (the example input, e.g. [1, 3, 224, 224])")
        if self.importance == "taylor" and self.model_factory:
            raise ValueError("importance taylor needs labelled scenes: LeanDet checkpoints only (use magnitude)")


# --- the model and what it measures -----------------------------------------------------------


class _Subject:
    """The model being pruned, with what differs between a LeanDet and a factory model."""

    def __init__(self, config: PruneConfig, path: Path):
        from ..checkpoint import load_model
        from ..models.factory import is_pruned_module, load_factory_model, load_pruned_module

        self.factory = config.model_factory
        self.class_names: list = []
        if self.factory:
            self.model = load_factory_model(self.factory, path)
            self.example = torch.zeros(config.input_shape)
        else:
            data = _peek(path)
            if is_pruned_module(data):  # pruning a pruned factory model further
                self.model, data = load_pruned_module(path, data)
                self.factory = data["factory"]
                self.example = torch.zeros(data["input_shape"])
            else:
                self.model, meta = load_model(path)
                self.class_names = list(meta["class_names"])
                c = self.model.config
                self.example = torch.zeros(1, 3, c.input_height, c.input_width)
        self.model.eval()
        # The dependency graph needs only the layers' connections: LeanDet traces at its smallest
        # input (every level at least 2x2), several times faster than at its full input size.
        self.trace_example = torch.zeros(1, 3, 64, 64) if not self.factory else self.example
        self.is_leandet = not self.factory

    def gflops(self, model: nn.Module) -> float:
        from ..models.detector import gflops

        if self.is_leandet:
            return gflops(model)
        costs = _layer_costs(model, self.example)
        return sum(cost * c_out * (1 if depthwise else c_in) for cost, c_in, c_out, depthwise in costs.values()) / 1e9

    def onnx(self, model: nn.Module) -> bytes:
        from .export import onnx_bytes

        if self.is_leandet:
            return onnx_bytes(model)
        return _module_onnx(model, self.example)

    def save(self, model: nn.Module, path: Path, meta: dict) -> None:
        from ..checkpoint import load_model, model_payload, save_checkpoint
        from ..models.factory import load_pruned_module, save_pruned_module

        if self.is_leandet:
            save_checkpoint(path, {**model_payload(model, self.class_names), "meta": meta})
            reloaded, _ = load_model(path)
        else:
            save_pruned_module(path, model, self.factory, self.example.shape, meta)
            reloaded, _ = load_pruned_module(path)
        # The file must rebuild this very model: same outputs on one input.
        x = torch.rand(self.example.shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            same = all(torch.equal(a, b) for a, b in zip(_tensors(model.eval()(x)), _tensors(reloaded(x))))
        if not same:
            raise RuntimeError(f"{path}: the saved pruned model does not reproduce the pruned model's outputs")


def _peek(path: Path):
    """The checkpoint's content, read safely; errors as checkpoint.read_checkpoint words them."""
    from ..checkpoint import read_checkpoint

    try:
        data = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception:
        return read_checkpoint(path)  # raises its one-line error
    return data


def _tensors(output) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    return [t for item in output for t in _tensors(item)]


def _module_onnx(model: nn.Module, example: torch.Tensor) -> bytes:
    """A factory model as ONNX bytes, for measuring its latency (the LeanDet export is export.onnx_bytes)."""
    import io

    import onnx

    from .export import OPSET, interruptible, quiet_exporter

    with interruptible(), quiet_exporter():
        program = torch.onnx.export(
            model.eval(), (example,), opset_version=OPSET, dynamo=True, external_data=False, verbose=False
        )
    buffer = io.BytesIO()
    onnx.save_model(program.model_proto, buffer)
    return buffer.getvalue()


def measure_latency_ms(onnx_model: bytes, config: LatencyConfig) -> float:
    """Median wall time (ms) of one ONNX Runtime CPU FP32 run on a random input of the model's shape."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = config.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx_model, sess_options=options, providers=["CPUExecutionProvider"])
    feed = {
        tensor.name: np.random.default_rng(0).random(tensor.shape, dtype=np.float32) for tensor in session.get_inputs()
    }
    for _ in range(config.warmup):
        session.run(None, feed)
    times = []
    for _ in range(config.runs):
        began = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - began) * 1e3)
    return statistics.median(times)


# --- channel groups ---------------------------------------------------------------------------


class _Groups:
    """The prunable channel groups of a model (torch-pruning's DependencyGraph), keyed by root layer name.

    A group is every layer whose channels must go together (a convolution's outputs, the next
    layers' inputs, its BatchNorm, the other operands of an addition); its root is its first
    convolution or linear layer.
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, protect: tuple[str, ...]):
        import torch_pruning as tp

        self.model = model
        self.graph = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
        modules = dict(model.named_modules())
        names = {module: name for name, module in modules.items()}
        self.protected = sorted(set(protect) | _output_layers(self.graph, names))
        ignored = [modules[name] for name in self.protected]
        roots = (nn.modules.conv._ConvNd, nn.Linear)
        self.groups = {}
        for group in self.graph.get_all_groups(ignored_layers=ignored, root_module_types=roots):
            self.groups[names[group[0].dep.target.module]] = group
        self.modules = modules
        self.names = names

    def channels(self, root: str) -> int:
        return self.graph.get_out_channels(self.modules[root])

    def members(self, root: str) -> list[str]:
        """Names of the layers whose output channels this group prunes."""
        return sorted(
            {
                self.names[dep.target.module]
                for dep, _ in self.groups[root]
                if self.graph.is_out_channel_pruning_fn(dep.handler) and dep.target.module in self.names
            }
        )

    def remove(self, root: str, indices: list[int]) -> None:
        module = self.modules[root]
        pruning_fn = self.graph.get_pruner_of_module(module).prune_out_channels
        group = self.graph.get_pruning_group(module, pruning_fn, indices)
        if not self.graph.check_pruning_group(group):
            raise RuntimeError(f"torch-pruning refused to prune {root} to {self.channels(root) - len(indices)}")
        group.prune()


def _output_layers(graph, names: dict) -> set[str]:
    """Layers whose outputs reach the model's outputs through no other convolution or linear layer."""
    roots = (nn.modules.conv._ConvNd, nn.Linear)
    found, seen = set(), set()
    stack = [node for node in graph.module2node.values() if not node.outputs]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node.module, roots) and node.module in names:
            found.add(names[node.module])
        else:
            stack.extend(node.inputs)
    return found


def _scores(groups: _Groups, importance: str) -> dict[str, torch.Tensor]:
    """Per-channel importance of every group, normalised by the group's mean (comparable across groups)."""
    import torch_pruning as tp

    scorers = {
        "magnitude": tp.importance.GroupMagnitudeImportance(p=2),
        "bn_scale": tp.importance.BNScaleImportance(),
        "taylor": tp.importance.GroupTaylorImportance(),
    }
    fallback = scorers["magnitude"]
    scores = {}
    for root, group in groups.groups.items():
        score = scorers[importance](group)
        if score is None:  # a group without BatchNorm (bn_scale) or gradients: its weights' magnitude
            score = fallback(group)
        scores[root] = score.detach().float().cpu()
    return scores


# --- how many channels each group keeps -------------------------------------------------------


class _Plan:
    """Kept widths per group for a pruning ratio: uniform, global-threshold or per-layer."""

    def __init__(self, config: PruneConfig, groups: _Groups, scores: dict, initial: dict[str, int]):
        self.config = config
        self.groups = groups
        self.scores = scores
        self.initial = initial  # each group's width before any step
        self.layer_ratios = _group_ratios(config, groups) if config.target == "layers" else {}

    def _floor(self, root: str) -> int:
        r = self.config.round_to
        return max(r, math.ceil(self.initial[root] * (1 - self.config.max_layer_ratio) / r) * r)

    def _keep(self, root: str, fraction_kept: float) -> int:
        r = self.config.round_to
        current = self.groups.channels(root)
        if self.initial[root] <= r:
            return current
        wanted = round(self.initial[root] * fraction_kept / r) * r
        return min(current, max(self._floor(root), wanted))

    def widths(self, ratio: float) -> dict[str, int]:
        """{group root: channels kept} at `ratio` (0: nothing removed; layers target: `ratio` scales layer_ratios)."""
        roots = [root for root in self.groups.groups if root in self.initial]
        if self.config.target == "layers":
            return {root: self._keep(root, 1 - ratio * self.layer_ratios.get(root, 0.0)) for root in roots}
        if not self.config.global_ranking:
            return {root: self._keep(root, 1 - ratio) for root in roots}
        # One threshold across groups, chosen so that `ratio` of all original channels go.
        everything = torch.cat([self.scores[root] for root in roots])
        total = sum(self.initial[root] for root in roots)
        remove = len(everything) - round(total * (1 - ratio))
        if remove <= 0:
            return {root: self.groups.channels(root) for root in roots}
        threshold = torch.kthvalue(everything, min(remove, len(everything))).values
        kept = {}
        for root in roots:
            above = int((self.scores[root] > threshold).sum())
            kept[root] = self._keep(root, above / self.initial[root])
        return kept


def _group_ratios(config: PruneConfig, groups: _Groups) -> dict[str, float]:
    """{group root: ratio} from `layer_ratios`, whose keys name layers or modules holding layers."""
    ratios = {}
    all_names = [name for name in groups.modules if name]
    for name, ratio in config.layer_ratios.items():
        if name not in groups.modules:
            closest = difflib.get_close_matches(name, all_names, n=1, cutoff=0.0)
            raise LeanEyeError(f"layer_ratios: no module {name!r} in the model; the closest is {closest[0]!r}")
        matched = [
            root
            for root in groups.groups
            if any(member == name or member.startswith(name + ".") for member in groups.members(root))
        ]
        if not matched:
            raise LeanEyeError(
                f"layer_ratios: {name!r} holds no prunable layer (protected: {', '.join(groups.protected)})"
            )
        for root in matched:
            ratios[root] = max(ratios.get(root, 0.0), ratio)
    return ratios


def _apply(groups: _Groups, widths: dict[str, int], scores: dict[str, torch.Tensor] | None) -> None:
    """Prune each group to its width, dropping its least important channels (the last ones without scores)."""
    for root, keep in widths.items():
        current = groups.channels(root)
        if keep >= current:
            continue
        if scores is None:
            drop = list(range(keep, current))
        else:
            drop = torch.argsort(scores[root])[: current - keep].tolist()
        groups.remove(root, sorted(drop))


class _FlopsModel:
    """GFLOPs (multiply-accumulates x 2 of the convolution and linear layers) of the model at any
    widths of its groups, computed, not measured: pruning n channels of a group removes n outputs
    from each layer it prunes outputs of and n (times the layer's fan, e.g. a flattened map's
    cells) inputs from each layer it prunes inputs of; a layer's cost is its inputs x outputs."""

    def __init__(self, groups: _Groups, model: nn.Module, example: torch.Tensor):
        self.layers = _layer_costs(model, example)
        self.current = {root: groups.channels(root) for root in groups.groups}
        self.outputs_of: dict[str, list] = {}
        self.inputs_of: dict[str, list] = {}
        graph = groups.graph
        for root, group in groups.groups.items():
            seen = set()
            for dep, indices in group:
                name = groups.names.get(dep.target.module)
                if name not in self.layers or (name, dep.handler) in seen:
                    continue
                seen.add((name, dep.handler))
                fan = len(indices) / self.current[root]
                if graph.is_out_channel_pruning_fn(dep.handler):
                    self.outputs_of.setdefault(name, []).append((root, fan))
                elif graph.is_in_channel_pruning_fn(dep.handler):
                    self.inputs_of.setdefault(name, []).append((root, fan))

    def gflops(self, widths: dict[str, int]) -> float:
        total = 0.0
        for name, (cost, c_in, c_out, per_group) in self.layers.items():
            out = c_out - sum(
                (self.current[r] - widths.get(r, self.current[r])) * f for r, f in self.outputs_of.get(name, [])
            )
            inp = c_in - sum(
                (self.current[r] - widths.get(r, self.current[r])) * f for r, f in self.inputs_of.get(name, [])
            )
            total += cost * out * (1 if per_group else inp)
        return total / 1e9


def _layer_costs(model: nn.Module, example: torch.Tensor) -> dict[str, tuple]:
    """{layer: (2 x multiply-accumulates per input-output channel pair, inputs, outputs, depthwise)}."""
    costs = {}

    def hook(name):
        def record(module, inputs, output):
            if isinstance(module, nn.Linear):
                positions = output.numel() // module.out_features
                costs[name] = (2.0 * positions, module.in_features, module.out_features, False)
            else:
                # a depthwise convolution's cost grows with its channels, not with inputs x outputs
                depthwise = module.groups > 1 and module.groups == module.in_channels
                per_pair = 2.0 * output[0, 0].numel() * math.prod(module.kernel_size)
                costs[name] = (
                    per_pair if depthwise else per_pair / module.groups,
                    module.in_channels,
                    module.out_channels,
                    depthwise,
                )

        return record

    handles = [
        m.register_forward_hook(hook(name))
        for name, m in model.named_modules()
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
    ]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for handle in handles:
            handle.remove()
    return costs


def _search(flops: _FlopsModel, plan: _Plan, goal_gflops: float) -> tuple[dict[str, int], float]:
    """The least pruning (widths, GFLOPs) whose GFLOPs are at most `goal_gflops`, by bisection on the ratio."""
    high = 1.0
    widths = plan.widths(high)
    if flops.gflops(widths) > goal_gflops:
        raise LeanEyeError(
            f"flops target unreachable: {flops.gflops(widths):.3f} GFLOPs at the most pruning that max_layer_ratio "
            f"{plan.config.max_layer_ratio:g} and round_to {plan.config.round_to} allow, above the goal "
            f"{goal_gflops:.3f}; raise max_layer_ratio or flops_ratio"
        )
    low = 0.0
    for _ in range(BISECTION_ROUNDS):
        middle = (low + high) / 2
        if flops.gflops(plan.widths(middle)) <= goal_gflops:
            high = middle
        else:
            low = middle
    widths = plan.widths(high)
    # Rounding to multiples of round_to moves many groups at once (all 16-channel ones halve together):
    # give back, one group at a time, the width that the last ratio over the goal kept, while it fits.
    for root, wider in plan.widths(low).items():
        if wider > widths[root]:
            trial = {**widths, root: wider}
            if flops.gflops(trial) <= goal_gflops:
                widths = trial
    return widths, flops.gflops(widths)


# --- taylor gradients and recovery ------------------------------------------------------------


def _taylor_gradients(subject: _Subject, config: PruneConfig, cache_dir: Path) -> None:
    """Accumulate the detection loss's gradients on generated scenes into the model's .grad."""
    from ..data import SceneSetConfig, render_scene_set
    from ..models.loss import detection_loss
    from .train import training_batch

    c = subject.model.config
    scenes = config.scenes
    scene_set = render_scene_set(
        SceneSetConfig(
            scenes.first_seed,
            scenes.sequences,
            scenes.frames_per_sequence,
            scenes.frame_step,
            tuple(config.frame_size),
            (c.input_height, c.input_width),
        ),
        cache_dir,
        desc="render taylor scenes",
    )
    model = subject.model
    model.zero_grad(set_to_none=True)
    rng = np.random.default_rng(config.seed)
    for _ in range(config.taylor_batches):
        images, targets = training_batch(scene_set, rng.integers(0, len(scene_set.images), config.batch_size), rng)
        cls, boxes = model(images)
        points, strides = model.anchors(images.shape[2], images.shape[3], images.device)
        loss, _ = detection_loss(cls, boxes, points, strides, targets)
        loss.backward()


def _recover(model: nn.Module, teacher: nn.Module, config: PruneConfig, step: int) -> dict:
    """A brief distillation from the unpruned model between pruning steps (the distill stage's loop)."""
    from .distill import distill_in_memory

    return distill_in_memory(model, teacher, config.recover, config.recover_iterations, f"recover after step {step}")


# --- the stage --------------------------------------------------------------------------------


def prune(
    config: PruneConfig, model: Path, out: Path, force: bool = False, work_dir: Path | None = None
) -> tuple[dict, bool]:
    """Prune the checkpoint `model` (the weights file, for `model_factory`) into `out`; returns (record, skipped).

    `work_dir` (default `out`.work beside `out`) caches the generated scenes of taylor importance.
    """
    work_dir = Path(work_dir) if work_dir is not None else default_work_dir(out)
    return run_stage(
        STAGE,
        out,
        {"model": Path(model)},
        to_mapping(config),
        lambda folder: _prune_into(folder, config, Path(model), work_dir / "cache"),
        force=force,
        versions=("leaneye", "leaneye-compress", "torch", "torch-pruning", "onnxruntime"),
    )


def _measure(subject: _Subject, model: nn.Module, config: PruneConfig) -> dict:
    from ..models.detector import count_parameters

    measured = {"parameters": count_parameters(model), "gflops": round(subject.gflops(model), 4)}
    if config.latency.runs:
        measured["latency_ms"] = round(measure_latency_ms(subject.onnx(model), config.latency), 3)
    return measured


def _goals(config: PruneConfig, original_gflops: float):
    """The FLOPs goal (GFLOPs) of each step: a fixed list, or (latency target) steps down to the floor."""
    if config.target == "flops":
        return [original_gflops * (1 - (1 - config.flops_ratio) * s / config.steps) for s in range(1, config.steps + 1)]
    fractions = np.arange(1 - config.latency_flops_step, config.flops_ratio + 1e-9, -config.latency_flops_step)
    return [original_gflops * f for f in fractions] + [original_gflops * config.flops_ratio]


def _prune_into(folder: Path, config: PruneConfig, path: Path, cache_dir: Path) -> dict:
    from tqdm import tqdm

    from ..models.detector import layer_channels

    torch.manual_seed(config.seed)
    subject = _Subject(config, path)
    model = subject.model
    protect = tuple(config.protect)
    if subject.is_leandet:
        protect += tuple(f"heads.{k}.{name}" for k in range(len(model.heads)) for name in LEANDET_PROTECTED)
    missing = [name for name in protect if name not in dict(model.named_modules())]
    if missing:
        raise LeanEyeError(f"protect: no module {missing[0]!r} in the model")
    groups = _Groups(model, subject.trace_example, protect)
    initial = {root: groups.channels(root) for root in groups.groups}
    widths_before = layer_channels(model)
    teacher = copy.deepcopy(model).eval() if config.recover_iterations else None
    original = _measure(subject, model, config)
    goal_latency = config.latency_ms or (config.latency_ratio * original.get("latency_ms", 0.0))
    history = []
    goals = [None] * config.steps if config.target == "layers" else _goals(config, original["gflops"])
    with tqdm(total=len(goals), desc=f"prune ({config.target})", unit="step", file=sys.stderr) as bar:
        for step, goal in enumerate(goals, 1):
            if step > 1:
                groups = _Groups(model, subject.trace_example, protect)
            if config.importance == "taylor":
                _taylor_gradients(subject, config, cache_dir)
            plan = _Plan(config, groups, _scores(groups, config.importance), initial)
            if goal is None:  # layers target: layer_ratios reached in `steps` equal parts
                widths = plan.widths(step / config.steps)
            else:
                widths, _ = _search(_FlopsModel(groups, model, subject.example), plan, goal)
            model.zero_grad(set_to_none=True)
            _apply(groups, widths, plan.scores)
            model.eval()
            measured = _measure(subject, model, config)
            entry = {"step": step, **measured}
            if goal is not None:
                entry["goal_gflops"] = round(goal, 4)
            history.append(entry)
            bar.set_postfix(gflops=f"{measured['gflops']:.3f}", ms=measured.get("latency_ms", "-"))
            bar.update(1)
            if config.target == "latency" and measured["latency_ms"] <= goal_latency:
                break
            last = step == len(goals)
            if config.recover_iterations and not last:
                entry["recovery"] = _recover(model, teacher, config, step)
                model.eval()
    final = history[-1]
    if config.target == "latency" and final["latency_ms"] > goal_latency:
        raise LeanEyeError(
            f"latency target {goal_latency:.2f} ms not reached: {final['latency_ms']:.2f} ms at the FLOPs floor "
            f"(flops_ratio {config.flops_ratio:g}, {final['gflops']:.3f} GFLOPs); lower flops_ratio or raise the target"
        )
    metrics = {
        "original": original,
        "pruned": {k: final[k] for k in ("parameters", "gflops", "latency_ms") if k in final},
        "parameters_ratio": round(final["parameters"] / original["parameters"], 4),
        "gflops_ratio": round(final["gflops"] / original["gflops"], 4),
    }
    if "latency_ms" in final:
        metrics["latency_ratio"] = round(final["latency_ms"] / original["latency_ms"], 4)
        metrics["speedup"] = round(original["latency_ms"] / final["latency_ms"], 3)
        metrics["latency_threads"] = config.latency.threads
    widths_after = layer_channels(model)
    subject.save(model, folder / "model.pt", {"pruned_from": str(path), "stage": STAGE})
    return {
        "metrics": metrics,
        "details": {
            "model": "LeanDet" if subject.is_leandet else subject.factory,
            "steps": history,
            "protected": groups.protected,
            "layer_channels": {
                name: {"before": list(widths_before[name]), "after": list(widths_after[name])}
                for name in widths_after
                if widths_after[name] != widths_before.get(name)
            },
            "torch_threads": torch.get_num_threads(),
        },
    }
