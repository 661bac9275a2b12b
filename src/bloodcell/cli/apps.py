"""`bloodcell serve|watch|report|batch`: the programs a lab runs beside its microscope."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bloodcell.atomic import check_outputs
from bloodcell.cli.options import (
    CONF_HELP,
    add_cell_size,
    add_device,
    check_cell_size,
    conf_text,
    host_name,
    non_negative_float,
    port,
    positive_float,
    positive_int,
    resolve_conf,
)
from bloodcell.errors import ConfigError, first_of, is_interrupt


def add_app_commands(sub: argparse._SubParsersAction) -> None:
    _add_serve_command(sub)  # serve and watch
    _add_report_command(sub)
    _add_batch_command(sub)


def _add_serve_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="a local web page and JSON API: drop images, see boxes, download counts")
    p.add_argument("--model", help="model file (default: the shipped model)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this computer only)")
    p.add_argument("--port", type=port, default=8000, help="TCP port (default: 8000)")
    p.add_argument("--max-upload-mb", type=positive_float, default=20, help="largest accepted upload (default: 20 MB)")
    p.add_argument("--conf", type=conf_text, help=CONF_HELP + "; the page's slider shifts them")
    add_cell_size(p)
    p.add_argument("--threads", type=positive_int, help="CPU threads for the model (default: every core)")
    p.add_argument(
        "--max-megapixels",
        type=positive_float,
        default=50,
        help="largest accepted image in megapixels, under Pillow's bomb limit of 89 (default: 50)",
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        type=host_name,
        default=[],
        metavar="NAME",
        help="another name or address the page is reached under (e.g. behind a proxy); repeatable",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("watch", help="count cells in each image dropped into a folder (once each, restart-safe)")
    p.add_argument("folder", help="folder the microscope camera writes images into (top level only)")
    p.add_argument("--out", help="folder for counts.csv, annotated/ and the state file (default: FOLDER/bloodcell)")
    p.add_argument("--model", help="model file (default: the shipped model)")
    p.add_argument("--conf", type=conf_text, help=CONF_HELP)
    add_cell_size(p)
    p.add_argument(
        "--settle", type=non_negative_float, default=1.0, help="seconds a file must stay unchanged (default: 1)"
    )
    p.add_argument("--once", action="store_true", help="process what is in the folder now, then exit")
    p.add_argument("--threads", type=positive_int, help="CPU threads for the model (default: every core)")
    p.set_defaults(func=cmd_watch)


def _add_report_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="one self-contained HTML report of a slide from `predict --json` or watch")
    p.add_argument(
        "results",
        help="JSON file of `bloodcell predict --json`, or a counts CSV (watch's counts.csv, predict --csv); "
        "one record or row per field of view",
    )
    p.add_argument(
        "--images",
        help="folder holding the images named in the records (default: the input paths predict recorded, "
        "else the JSON's folder; for a CSV, the annotated/ folder beside it)",
    )
    p.add_argument("--out", default="report.html", help="HTML file to write (default: report.html)")
    p.add_argument("--title", help="page title (default: the JSON file's name)")
    p.set_defaults(func=cmd_report)


def _add_batch_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "batch", help="count cells in an archive of images into a resumable Parquet dataset (local or Ray)"
    )
    p.add_argument(
        "source",
        nargs="+",
        help="folders (recursive), globs, .txt/.lst lists of paths, or s3:// gs:// hdfs:// file:// URIs",
    )
    p.add_argument("--out", required=True, help="folder or URI of the Parquet dataset (a rerun skips what is there)")
    p.add_argument("--engine", choices=("local", "ray"), default="local", help="local process pool (default) or Ray")
    p.add_argument("--address", help="Ray cluster to join (e.g. ray://head:10001 or auto); default: a local Ray")
    p.add_argument(
        "--workers", type=positive_int, default=1, help="processes or Ray actors, one model each (default: 1)"
    )
    p.add_argument("--model", help="model file (default: the shipped model)")
    p.add_argument("--conf", type=conf_text, help=CONF_HELP)
    add_cell_size(p)
    add_device(p)
    p.add_argument("--threads", type=positive_int, help="threads per worker (default: the cores shared out)")
    p.add_argument("--part-rows", type=positive_int, default=256, help="rows per Parquet part file (default 256)")
    p.set_defaults(func=cmd_batch)


def cmd_serve(args: argparse.Namespace) -> int:
    from bloodcell.app.server import create_app
    from bloodcell.runtime.loader import load_predictor, print_model_notes
    from bloodcell.runtime.metadata import model_ref
    from bloodcell.weights import default_model, model_file

    predictor = load_predictor(args.model, threads=args.threads)
    print_model_notes(predictor)
    check_cell_size(predictor, args.cell_size)
    conf = resolve_conf(args.conf, predictor)
    name = Path(args.model).name if args.model else default_model()[0].name
    app = create_app(  # checks its settings: a bad one is one line before "serving ..." is said
        predictor,
        args.max_upload_mb,
        model_name=name,
        model_ref=model_ref(model_file(args.model)),
        cell_size=args.cell_size,
        conf=conf,
        max_pixels=int(args.max_megapixels * 1e6),
        host=args.host,
        allowed_hosts=args.allowed_host,
    )
    sock = _listening_socket(args.host, args.port)  # a busy port too
    if args.host not in ("127.0.0.1", "localhost", "::1"):  # once it is known to be an address here
        print(f"warning: --host {args.host} lets other computers reach this server (no login)", file=sys.stderr)
    url = f"http://{'[' + args.host + ']' if ':' in args.host else args.host}:{args.port}/"
    if args.host in ("0.0.0.0", "::"):  # every address: not one a browser opens
        url = f"every address of this computer, port {args.port} (here: http://127.0.0.1:{args.port}/)"
    print(f"serving {name} at {url} (Ctrl+C stops)", file=sys.stderr)
    _run_server(app, sock, host=args.host, port=args.port, server_header=False)
    return 0


def _run_server(app, sock, **settings) -> None:
    """uvicorn on the socket bound already (so a busy port was a clean error before any message)."""
    import uvicorn

    uvicorn.Server(uvicorn.Config(app, **settings)).run(sockets=[sock])


def _listening_socket(host: str, port: int):
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        reason = e.strerror or str(e)
        if isinstance(e, socket.gaierror) or e.errno == errno.EADDRNOTAVAIL:  # the host is the fault, not the port
            raise ConfigError(
                f"--host {host}: not an address of this computer ({reason}); use 127.0.0.1 (this computer only) "
                "or 0.0.0.0 (every network)"
            ) from None
        hint = "ports below 1024 need root; " if e.errno == errno.EACCES else ""
        raise ConfigError(
            f"--host {host} --port {port}: cannot listen there ({reason}); {hint}try another --port"
        ) from None
    return sock


def cmd_watch(args: argparse.Namespace) -> int:
    import threading

    from bloodcell.app.predict_job import processed_line
    from bloodcell.app.watch import Watcher
    from bloodcell.runtime.counting import conf_override
    from bloodcell.runtime.loader import load_predictor, print_model_notes
    from bloodcell.runtime.metadata import counted_by, model_digest
    from bloodcell.weights import model_file

    if not Path(args.folder).is_dir():
        raise ConfigError(f"{args.folder}: not a folder")
    out = str(Path(args.folder) / "bloodcell") if args.out is None else args.out
    check_outputs({}, {"--out": out})  # a file there: said now, naming the option
    predictor = load_predictor(args.model, threads=args.threads)
    print_model_notes(predictor)
    check_cell_size(predictor, args.cell_size)
    conf = resolve_conf(args.conf, predictor)
    path = model_file(args.model)
    override = conf_override(conf, predictor.conf, len(predictor.class_names))
    model = counted_by(path.name, model_digest(path), override, args.cell_size)
    watcher = Watcher(
        predictor,
        args.folder,
        out,
        conf=conf,
        settle=args.settle,
        log=sys.stdout,
        cell_size=args.cell_size,
        model=model,
    )
    stopped = False
    with watcher:  # holds the --out folder's lock until done
        if not args.once:
            print(f"watching {args.folder}, writing {out}/counts.csv (Ctrl+C stops)", file=sys.stderr)
        try:
            if args.once:
                watcher.drain()
            else:
                watcher.run(threading.Event())
        except BaseException as e:  # Ctrl-C or SIGTERM: what is counted is kept, and said
            if not is_interrupt(e):
                raise
            stopped = args.once  # --once asked for the whole folder: not done (Ctrl-C is how a live watch ends)
            print("stopped", file=sys.stderr)
            if left := watcher.not_yet_counted():  # not lost: the next watch on this folder counts them
                names = first_of(left, 5)
                print(
                    f"note: {len(left)} file(s) not counted yet ({names}); the next watch counts them",
                    file=sys.stderr,
                )
    earlier = watcher.failed_earlier()
    if earlier:  # a cron user would otherwise hear of a bad file only on the run that first met it
        names = first_of(earlier, 5)
        print(f"note: {len(earlier)} unchanged file(s) failed in an earlier run, not retried: {names}", file=sys.stderr)
    print(processed_line(watcher.processed, watcher.failed), file=sys.stderr if watcher.failed else sys.stdout)
    return 130 if stopped else 1 if watcher.failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    from bloodcell.app.report import build_report

    check_outputs({"--out": args.out})  # a folder there, an unwritable place: said as for every output
    if Path(args.out).suffix.lower() not in (".html", ".htm"):  # never over the results or an image
        raise ConfigError(f"--out {args.out}: the report is an HTML page; name it .html")
    if args.title is not None and not args.title.strip():
        raise ConfigError("--title is empty; give the slide's name, or leave --title out for the file's")
    summary = build_report(args.results, images_dir=args.images, out=args.out, title=args.title)
    print(summary)
    print(f"wrote {summary.path}")
    return 1 if summary.missing_images or summary.failed_images else 0


def cmd_batch(args: argparse.Namespace) -> int:
    from bloodcell.app.archive import run_batch

    if not args.out.strip():  # the archive folder is checked by the run (it may hold an earlier run to resume)
        raise ConfigError("--out: the path is empty; name a folder")
    summary = run_batch(
        args.source,
        args.out,
        engine=args.engine,
        address=args.address,
        workers=args.workers,
        device=args.device,
        model=args.model,
        threads=args.threads,
        batch=args.batch,
        conf=args.conf,
        cell_size=args.cell_size,
        part_rows=args.part_rows,
        progress=sys.stderr.isatty(),  # no progress bars in logs
    )
    print(summary)
    return 1 if summary.failed else 0
