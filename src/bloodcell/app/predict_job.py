"""`bloodcell predict` on files: run the predictor, feed the sinks, report failures."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bloodcell.app.annotate import BoxAnnotator
from bloodcell.app.sinks import (
    annotated_path,
    format_counts,
    kept_voc_mismatch,
    save_annotated,
    voc_path,
    write_counts_csv,
    write_json,
    write_voc,
)
from bloodcell.atomic import check_outputs
from bloodcell.errors import ConfigError, StopSaid, describe_os_error, first_of, is_interrupt
from bloodcell.runtime.counting import class_thresholds, parse_conf
from bloodcell.runtime.loader import load_predictor, model_files, print_model_notes
from bloodcell.runtime.metadata import model_ref
from bloodcell.runtime.predict import ImageResult, predict_paths
from bloodcell.runtime.scaling import check_cell_size
from bloodcell.runtime.sources import (
    expand_sources,
    output_names,
    printable,
    shown,
    unread_image_notes,
    unusable_reason,
)
from bloodcell.weights import model_file

if TYPE_CHECKING:
    from bloodcell.runtime.predict import Predictor


STAGES = ("load", "letterbox", "network", "decode")


def format_timing(result: ImageResult) -> str:
    """Where one image's time went: decoding the file, then the model's stages; "other" is the rest
    of inference (scale estimate, tiling, counting)."""
    t = result.timing_ms
    other = t.get("inference", 0.0) - sum(t.get(k, 0.0) for k in STAGES[1:])
    stages = [f"{k} {t[k]:.1f}" for k in STAGES[1:] if k in t] + [f"other {max(other, 0.0):.1f}"]
    # the image's line shows the inference time alone: the file's load is said apart, not summed into it
    load = f"load {t['load']:.1f} ms, then " if "load" in t else ""
    return f"{load}inference {t.get('inference', 0.0):.1f} ms: {' · '.join(stages)} ms · scale {result.scale:.2f}"


def processed_line(done: int, failed: int) -> str:
    """The last line of predict and watch: "3 images counted, 1 failed" (4 in all)."""
    return f"{done} image{'' if done == 1 else 's'} counted, {failed} failed"


def _refuse_overwriting_inputs(
    names: dict[Path, str], out: str | None, files: dict[str, str | None], model: str | None, voc: str | None = None
) -> None:
    """ConfigError before any work when an output would replace an input (``--out`` the images' own
    folder, ``--csv`` naming an image or the model's sidecar) or another output (``--json`` inside
    ``--out`` where an annotated copy goes, or in ``--voc`` where an image's annotation goes): what the user
    gave or asked for is never overwritten."""
    inputs = {os.path.realpath(p): (str(p), "one of the input images") for p in names}  # real path -> (as given, role)
    inputs |= model_files(model)
    for flag, path in files.items():
        if path and os.path.realpath(path) in inputs:
            raise ConfigError(f"{flag} {path}: is {inputs[os.path.realpath(path)][1]}; it would be overwritten")
    wanted = {os.path.realpath(path): flag for flag, path in files.items() if path}
    for source in names if voc else ():
        if (flag := wanted.get(os.path.realpath(voc_path(voc, source)))) is not None:  # type: ignore[arg-type]
            raise ConfigError(
                f"{flag} {files[flag]}: is where --voc puts the annotation of {source}; name another file"
            )
    for source, name in names.items() if out else ():
        copy = os.path.realpath(annotated_path(out, name))
        if copy in inputs:
            raise ConfigError(
                f"--out {out}: the annotated copy of {source} would overwrite {inputs[copy][0]}; choose another folder"
            )
        if copy in wanted:
            raise ConfigError(
                f"{wanted[copy]} {files[wanted[copy]]}: is where --out puts the annotated copy of {source}; "
                "name another file"
            )


def _write_voc(result: ImageResult, voc: str, kept: list[str]) -> bool:
    """Writes the image's VOC annotation; one already there is kept (its name added to ``kept``), with a
    warning when it looks like another image's. Whether it was written."""
    path, written = write_voc(result, voc)
    if not written:
        kept.append(printable(path.name))
        if why := kept_voc_mismatch(path, result):
            print(
                f"warning: {shown(result.label)}: {shown(kept[-1])} kept in {voc} may label another image: {why}",
                file=sys.stderr,
            )
    return written


def _refuse_shared_outputs(paths: list[Path], names: dict[Path, str], out: str | None, voc: str | None) -> None:
    """ConfigError before any work when two images would get one output file: an annotated copy (s.bmp gains
    .jpg, which is s.bmp.jpg's own name) or a VOC annotation (named by the image's name without the suffix:
    s.jpg and s.png); one image's picture or labels would be the other's."""
    outputs = [
        (out, "--out", lambda p: annotated_path(out, names[p]), "be annotated as", "count them in separate runs"),
        (voc, "--voc", lambda p: voc_path(voc, p), "be labelled in", "label them into separate folders"),
    ]
    for folder, flag, target_of, verb, instead in outputs:
        seen: dict[str, Path] = {}
        for source in paths if folder else ():
            target = target_of(source)
            if (key := os.path.realpath(target)) in seen:
                raise ConfigError(
                    f"{flag} {folder}: {printable(str(seen[key]))} and {printable(str(source))} would both {verb} "
                    f"{printable(str(target))}; rename one, or {instead}"
                )
            seen[key] = source


def _check_suffixes(files: dict[str, str | None]) -> None:
    """``--json counts.csv`` is a slip of the flag, not a wish for JSON in a .csv file."""
    for flag, path in files.items():
        other = "--csv" if flag == "--json" else "--json"
        if path and Path(path).suffix.lower() == "." + other[2:]:
            raise ConfigError(f"{flag} {path}: names a {other[2:].upper()} file; did you mean {other}?")


def _warn_min_score_above_points(min_score: float, predictor: Predictor, thresholds: tuple[float, ...] | None) -> None:
    """A --min-score above a class's operating point leaves counted cells out of --json's list."""
    points = class_thresholds(predictor.conf if thresholds is None else thresholds, len(predictor.class_names))
    above = [f"{name} {p:.2f}" for name, p in zip(predictor.class_names, points, strict=True) if min_score > p]
    if above:
        print(
            f"warning: --min-score {min_score:g} is above the operating points of {', '.join(above)}: "
            "--json lists fewer of those cells than it counts",
            file=sys.stderr,
        )


def run_predict(
    sources: list[str],
    model: str | None = None,
    conf: str | None = None,
    min_score: float | None = None,
    out: str | None = None,
    json_path: str | None = None,
    csv_path: str | None = None,
    voc: str | None = None,
    threads: int | None = None,
    edgetpu: bool = False,
    cell_size: float | str | None = "auto",
    device: str = "auto",
    batch: int = 1,
    verbose: bool = False,
) -> int:
    """Returns the exit code: 0 when every image was processed, 1 when any failed or none was found.

    ``conf``: one operating point or per class (``RBC=0.4,WBC=0.5``); None keeps the model's. ``voc``: a folder
    for each image's counted boxes as Pascal VOC XML (pre-labels to correct); files already there are kept."""
    files = {"--json": json_path, "--csv": csv_path}
    _check_suffixes(files)
    check_outputs(files, {"--out": out, "--voc": voc})  # now, not after every image
    paths, problems, missing, order = expand_sources(sources)
    names = dict(zip([*paths, *missing], output_names([*paths, *missing]), strict=True))  # one name each
    _refuse_overwriting_inputs(names, out, files, model, voc)
    _refuse_shared_outputs(paths, names, out, voc)
    for problem in problems:
        print(f"error: {shown(problem)}", file=sys.stderr)
    for note in unread_image_notes(sources):
        print(f"note: {shown(note)}", file=sys.stderr)
    predictor: Predictor = load_predictor(model, device=device, threads=threads, edgetpu=edgetpu, batch=batch)
    # the file that counts, named now: it may be rewritten (a training run's best.pt) before the JSON is
    model_name = model_ref(model_file(model)) if json_path else None
    print_model_notes(predictor)
    check_cell_size(predictor, cell_size)
    annotator = BoxAnnotator(predictor.class_names) if out else None
    results, failed = [], len(problems)
    kept: list[str] = []  # --voc files already there
    wrote_voc = 0
    # what --json/--csv hold: every image input, failed ones with their error and names that are not there
    # too, in the order given
    listed = [ImageResult(path, error=f"{path}: {unusable_reason(path)}", name=names[path]) for path in missing]
    thresholds = None if conf is None else parse_conf(conf, tuple(predictor.class_names), predictor.conf)
    if min_score is not None:
        _warn_min_score_above_points(min_score, predictor, thresholds)
    stream = predict_paths(
        predictor,
        paths,
        conf=thresholds,
        min_score=min_score,
        keep_image=out is not None,
        cell_size=cell_size,
        batch=batch,
        load_workers=2 if batch > 1 else 1,  # decode the next batch while this one runs
    )
    interrupted = False
    pipe_closed: BrokenPipeError | None = None
    try:
        for r in stream:
            r.name = names.get(r.path)
            listed.append(r)
            if r.error:
                print(f"error: {shown(r.error)}", file=sys.stderr)
                failed += 1
                continue
            if annotator is not None or voc is not None:
                what = "annotated image"
                try:
                    if annotator is not None:
                        save_annotated(r, annotator, out)
                    what = "VOC annotation"
                    if voc is not None and _write_voc(r, voc, kept):
                        wrote_voc += 1
                except OSError as e:  # e.g. a name too long for the output file system: the others go on
                    r.error = f"{r.label}: {what} not written ({describe_os_error(e)})"
                    print(f"error: {shown(r.error)}", file=sys.stderr)
                    r.image = None
                    failed += 1
                    continue
            r.image = None
            print(f"{shown(r.label)}: {format_counts(r)} ({r.timing_ms['inference']:.0f} ms)")
            for warning in r.warnings:
                print(f"warning: {shown(r.label)}: {warning}", file=sys.stderr)
            if verbose:
                print(f"  {format_timing(r)}")
            results.append(r)
    except BaseException as e:  # Ctrl-C or SIGTERM: keep what is done, the counts of a long folder are worth saving
        if isinstance(e, BrokenPipeError):  # stdout's reader quit (`| head`): the files are still written
            pipe_closed = e
        elif not is_interrupt(e):
            raise
        else:
            interrupted = True
    rank = {path: i for i, path in enumerate(order)}  # the results name every input in the order given
    listed.sort(key=lambda r: rank.get(r.path, len(rank)))
    if json_path:
        write_json(listed, json_path, model=model_name)
    if csv_path:
        write_counts_csv(listed, tuple(predictor.class_names), csv_path)
    saved = [p for p in (json_path, csv_path) if p] + ([f"{voc} ({wrote_voc} VOC annotations)"] if wrote_voc else [])
    where = f"; their results are in {' and '.join(saved)}" if saved else ""
    if pipe_closed is not None:  # said where it can still be read; then the CLI's quiet exit 141
        with contextlib.suppress(BrokenPipeError):  # stderr's reader may be the one that is gone
            print(f"output closed by its reader after {len(listed)} of {len(order)} images{where}", file=sys.stderr)
        raise pipe_closed
    if interrupted:
        print(f"interrupted after {len(results)} of {len(paths)} images{where}", file=sys.stderr)
        raise StopSaid
    if out and results:
        print(f"annotated images in {Path(out)}")
    if wrote_voc:
        print(f"VOC annotations in {Path(voc)}")
    if kept:  # a rerun into the folder, or labels being corrected there
        some = first_of(kept, 5)
        print(f"note: {len(kept)} annotation(s) already in {voc} kept, not overwritten: {some}", file=sys.stderr)
    for path in (json_path, csv_path):
        if path:
            print(f"wrote {path}")
    print(processed_line(len(results), failed), file=sys.stderr if failed else sys.stdout)
    return 1 if failed or not results else 0
