"""Headless command line: ``napari-sam2 track`` and ``napari-sam2 models``.

Runs on a cluster node without a display: no Qt or napari import. Axis order is napari's: movies are
(T, Y, X[, C]) (or (Z, Y, X[, C]) to track through a Z-stack); prompt points are (frame, row, col).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .device import mps_fallback_status
from .engine.acceleration import PRECISIONS, describe_precision
from .engine.session import DIRECTIONS, TrackingSession
from .engine.session_file import SessionFileError, load_session, read_session_file, save_session
from .exports import write_ctc, write_label_tiff
from .movie_files import Movie, open_movie
from .prompt_files import (
    ClickPrompt,
    LabelPrompt,
    check_clicks,
    movie_frames,
    read_points_csv,
    read_seed_labels,
    with_hint,
)
from .weights import DEFAULT_MODEL, KNOWN_MODELS, cached_models, default_cache_dir, load_model

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
SESSION_SUFFIXES = (".json",)
CSV_SUFFIXES = (".csv",)
LABEL_SUFFIXES = (".tif", ".tiff", ".npy")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-sam2`` command; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("napari-sam2: interrupted; no output was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, OSError) as exc:  # every expected failure raises one of these with a clear message
        print(f"napari-sam2: error: {_one_line(exc)}", file=sys.stderr)
        instructions = getattr(exc, "instructions", "")  # e.g. how to get the weights by hand, offline
        if instructions:
            print(instructions, file=sys.stderr)
        return EXIT_FAILED


def _one_line(error: BaseException) -> str:
    """The error's message on one line (a user's mistake is reported as one line, without traceback)."""
    return " ".join(part.strip() for part in str(error).splitlines() if part.strip()) or type(error).__name__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-sam2", description="SAM 2 / SAM 2.1 tracking for microscopy movies")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    track = commands.add_parser(
        "track", help="track objects through a movie from prompts and write labels",
        description="Track objects through a (T, Y, X[, C]) movie (or a (Z, Y, X[, C]) stack, along Z) from "
                    "click / mask prompts, and write the label stack as TIFF or in Cell Tracking Challenge format.")
    track.add_argument("input", type=Path, help="movie: TIFF / OME-TIFF, .npy or zarr store, axes (T, Y, X[, C])")
    track.add_argument("--prompts", type=Path, nargs="+", required=True, metavar="PROMPTS",
                       help="napari Points CSV (columns axis-0..2 = frame, row, col; features positive, obj_id), "
                            "a napari-sam2 session (.json), and/or a label image or stack (.tif/.npy) whose labels "
                            "become mask prompts on --label-frames")
    track.add_argument("--out", type=Path, required=True, metavar="OUTPUT",
                       help="label TIFF (.tif/.tiff) or a directory for Cell Tracking Challenge results")
    track.add_argument("--model", default=None, metavar="NAME|PATH",
                       help=f"known model name (downloaded once) or checkpoint file; default {DEFAULT_MODEL}, "
                            "or the session's model")
    track.add_argument("--direction", choices=DIRECTIONS, default="forward")
    track.add_argument("--start", type=int, default=None, help="first frame (default: the earliest prompted frame)")
    track.add_argument("--frames", type=int, default=None, metavar="N", help="track at most N frames past --start")
    track.add_argument("--channel", type=int, default=None, help="channel to track on, for multichannel movies")
    track.add_argument("--contrast", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                       help="intensities mapped to black and white (default: 0.5 / 99.5 percentiles)")
    track.add_argument("--axes", default=None, help="axes of INPUT when its metadata is missing, e.g. TYX, ZYX, TCYX")
    track.add_argument("--label-frames", type=int, nargs="+", default=None, metavar="T",
                       help="frames of a label prompt stack to use (default: every frame with labels)")
    track.add_argument("--device", default=None, help="cuda, cuda:1, mps or cpu (default: CUDA, then MPS, then CPU)")
    track.add_argument("--precision", choices=PRECISIONS, default=None,
                       help="fp32 (the reference's numbers), or bf16 / fp16 autocast (faster on GPUs); default: "
                            "bf16 on CUDA GPUs of compute capability 8.0+, fp16 on 7.x, fp32 elsewhere")
    track.add_argument("--save-session", type=Path, default=None, metavar="FILE",
                       help="also save the prompts as a session file (.json) to reopen in napari or Python")
    track.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    track.add_argument("--quiet", action="store_true", help="no progress bar")
    track.set_defaults(run=_track)

    models = commands.add_parser("models", help="list known models, which are downloaded, and where",
                                 description="List the official SAM 2 / 2.1 checkpoints and the local cache.")
    models.add_argument("--cache-dir", type=Path, default=None,
                        help="cache folder (default: $NAPARI_SAM2_CACHE or the user cache folder)")
    models.set_defaults(run=_models)
    return parser


def _track(args: argparse.Namespace) -> int:
    out_is_tiff = args.out.suffix.lower() in (".tif", ".tiff")
    if args.out.exists() and not args.overwrite and (out_is_tiff or any(args.out.iterdir())):
        raise FileExistsError(f"output {args.out} already exists; choose another --out or pass --overwrite")
    movie = open_movie(args.input, axes=args.axes)
    prompts = _read_prompts(args, movie)  # every prompt checked against the movie before the (slow) model load
    session = _open_session(args, movie, prompts)
    if not args.quiet:
        _say(f"running on {describe_precision(session.device, session.precision)}")
    fallback_warning = mps_fallback_status(session.device)
    if fallback_warning:
        _say(f"warning: {fallback_warning}")
    for click in prompts.clicks:  # added to what a saved session already holds on that frame
        session.add_points(click.frame, click.obj_id, click.points, click.labels, clear_old_points=False)
    for seed in prompts.seeds:
        session.add_labels(seed.labels, seed.frames)

    frames = session.frames_to_visit(args.start, args.direction, args.frames)
    with _progress_bar(len(frames), movie.axis, disabled=args.quiet) as progress:
        for _ in session.propagate(args.start, args.direction, args.frames):
            progress.update(1)
    labels = session.label_stack()
    axes = f"{movie.axis}YX"
    if out_is_tiff:
        write_label_tiff(args.out, labels, axes=axes, overwrite=args.overwrite)
        written = f"label stack {labels.shape} {np.dtype(labels.dtype).name}, axes {axes}"
    else:
        tracks = write_ctc(args.out, labels, max_label=labels.max_label, overwrite=args.overwrite)
        written = f"Cell Tracking Challenge results: {len(labels)} masks, {len(tracks)} tracks"
    if args.save_session is not None:
        save_session(session, args.save_session)
    _say(f"tracked {len(session.obj_ids)} object(s) over {len(frames)} frame(s); wrote {written} to {args.out}")
    return 0


@dataclass
class _Prompts:
    """Every prompt given on the command line, read and checked against the movie."""

    session_file: Path | None
    saved: dict[str, Any] | None  # the session file's content
    clicks: list[ClickPrompt]
    seeds: list[LabelPrompt]


def _read_prompts(args: argparse.Namespace, movie: Movie) -> _Prompts:
    """Sort the prompt files by kind, read them and check them (and --start) against the movie's shape."""
    paths = args.prompts
    unknown = [p for p in paths if p.suffix.lower() not in SESSION_SUFFIXES + CSV_SUFFIXES + LABEL_SUFFIXES]
    if unknown:
        raise ValueError(f"cannot tell what kind of prompt file {unknown[0]} is: use .csv (napari Points), "
                         ".json (session) or .tif / .npy (labels)")
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"prompt file {missing[0]} does not exist")
    sessions = [p for p in paths if p.suffix.lower() in SESSION_SUFFIXES]
    if len(sessions) > 1:
        raise ValueError(f"give at most one session file, got {len(sessions)}")
    hint = movie.axes_hint()
    saved = read_session_file(sessions[0]) if sessions else None
    saved_shape = tuple(saved["movie"]["shape"]) if saved is not None else movie.shape
    if saved_shape != movie.shape:
        raise SessionFileError(with_hint(f"session {sessions[0]} was saved for a movie of shape {saved_shape} (T, Y, "
                                         f"X[, C]), but {movie.source} has shape {movie.shape}; open the movie the "
                                         "session was made on", hint))
    clicks = [click for p in paths if p.suffix.lower() in CSV_SUFFIXES for click in read_points_csv(p)]
    check_clicks(clicks, movie.shape, hint)
    seeds = [read_seed_labels(p, movie.shape, args.label_frames, hint)
             for p in paths if p.suffix.lower() in LABEL_SUFFIXES]
    if args.start is not None and not 0 <= args.start < movie.shape[0]:
        raise ValueError(with_hint(f"--start {args.start} is out of range: {movie_frames(movie.shape[0])}", hint))
    return _Prompts(sessions[0] if sessions else None, saved, clicks, seeds)


def _open_session(args: argparse.Namespace, movie: Movie, prompts: _Prompts) -> TrackingSession:
    """A fresh session, or the saved one; command-line settings override saved ones."""
    options = {}
    if args.contrast is not None:
        options["contrast_limits"] = tuple(args.contrast)
    if args.channel is not None:
        options["channel"] = args.channel
    if args.precision is not None:
        options["precision"] = args.precision
    if prompts.saved is None:
        model = load_model(args.model or DEFAULT_MODEL, device=args.device, progress=not args.quiet)
        return TrackingSession(model, movie.data, **options)
    model = load_model(args.model or prompts.saved["model"].get("name") or DEFAULT_MODEL, device=args.device,
                       progress=not args.quiet)
    return load_session(prompts.session_file, movie.data, model, **options)


def _models(args: argparse.Namespace) -> int:
    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    print(f"cache folder: {cache}  (set NAPARI_SAM2_CACHE to change it)")
    print(f"{'model':<24}{'config':<18}{'status'}")
    for info, path in cached_models(cache):
        status = f"cached, {path.stat().st_size / 2**20:.0f} MiB: {path}" if path else f"not downloaded ({info.url})"
        print(f"{info.name:<24}{info.config:<18}{status}")
    print(f"{len(KNOWN_MODELS)} known models; `napari-sam2 track --model NAME` downloads one on first use.")
    return 0


def _progress_bar(total: int, axis: str, disabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="frame" if axis == "T" else "slice", desc="tracking", disable=disabled,
                file=sys.stderr)


def _say(message: str) -> None:
    print(f"napari-sam2: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
