"""Tiny face models with seeded random weights, built in code (no download).

For tests and the ``tiny`` preset. Each model has the interface of the real one, so the real
loaders run them:

* :func:`write_tiny_scrfd`: an ONNX detector with the 9 outputs of ``scrfd_10g_bnkps`` (scores,
  box distances and keypoint offsets for strides 8, 16 and 32, two anchors per cell, rank-2
  ``(N, C)`` tensors, input ``(1, 3, height, width)``). Its scores are a random conv net's,
  pushed through a global maximum so exactly one anchor, the brightest-scoring, passes the 0.5
  threshold; the box is 80 px around that anchor and the five keypoints sit on the ArcFace
  template, jittered by the net. insightface's ``SCRFD`` decodes it like the real file.
* :func:`write_tiny_arcface`: an ONNX recogniser ``(N, 3, 112, 112) → (N, 512)``, loaded by
  insightface's ``ArcFaceONNX`` with the glintr100 normalisation (mean 127.5, std 127.5).
* :func:`tiny_bisenet`: facexlib's ``BiSeNet(num_class=19)`` itself with seeded random weights
  (the class has no size knobs; constructing it directly avoids ``init_parsing_model``'s download).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engine.faces_models import ARCFACE_TEMPLATE

if TYPE_CHECKING:
    from facexlib.parsing.bisenet import BiSeNet

log = logging.getLogger(__name__)

OPSET = 17
IR_VERSION = 8
STRIDES = (8, 16, 32)
ANCHORS = 2
TINY_FACE_PX = 80.0


class _Graph:
    """Collects nodes and seeded initialisers for one ONNX graph."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def weight(self, name: str, shape: tuple[int, ...]) -> str:
        fan_in = int(np.prod(shape[1:]))
        return self.const(name, self.rng.normal(0.0, fan_in**-0.5, shape))

    def node(self, op: str, inputs: list[str], output: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=f"{output}_op", **attrs))
        return output

    def conv(self, x: str, name: str, cin: int, cout: int, k: int, stride: int) -> str:
        w = self.weight(f"{name}.weight", (cout, cin, k, k))
        return self.node("Conv", [x, w], name, kernel_shape=[k, k], strides=[stride, stride])

    def rows(self, x: str, name: str, width: int) -> str:
        """(1, A·width, h, w) → (h·w·A, width): insightface's anchor order."""
        t = self.node("Transpose", [x], f"{name}_nhwc", perm=[0, 2, 3, 1])
        shape = numpy_helper.from_array(np.array([-1, width], np.int64), f"{name}_shape")
        self.inits.append(shape)
        return self.node("Reshape", [t, shape.name], name)

    def save(self, path: Path, inputs: list, outputs: list, name: str) -> Path:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model)
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(path))
        log.debug("wrote tiny model %s (%d bytes)", path, path.stat().st_size)
        return path


def _tiny_backbone(g: _Graph, x: str, width: int = 8) -> list[str]:
    """Three feature maps at strides 8, 16 and 32."""
    c8 = g.node("Relu", [g.conv(x, "stem", 3, width, 8, 8)], "feat8")
    c16 = g.node("Relu", [g.conv(c8, "down16", width, width, 2, 2)], "feat16")
    c32 = g.node("Relu", [g.conv(c16, "down32", width, width, 2, 2)], "feat32")
    return [c8, c16, c32]


def _score_logits(g: _Graph, x: str, feat: str, stride: int, width: int) -> str:
    """Random head plus 4 × local brightness, so letterbox padding never wins."""
    head = g.conv(feat, f"score{stride}_head", width, ANCHORS, 1, 1)
    pooled = g.node(
        "AveragePool", [x], f"bright{stride}", kernel_shape=[stride] * 2, strides=[stride] * 2
    )
    bright = g.node("ReduceMean", [pooled], f"bright{stride}_mean", axes=[1], keepdims=1)
    scaled = g.node("Mul", [bright, g.const(f"bright{stride}_k", np.array(4.0))], f"b{stride}")
    return g.rows(g.node("Add", [head, scaled], f"logit{stride}_map"), f"logit{stride}", 1)


def _jittered(g: _Graph, feat: str, name: str, width: int, base: np.ndarray, amp: float) -> str:
    """``base + amp · tanh(conv(feat))`` per anchor, rows of len(base)."""
    head = g.conv(feat, f"{name}_head", width, ANCHORS * base.size, 1, 1)
    rows = g.rows(g.node("Tanh", [head], f"{name}_tanh"), f"{name}_rows", base.size)
    scaled = g.node("Mul", [rows, g.const(f"{name}_amp", np.array(amp))], f"{name}_jit")
    return g.node("Add", [scaled, g.const(f"{name}_base", base)], name)


def write_tiny_scrfd(path: Path, seed: int = 0, width: int = 8) -> Path:
    """Write a tiny detector with scrfd_10g_bnkps's inputs and 9 outputs."""
    g = _Graph(seed)
    x = "input.1"
    feats = _tiny_backbone(g, x, width)
    logits = [_score_logits(g, x, f, s, width) for f, s in zip(feats, STRIDES, strict=True)]
    top = g.node("ReduceMax", [g.node("Concat", logits, "all_logits", axis=0)], "top", keepdims=1)
    scores, boxes, kpss = [], [], []
    offsets = (ARCFACE_TEMPLATE - 56.0) * (TINY_FACE_PX / 112.0)
    for feat, logit, s in zip(feats, logits, STRIDES, strict=True):
        rel = g.node("Sub", [logit, top], f"rel{s}")
        sharp = g.node("Mul", [rel, g.const(f"sharp{s}", np.array(1000.0))], f"sharp{s}_x")
        lifted = g.node("Add", [sharp, g.const(f"lift{s}", np.array(1.0))], f"lift{s}_x")
        scores.append(g.node("Sigmoid", [lifted], f"score_{s}"))
        half = np.full(4, TINY_FACE_PX / 2 / s, np.float32)
        boxes.append(_jittered(g, feat, f"bbox_{s}", width, half, 0.1 * half[0]))
        kpss.append(_jittered(g, feat, f"kps_{s}", width, offsets.ravel() / s, 2.0 / s))
    inp = helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 3, "height", "width"])
    outs = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, [f"n{name}", k])
        for k, names in ((1, scores), (4, boxes), (10, kpss))
        for name in names
    ]
    return g.save(path, [inp], outs, "tiny_scrfd")


def write_tiny_arcface(path: Path, seed: int = 0, width: int = 8) -> Path:
    """Write a tiny recogniser: (N, 3, 112, 112) → (N, 512)."""
    g = _Graph(seed + 1)
    x = "input.1"
    feat = g.node("Relu", [g.conv(x, "stem", 3, width, 8, 8)], "feat")  # 14×14
    pooled = g.node("AveragePool", [feat], "pooled", kernel_shape=[2, 2], strides=[2, 2])
    flat = g.node("Flatten", [pooled], "flat", axis=1)
    w = g.weight("fc.weight", (512, width * 49))
    b = g.const("fc.bias", np.zeros(512, np.float32))
    g.node("Gemm", [flat, w, b], "embedding", transB=1)
    inp = helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", 3, 112, 112])
    out = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 512])
    return g.save(path, [inp], [out], "tiny_arcface")


def tiny_bisenet(seed: int = 0) -> BiSeNet:
    """facexlib's 19-class BiSeNet with seeded random weights, in eval mode."""
    import torch
    from facexlib.parsing.bisenet import BiSeNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = BiSeNet(num_class=19)
    return net.eval()
