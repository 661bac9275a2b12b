"""The torch-free install: with only what `pip install bloodcell[lite]` brings, `bloodcell predict` runs
exported models and gives the full install's answers.

Offline: this checkout is built into a wheel (pip, no index, no build isolation) and unpacked, and
`bloodcell` runs from it in a child Python whose import system refuses every module outside the
standard library and the distributions the wheel's lite requirements pull in (followed through
this environment's installed metadata). torch and the other training packages are installed here,
so the child proves they are not needed rather than merely absent.
"""

import email.parser
import json
import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from bloodcell.cli import main

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]

#: Runs in the child before anything else: argv[1] the allowed top-level modules (JSON), argv[2]
#: the unpacked wheel, argv[3:] the arguments of the code that follows.
GUARD = """\
import importlib.abc, json, sys
allowed = set(json.loads(sys.argv[1])) | set(sys.stdlib_module_names)
sys.path.insert(0, sys.argv[2])

class LiteOnly(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top not in allowed:  # as if not installed: the CLI's install hints key on e.name
            raise ModuleNotFoundError(f"No module named {top!r}", name=top)
        return None

sys.meta_path.insert(0, LiteOnly())
import bloodcell
assert bloodcell.__file__.startswith(sys.argv[2]), bloodcell.__file__
"""
CLI = "from bloodcell.cli import main\nsys.exit(main(sys.argv[3:]))\n"
PROBE = """\
for module in ("numpy", "onnxruntime", "torch"):
    try:
        __import__(module)
        print(module, "ok")
    except ModuleNotFoundError:
        print(module, "missing")
"""


def requirements(lines: list[str], extras: frozenset[str]) -> list[tuple[str, frozenset[str]]]:
    """(distribution, its extras) for each requirement that applies with ``extras`` on this machine."""
    wanted = []
    for line in lines:
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras | {""}):
            wanted.append((req.name, frozenset(req.extras)))
    return wanted


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """This checkout as a wheel, built offline from a copy (pip builds in the source tree, which is shared)."""
    work = tmp_path_factory.mktemp("lite")
    tree = work / "tree"
    shutil.copytree(REPO / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, tree / name)
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    result = subprocess.run([*pip, "-w", str(work / "dist"), str(tree)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    [built] = (work / "dist").glob("bloodcell-*.whl")
    return built


@pytest.fixture(scope="module")
def lite(wheel, tmp_path_factory):
    """A function running Python code (or `bloodcell` arguments) as the lite install would."""
    site = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)  # the installed layout: what `pip install` puts in site-packages
        [name] = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        requires = email.parser.Parser().parsestr(z.read(name).decode()).get_all("Requires-Dist") or []
    todo, seen = requirements(requires, frozenset({"lite"})), set()
    while todo:
        dist, extras = todo.pop()
        if (canonicalize_name(dist), extras) not in seen:
            seen.add((canonicalize_name(dist), extras))
            todo += requirements(metadata.requires(dist) or [], extras)
    dists = {d for d, _ in seen}
    owners = metadata.packages_distributions()  # top-level module -> the distributions that install it
    allowed = {top for top, names in owners.items() if dists & {canonicalize_name(n) for n in names}}
    assert {"numpy", "PIL", "onnxruntime", "ai_edge_litert"} <= allowed and not allowed & {"torch", "torchvision"}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def run(*args: str, code: str = CLI) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-I", "-c", GUARD + code, json.dumps(sorted(allowed | {"bloodcell"})), str(site)]
        return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=300, env=env)

    return run


def test_the_lite_child_cannot_import_torch_although_it_is_installed(lite):
    assert find_spec("torch") is not None
    run = lite(code=PROBE)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split("\n")[:3] == ["numpy ok", "onnxruntime ok", "torch missing"]


@pytest.mark.parametrize("kind", ["int8", "onnx", "onnx_int8"])
def test_lite_predict_matches_full_install(lite, exports, bccd_root, tmp_path, kind):
    images = [str(bccd_root / "JPEGImages" / f"BloodImage_0000{i}.jpg") for i in (0, 2)]
    lite_json, full_json = tmp_path / "lite.json", tmp_path / "full.json"
    out = ["--json", str(lite_json), "--csv", str(tmp_path / "lite.csv"), "--out", str(tmp_path / "annotated")]
    run = lite("predict", *images, "--model", str(exports[kind]), *out)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "XNNPACK" not in run.stderr  # LiteRT's load-time info line is not the user's business
    assert main(["predict", *images, "--model", str(exports[kind]), "--json", str(full_json)]) == 0
    assert json.loads(lite_json.read_text()) == json.loads(full_json.read_text())
    assert len(list((tmp_path / "annotated").iterdir())) == 2


def test_lite_install_explains_torch_commands(lite):
    run = lite("train", "--epochs", "1")
    assert run.returncode == 2
    assert "pip install 'bloodcell[torch]'" in run.stderr and "Traceback" not in run.stderr
    run = lite("export", "--format", "onnx", "--out", "m.onnx")  # torch alone would not export
    assert run.returncode == 2 and "pip install 'bloodcell[export]'" in run.stderr
    shipped = lite("predict", str(Path(bloodcell_root()) / "assets" / "samples" / "BloodImage_00007.jpg"))
    assert shipped.returncode == 2 and "Traceback" not in shipped.stderr  # no --model: the shipped .pt
    assert "is a PyTorch model and needs torch" in shipped.stderr and "--model cellnet_int8.tflite" in shipped.stderr
    api = lite(code="try:\n    bloodcell.train\nexcept ModuleNotFoundError as e:\n    print(e, e.name)\n")
    assert api.stdout == "bloodcell.train needs torch: pip install 'bloodcell[torch]' torch\n", api.stderr[-2000:]


def bloodcell_root() -> str:
    import bloodcell

    return str(Path(bloodcell.__file__).parent)


def test_lite_install_names_the_eval_extra_and_watches_without_watchdog(lite, exports, tiny_voc, tmp_path):
    """Scoring and plots need the small `eval` extra, not torch; it is said before anything is written.
    `watch` runs on the lite install (no watchdog: the periodic scan)."""
    run = lite("data", "stats", str(tiny_voc), "--out", str(tmp_path / "stats"))
    assert run.returncode == 2
    assert "`bloodcell data stats` needs matplotlib: pip install 'bloodcell[eval]'" in run.stderr
    assert not (tmp_path / "stats").exists()
    # every missing extra in one line, before the data is read or the model loaded (not one per try)
    run = lite("val", "--model", "some.pt", "--data", str(tiny_voc))
    assert run.returncode == 2 and run.stderr.splitlines() == [
        "error: `bloodcell val` needs pycocotools, matplotlib, torch: pip install 'bloodcell[eval,torch]'"
    ]
    run = lite(
        "batch", str(tiny_voc / "JPEGImages"), "--out", str(tmp_path / "b.parquet"), "--model", str(exports["int8"])
    )
    assert run.returncode == 2 and run.stderr.splitlines() == [
        "error: `bloodcell batch` needs pyarrow: pip install 'bloodcell[cluster]'"
    ]
    folder = tmp_path / "cam"
    folder.mkdir()
    shutil.copy(next((tiny_voc / "JPEGImages").glob("*.jpg")), folder / "field.jpg")
    run = lite("watch", str(folder), "--model", str(exports["int8"]), "--once")
    assert run.returncode == 0, run.stderr[-2000:]
    assert (folder / "bloodcell" / "counts.csv").is_file() and "Traceback" not in run.stderr


def test_an_export_of_an_unfitted_model_says_what_it_counts_with(exports, tmp_path):
    """An export of a training checkpoint (no counting fit) is said at every load, as the checkpoint is."""
    from bloodcell.runtime.loader import load_predictor

    model = tmp_path / "last.onnx"
    model.write_bytes(exports["onnx"].read_bytes())
    meta = json.loads(exports["onnx"].with_name(exports["onnx"].name + ".json").read_text())
    # what export writes for a checkpoint whose counting was never fitted (last.pt)
    model.with_name("last.onnx.json").write_text(json.dumps({**meta, "calibration": None, "unfitted_checkpoint": True}))
    notes = load_predictor(model).notes
    assert any("last.onnx was exported from a training checkpoint whose counting was not" in n for n in notes), notes
    assert not any("not fitted" in n for n in load_predictor(exports["onnx"]).notes)  # a fitted one: no note
