"""CPU time per stage of the face front-end on a 1024 px photo.

    .venv/bin/python -m benchmarks.faces [--image PATH] [--repeats 5] [--threads 2]

(Run it as a module from the repository root, so ``engine`` is the package.)

Default photo: insightface's ``t1.jpg`` (1280 × 886, decoded to 1024 × 708). Detection runs on
the Haar backend and on the tiny SCRFD (which measures insightface's pre/post-processing and
ONNX Runtime overhead at 640 px, not SCRFD-10G's convolutions). BiSeNet runs the real
architecture with seeded random weights, so its cost is the real one. Prints a table of the
median wall time and process CPU time (all threads) per stage.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from engine.faces import (
    FaceAnalyzer,
    align_face,
    choose_face,
    preview_png,
    thumbnail_png,
)
from engine.faces_models import ARCFACE_PATH, SCRFD_PATH
from engine.images import decode_upload
from engine.parsing import FaceParser, eva_preprocess, to_tensor01, white_gray_composite
from engine.tinyfaces import write_tiny_arcface, write_tiny_scrfd


def _timed(fn: Callable[[], object], repeats: int) -> tuple[float, float, object]:
    """Median wall and CPU seconds of ``fn`` over ``repeats`` runs (after one warm-up)."""
    result = fn()
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus), result


def _default_image() -> Path:
    import insightface

    return Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"


def run(image: Path, repeats: int, workdir: Path) -> list[tuple[str, float, float]]:
    """(stage, wall s, cpu s) rows."""
    data = image.read_bytes()
    rows = []

    def stage(name: str, fn: Callable[[], object]) -> object:
        wall, cpu, out = _timed(fn, repeats)
        rows.append((name, wall, cpu))
        return out

    decoded = stage("decode (Pillow + Lanczos to 1024)", lambda: decode_upload(data))
    rgb = decoded.rgb
    write_tiny_scrfd(workdir / SCRFD_PATH, seed=0)
    write_tiny_arcface(workdir / ARCFACE_PATH, seed=0)
    scrfd_640 = FaceAnalyzer.from_folder(workdir, det_size=640)
    haar = FaceAnalyzer.haar(workdir / ARCFACE_PATH)
    faces = stage("detect: Haar + eyes, 3 angles (+ArcFace)", lambda: haar.detect(rgb))
    stage("detect: tiny SCRFD 640 (+ArcFace) [overhead]", lambda: scrfd_640.detect(rgb))
    face = choose_face(faces, decoded.image.size, index=1)
    stage("preview PNG (numbered boxes)", lambda: preview_png(rgb, faces))
    aligned = stage("align (LMEDS, 512 warp)", lambda: align_face(rgb, face.kps))
    parser = FaceParser.tiny(seed=0)
    labels = stage("parse (BiSeNet-19, 512)", lambda: parser.labels(aligned))
    composite = stage(
        "white/gray composite",
        lambda: white_gray_composite(to_tensor01(aligned), labels),
    )
    stage("EVA preprocess (bicubic 336, no antialias)", lambda: eva_preprocess(composite))
    stage("EVA preprocess (antialias=True)", lambda: eva_preprocess(composite, antialias=True))
    stage("thumbnail PNG (128)", lambda: thumbnail_png(aligned))
    return rows


def table(rows: list[tuple[str, float, float]]) -> str:
    width = max(len(name) for name, _, _ in rows)
    lines = [f"{'stage':<{width}}  {'wall ms':>9}  {'cpu ms':>9}", "-" * (width + 22)]
    lines += [f"{name:<{width}}  {wall * 1e3:9.1f}  {cpu * 1e3:9.1f}" for name, wall, cpu in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=None, help="photo (default: t1.jpg)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    image = args.image or _default_image()
    with tempfile.TemporaryDirectory() as tmp:
        rows = run(image, args.repeats, Path(tmp))
    print(f"{image.name}, median of {args.repeats}, torch threads {torch.get_num_threads()}")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
