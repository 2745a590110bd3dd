"""Headless command line: ``napari-sam2 track``, ``napari-sam2 evaluate`` and ``napari-sam2 models``.

Runs on a cluster node without a display: no Qt or napari import. Axis order is napari's: movies are
(T, Y, X[, C]) (or (Z, Y, X[, C]) to track through a Z-stack); prompt points are (frame, row, col).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .cli_batch import add_batch_command
from .cli_lineage import add_division_argument, add_evaluate_command, division_options, proposals_path, report_divisions
from .device import mps_fallback_status
from .engine.acceleration import PRECISIONS, describe_precision
from .engine.automatic import AutomaticMaskOptions
from .engine.reseeding import DEFAULT_NEW_OBJECT_IOU, Reseeder, ReseedOptions
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
AUTO_PROMPTS = "auto"  # --prompts auto: segment everything on the --start frame and track every mask


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


def _say(message: str) -> None:
    print(f"napari-sam2: {message}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-sam2", description="SAM 2 / SAM 2.1 tracking for microscopy movies")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    track = commands.add_parser("track", help="track objects through a movie from prompts and write labels",
                                description=TRACK_DESCRIPTION)
    _track_arguments(track)

    add_evaluate_command(commands)
    add_batch_command(commands)

    models = commands.add_parser("models", help="list known models, which are downloaded, and where",
                                 description="List the official SAM 2 / 2.1 checkpoints and the local cache.")
    models.add_argument("--cache-dir", type=Path, default=None,
                        help="cache folder (default: $NAPARI_SAM2_CACHE or the user cache folder)")
    models.set_defaults(run=_models)
    return parser


TRACK_DESCRIPTION = ("Track objects through a (T, Y, X[, C]) movie (or a (Z, Y, X[, C]) stack, along Z) from "
                     "click / mask prompts, and write the label stack as TIFF or in Cell Tracking Challenge format.")


def _track_arguments(track: argparse.ArgumentParser) -> None:
    """The options of ``napari-sam2 track`` (shared by the command and :func:`track_movie`)."""
    track.add_argument("input", type=Path, help="movie: TIFF / OME-TIFF, .npy or zarr store, axes (T, Y, X[, C])")
    track.add_argument("--prompts", type=Path, nargs="+", required=True, metavar="PROMPTS",
                       help="napari Points CSV (columns axis-0..2 = frame, row, col; features positive, obj_id), "
                            "a napari-sam2 session (.json), and/or a label image or stack (.tif/.npy) whose labels "
                            "become mask prompts on --label-frames; or 'auto' alone: segment everything on the "
                            "--start frame (default 0) and track every mask as an object")
    track.add_argument("--out", type=Path, required=True, metavar="OUTPUT",
                       help="label TIFF (.tif/.tiff), a GEFF graph with its labels (.geff) or a directory for "
                            "Cell Tracking Challenge results")
    track.add_argument("--model", default=None, metavar="NAME|PATH",
                       help=f"known model name (downloaded once) or checkpoint file; default {DEFAULT_MODEL}, "
                            "or the session's model")
    track.add_argument("--direction", choices=DIRECTIONS, default="forward")
    track.add_argument("--start", type=int, default=None,
                       help="first frame (default: the earliest prompted frame; 0 with --prompts auto)")
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
    _population_arguments(track)
    add_division_argument(track)
    track.add_argument("--save-session", type=Path, default=None, metavar="FILE",
                       help="also save the prompts as a session file (.json) to reopen in napari or Python")
    track.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    track.add_argument("--quiet", action="store_true", help="no progress bar")
    track.set_defaults(run=_track)


def _population_arguments(track: argparse.ArgumentParser) -> None:
    """Options for many cells: segment-all settings, cells that enter (re-seeding) and cells that leave."""
    group = track.add_argument_group(
        "populations", "segment everything (--prompts auto), add cells that enter, stop tracking cells that leave")
    group.add_argument("--reseed-every", type=_positive_int, default=None, metavar="K",
                       help="every K-th tracked frame, add each mask that no tracked object covers as a new object "
                            "(segment all, or the labels of --reseed-labels on that frame)")
    group.add_argument("--reseed-labels", type=Path, default=None, metavar="STACK",
                       help="(T, Y, X) label stack (.tif/.npy, e.g. from Cellpose) whose labels are the re-seeding "
                            "candidates, instead of segmenting all")
    group.add_argument("--new-object-iou", type=_iou, default=DEFAULT_NEW_OBJECT_IOU, metavar="IOU",
                       help="a candidate is new when its IoU with every tracked object is below this "
                            f"(default {DEFAULT_NEW_OBJECT_IOU}) and at most half of it is already labelled")
    group.add_argument("--stop-after-absent", type=_positive_int, default=None, metavar="N",
                       help="stop tracking an object that SAM 2 judges absent on N frames in a row")
    defaults = AutomaticMaskOptions()
    group.add_argument("--points-per-side", type=_positive_int, default=defaults.points_per_side, metavar="N",
                       help=f"segment all: an N x N grid of point prompts (default {defaults.points_per_side})")
    group.add_argument("--pred-iou-thresh", type=_fraction, default=defaults.pred_iou_thresh, metavar="F",
                       help=f"segment all: keep masks of predicted IoU above F (default {defaults.pred_iou_thresh})")
    group.add_argument("--stability-score-thresh", type=_fraction, default=defaults.stability_score_thresh,
                       metavar="F", help="segment all: keep masks of stability score at least F "
                                         f"(default {defaults.stability_score_thresh})")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}")
    return value


def _iou(text: str) -> float:
    value = _fraction(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected an IoU above 0 (no candidate has an IoU below 0), got 0")
    return value


@dataclass(frozen=True)
class TrackResult:
    """What one ``track`` run did: frames visited, objects tracked, and where the output went."""

    frames: int
    objects: int
    output: Path


class _RaisingParser(argparse.ArgumentParser):
    """argparse exits the process on a bad argument; inside a batch worker that must be an exception instead."""

    def error(self, message: str):  # type: ignore[override]
        raise ValueError(f"{self.prog}: {message}")


def track_movie(argv: Sequence[str], *, model: Any = None, out: Path | None = None,
                on_frame: Callable[[int, int], None] | None = None,
                say: Callable[[str], None] | None = None) -> TrackResult:
    """Run ``napari-sam2 track ARGV...`` in this process: the command's own code path, for the batch runner.

    ``model``: an already loaded model used instead of loading ``--model`` (a batch worker loads it once);
    ``out`` replaces ``--out`` (the batch writes to a temporary folder and renames); ``on_frame(done, total)``
    is called after each tracked frame; ``say(message)`` receives the command's messages (default: stderr; a
    worker running several movies at once keeps each movie's own). Bad arguments or files raise ``ValueError``
    / ``OSError``.
    """
    parser = _RaisingParser(prog="napari-sam2 track", description=TRACK_DESCRIPTION)
    _track_arguments(parser)
    args = parser.parse_args(list(argv))
    if out is not None:
        args.out = Path(out)
    return _run_track(args, model=model, on_frame=on_frame, say=say or _say)


def _track(args: argparse.Namespace) -> int:
    _run_track(args)
    return 0


def _run_track(args: argparse.Namespace, model: Any = None, on_frame: Callable[[int, int], None] | None = None,
               say: Callable[[str], None] = _say) -> TrackResult:
    """The body of ``napari-sam2 track``; ``model`` (already loaded) skips loading ``--model``; messages go to
    ``say``."""
    out_kind = {".tif": "tiff", ".tiff": "tiff", ".geff": "geff"}.get(args.out.suffix.lower(), "ctc")
    if args.out.exists() and not args.overwrite and (out_kind != "ctc" or any(args.out.iterdir())):
        raise FileExistsError(f"output {args.out} already exists; choose another --out or pass --overwrite")
    csv_path = proposals_path(args.out)
    if args.divisions == "propose" and csv_path.exists() and not args.overwrite:
        raise FileExistsError(f"division proposals {csv_path} already exist; choose another --out or pass "
                              "--overwrite")
    movie = open_movie(args.input, axes=args.axes)
    prompts = _read_prompts(args, movie)  # every prompt checked against the movie before the (slow) model load
    reseed = _reseed_options(args, movie)  # so are the re-seeding options
    divide = division_options(args)  # and the division thresholds
    session = _open_session(args, movie, prompts, model)
    if not args.quiet:
        say(f"running on {describe_precision(session.device, session.precision)}")
    fallback_warning = mps_fallback_status(session.device)
    if fallback_warning:
        say(f"warning: {fallback_warning}")
    for click in prompts.clicks:  # added to what a saved session already holds on that frame
        session.add_points(click.frame, click.obj_id, click.points, click.labels, clear_old_points=False)
    for seed in prompts.seeds:
        session.add_labels(seed.labels, seed.frames)
    if prompts.auto:
        _segment_all(args, session, movie.axis, say)

    frames = session.frames_to_visit(args.start, args.direction, args.frames)
    seeded = len(session.obj_ids)
    with _progress_bar(len(frames), movie.axis, disabled=args.quiet) as progress:
        for done, _ in enumerate(session.propagate(args.start, args.direction, args.frames, reseed=reseed,
                                                   divisions=args.divisions, division_options=divide), start=1):
            progress.update(1)
            if on_frame is not None:
                on_frame(done, len(frames))
    if reseed is not None:
        say(f"re-seeding added {len(session.obj_ids) - seeded} object(s)")
    if args.stop_after_absent is not None:
        say(f"{len(session.stopped_objects())} object(s) stopped after {args.stop_after_absent} absent frame(s)")
    if args.save_session is not None:  # first: the prompts and the lineage are kept even if an output fails
        save_session(session, args.save_session)
    report_divisions(args.divisions, session, csv_path, say)
    labels, lineage = session.label_stack(), session.lineage()
    axes = f"{movie.axis}YX"
    if out_kind == "tiff":
        write_label_tiff(args.out, labels, axes=axes, overwrite=args.overwrite)
        written = f"label stack {labels.shape} {np.dtype(labels.dtype).name}, axes {axes}"
        if lineage:
            say(f"warning: a TIFF holds no lineage ({len(lineage)} link(s)); write a CTC folder or a .geff to "
                 "keep it, or --save-session")
    elif out_kind == "geff":
        from .geff_files import write_geff  # geff, zarr and pydantic: only when asked for

        write_geff(args.out, labels, lineage, overwrite=args.overwrite)
        written = f"GEFF graph and labels {labels.shape}, {len(lineage)} lineage link(s)"
    else:
        tracks = write_ctc(args.out, labels, max_label=labels.max_label, overwrite=args.overwrite, parents=lineage)
        written = f"Cell Tracking Challenge results: {len(labels)} masks, {len(tracks)} tracks"
    say(f"tracked {len(session.obj_ids)} object(s) over {len(frames)} frame(s); wrote {written} to {args.out}")
    return TrackResult(frames=len(frames), objects=len(session.obj_ids), output=args.out)


@dataclass
class _Prompts:
    """Every prompt given on the command line, read and checked against the movie."""

    session_file: Path | None
    saved: dict[str, Any] | None  # the session file's content
    clicks: list[ClickPrompt]
    seeds: list[LabelPrompt]
    auto: bool = False  # --prompts auto: segment all on the --start frame


def _read_prompts(args: argparse.Namespace, movie: Movie) -> _Prompts:
    """Sort the prompt files by kind, read them and check them (and --start) against the movie's shape."""
    paths = args.prompts
    if any(str(p) == AUTO_PROMPTS for p in paths):
        if len(paths) > 1:
            raise ValueError("--prompts auto segments the --start frame by itself: give no prompt files with it")
        _check_start(args, movie)
        return _Prompts(None, None, [], [], auto=True)
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
    _check_start(args, movie)
    return _Prompts(sessions[0] if sessions else None, saved, clicks, seeds)


def _check_start(args: argparse.Namespace, movie: Movie) -> None:
    if args.start is not None and not 0 <= args.start < movie.shape[0]:
        raise ValueError(with_hint(f"--start {args.start} is out of range: {movie_frames(movie.shape[0])}",
                                   movie.axes_hint()))


def _automatic_options(args: argparse.Namespace) -> AutomaticMaskOptions:
    return AutomaticMaskOptions(points_per_side=args.points_per_side, pred_iou_thresh=args.pred_iou_thresh,
                                stability_score_thresh=args.stability_score_thresh)


def _reseed_options(args: argparse.Namespace, movie: Movie) -> ReseedOptions | None:
    """The re-seeding of the run (None without --reseed-every), checked against the movie's shape."""
    if args.reseed_every is None:
        if args.reseed_labels is not None:
            raise ValueError("--reseed-labels needs --reseed-every K: say how often to look for new objects")
        return None
    labels = None
    if args.reseed_labels is not None:
        if args.reseed_labels.suffix.lower() not in LABEL_SUFFIXES:
            raise ValueError(f"--reseed-labels {args.reseed_labels} must be a .tif / .tiff / .npy label stack")
        if not args.reseed_labels.exists():
            raise FileNotFoundError(f"--reseed-labels file {args.reseed_labels} does not exist")
        labels = open_movie(args.reseed_labels).data
    options = ReseedOptions(every=args.reseed_every, labels=labels,
                            automatic=None if labels is not None else _automatic_options(args),
                            new_object_iou=args.new_object_iou)
    try:
        Reseeder(options, movie.shape[0], tuple(movie.shape[1:3]))
    except ValueError as exc:  # only the label stack can misfit here
        raise ValueError(with_hint(f"--reseed-labels {args.reseed_labels}: {exc}", movie.axes_hint())) from None
    return options


def _segment_all(args: argparse.Namespace, session: TrackingSession, axis: str,
                 say: Callable[[str], None] = _say) -> None:
    """--prompts auto: every mask found on the --start frame becomes an object."""
    frame = 0 if args.start is None else args.start
    ids = session.segment_all(frame, _automatic_options(args))
    if not ids:
        raise ValueError(f"segment all found no objects on {'frame' if axis == 'T' else 'slice'} {frame}; "
                         "try a lower --pred-iou-thresh / --stability-score-thresh, or give prompt files")
    if not args.quiet:
        say(f"segment all found {len(ids)} object(s) on {'frame' if axis == 'T' else 'slice'} {frame}")


def _open_session(args: argparse.Namespace, movie: Movie, prompts: _Prompts, model: Any = None) -> TrackingSession:
    """A fresh session, or the saved one; command-line settings override saved ones. ``model``: already loaded
    (a batch worker's), used instead of loading ``--model`` or the session's model."""
    options = {}
    if args.contrast is not None:
        options["contrast_limits"] = tuple(args.contrast)
    if args.channel is not None:
        options["channel"] = args.channel
    if args.precision is not None:
        options["precision"] = args.precision
    if args.stop_after_absent is not None:
        options["stop_after_absent"] = args.stop_after_absent
    if prompts.saved is None:
        if model is None:
            model = load_model(args.model or DEFAULT_MODEL, device=args.device, progress=not args.quiet)
        return TrackingSession(model, movie.data, **options)
    if model is None:
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


if __name__ == "__main__":
    sys.exit(main())
