"""Tiny movies and a sheet for the batch tests and benchmarks/bench_batch.py: 64 x 64 (T, Y, X) movies with
two blobs each and their click prompts; one prompt file is broken."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import tifffile
import torch

IMAGE_SIZE = 128  # the workers' model input in the tests (ModelSpec); the CLI runs compared load it alike

BROKEN_PROMPTS = "index,axis-0\n0,not-a-frame\n"


def blob_movie(num_frames: int, seed: int, shape=(64, 64)) -> np.ndarray:
    """(T, Y, X) uint16: two bright blobs drifting over noise, different per seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    frames = []
    for t in range(num_frames):
        img = 300 + rng.normal(0, 20, shape)
        for cy, cx in ((20 + t, 18 + seed), (44 - t, 46 - seed)):
            img += 3000 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 40)
        frames.append(img)
    return np.stack(frames).astype(np.uint16)


def points_csv(seed: int) -> str:
    """napari Points CSV: one positive click on each blob of ``blob_movie(..., seed)`` on frame 0."""
    return ("index,axis-0,axis-1,axis-2,positive,obj_id\n"
            f"0,0.0,20.0,{18 + seed}.0,True,1\n1,0.0,44.0,{46 - seed}.0,True,2\n")


def write_movie(root: Path, name: str, num_frames: int, seed: int, prompts: str | None = None) -> None:
    """``root/NAME.tif`` and its prompts ``root/NAME.csv`` (``prompts`` replaces the clicks, e.g. broken)."""
    tifffile.imwrite(root / f"{name}.tif", blob_movie(num_frames, seed), photometric="minisblack",
                     metadata={"axes": "TYX"})
    (root / f"{name}.csv").write_text(points_csv(seed) if prompts is None else prompts)


def write_four_movie_sheet(root: Path, num_frames: int) -> Path:
    """Movies m0..m3 and ``root/sheet.csv`` listing them; m3's prompt file is broken, m1 tracks 2 frames past 0."""
    lines = ["movie,prompts,frames"]
    for i in range(4):
        write_movie(root, f"m{i}", num_frames, i, BROKEN_PROMPTS if i == 3 else None)
        lines.append(f"m{i}.tif,m{i}.csv,{2 if i == 1 else ''}")
    (root / "sheet.csv").write_text("\n".join(lines) + "\n")
    return root / "sheet.csv"


def cli_labels(track_args: list[str], out: Path, monkeypatch, threads: int | None = None) -> np.ndarray:
    """The labels of ``napari-sam2 track TRACK_ARGS --out OUT`` run in this process with the model at
    ``IMAGE_SIZE``; ``threads``: torch threads, as in the worker compared against (another thread count sums
    in another order: the last bits differ)."""
    from napari_sam2 import cli
    from napari_sam2.weights import load_model

    monkeypatch.setattr(cli, "load_model", functools.partial(load_model, image_size=IMAGE_SIZE))
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        assert cli.main(["track", *map(str, track_args), "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    finally:
        torch.set_num_threads(before)
    return tifffile.imread(out)
