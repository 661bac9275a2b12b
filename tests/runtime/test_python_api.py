"""The Python API as a lab programmer uses it: in-memory images, clear errors, one result per image."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import bloodcell
from bloodcell import ConfigError, DatasetError, ImageError

SRC = Path(bloodcell.__file__).parent


@pytest.fixture(scope="module")
def shipped() -> bloodcell.Predictor:
    return bloodcell.load_predictor()


@pytest.fixture(scope="module")
def image_path(bccd_root: Path) -> Path:
    return bccd_root / "JPEGImages" / "BloodImage_00007.jpg"


def test_arrays_and_pil_images_count_as_their_file_does(shipped, image_path: Path) -> None:
    rgb = np.asarray(Image.open(image_path).convert("RGB"))
    rgba = np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 255, np.uint8)], axis=2)
    inputs = [image_path, rgb, Image.open(image_path), rgb.astype(np.float32) / 255, rgb.astype(np.uint16) * 257, rgba]
    results = bloodcell.predict(shipped, inputs)
    assert len(results) == len(inputs) and all(r.ok for r in results)
    from_file = results[0]
    assert sum(from_file.counts.values()) > 10 and from_file.intervals is not None
    for r in results[1:]:  # the same pixels, the same counts, boxes and rescaling as the file
        assert r.counts == from_file.counts and r.scale == from_file.scale
        np.testing.assert_allclose(r.detections.boxes, from_file.detections.boxes, atol=1e-3)
    assert [r.label for r in results[:2]] == [image_path.name, "image 1"]
    [gray] = bloodcell.predict(shipped, rgb[..., 1])  # one image, not a list: a list of one result
    assert any("grayscale" in w for w in gray.warnings)


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        (np.zeros((3, 48, 64), np.uint8), "looks channels-first"),
        (np.full((48, 64, 3), 200.0, np.float32), "float images must hold 0 to 1"),
        (np.zeros((0, 0, 3), np.uint8), "empty array"),
        (np.zeros((48, 64, 2), np.uint8), "expected (H, W) gray"),
        (np.zeros((48, 64, 3), bool), "bool array"),
        (np.full((48, 64, 3), 300, np.int64), "values 300 to 300"),
        (np.full((48, 64, 3), np.nan, np.float32), "NaN"),
        ([[1, 2], [3, 4]], "a list, not an image"),
    ],
)
def test_what_cannot_be_an_image_is_refused_before_any_work(shipped, image_path: Path, bad, says: str) -> None:
    with pytest.raises(ImageError, match="image 1: .*" + re.escape(says)):
        bloodcell.predict(shipped, [image_path, bad])


def test_other_pixel_forms_count_as_their_plain_image(shipped, image_path: Path) -> None:
    """Big-endian 16-bit arrays (FITS, some TIFF readers) and float PIL images in 0..1 are read, not
    refused or turned near-black (a silent count of zero)."""
    gray = np.asarray(Image.open(image_path).convert("L"))
    wide = gray.astype(np.uint16) * 257
    forms = [gray, wide, wide.astype(">u2"), Image.fromarray(gray.astype(np.float32) / 255)]
    counts = [r.counts for r in bloodcell.predict(shipped, forms)]
    assert sum(counts[0].values()) > 5 and all(c == counts[0] for c in counts)


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        (np.zeros((2, 48, 64, 3), np.uint8), "a stack of images; give them as a list, list(a)"),
        (b"/data/a.jpg", "bytes are not an image"),
    ],
)
def test_stacks_and_bytes_are_refused_with_what_to_give(shipped, bad, says: str) -> None:
    with pytest.raises(ImageError, match=re.escape(says)):
        bloodcell.predict(shipped, bad)


def test_batches_keep_their_size_and_every_result_its_place(shipped, image_path: Path, tmp_path, monkeypatch) -> None:
    """Arrays go through the network ``batch`` at a time (a GPU holds no more); files that fail, arrays
    and files mixed, and two files of one name keep their order and their own labels."""
    from bloodcell.runtime import predict as predict_module

    passes = []
    real = predict_module.detect_cells_batch

    def recorded(predictor, images, *args, **kwargs):
        passes.append(len(images))
        return real(predictor, images, *args, **kwargs)

    monkeypatch.setattr(predict_module, "detect_cells_batch", recorded)
    rgb = np.asarray(Image.open(image_path).convert("RGB"))
    bloodcell.predict(shipped, [rgb] * 5, batch=2)
    assert passes == [2, 2, 1]
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "f01.jpg").symlink_to(image_path)
    inputs = [tmp_path / "a" / "f01.jpg", tmp_path / "gone.jpg", rgb, tmp_path / "b" / "f01.jpg", rgb[..., 0]]
    results = bloodcell.predict(shipped, inputs, batch=2)
    assert [r.label for r in results] == ["a/f01.jpg", "gone.jpg", "image 2", "b/f01.jpg", "image 4"]
    assert [r.ok for r in results] == [True, False, True, True, True]
    assert results[0].counts == results[2].counts == results[3].counts


def test_a_file_that_failed_has_no_counts_and_its_record_says_why(shipped, image_path: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.png"
    good, failed = bloodcell.predict(shipped, [image_path, missing])
    assert good.ok and not failed.ok and "file not found" in failed.error
    with pytest.raises(ImageError, match="file not found"):  # zero cells would read as a count
        _ = failed.counts
    assert failed.to_record() == {"image": "missing.png", "error": failed.error}
    with pytest.raises(ImageError, match="nothing to draw"):
        bloodcell.annotate(failed)


def test_predict_paths_takes_one_path_and_checks_its_options_at_the_call(shipped, image_path: Path) -> None:
    assert len(list(bloodcell.predict_paths(shipped, str(image_path)))) == 1  # not one per character
    assert len(list(bloodcell.predict_paths(shipped, image_path))) == 1
    for options, says in [
        ({"batch": 0}, "batch=0"),
        ({"min_score": 2}, "min_score=2"),
        ({"conf": 1.5}, "conf=1.5"),
        ({"conf": float("nan")}, "conf=nan"),
        ({"conf": (0.5, 0.5)}, "2 thresholds given for 3 classes"),
        ({"conf": {"XX": 0.2}}, "unknown class 'XX'"),
        ({"cell_size": "big"}, "cell_size 'big'"),
        ({"cell_size": -5}, "cell_size=-5"),
        ({"batch": 2.5}, "batch=2.5"),
        ({"batch": True}, "batch=True"),
        ({"conf": True}, "conf=True"),
        ({"conf": {"RBC": "0.4,WBC=0.9"}}, "conf['RBC'] = '0.4,WBC=0.9': expected a number"),
        ({"min_score": True}, "min_score=True"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(says)):
            bloodcell.predict_paths(shipped, [image_path], **options)  # raised here, not at the first image


def test_operating_points_are_read_alike_in_every_form(shipped, image_path: Path) -> None:
    forms = [{"RBC": 0.3}, "RBC=0.3", (0.3, *map(float, np.atleast_1d(shipped.conf)[1:])), {"red blood cell": 0.3}]
    counts = [bloodcell.predict(shipped, image_path, conf=c)[0].counts for c in forms]
    assert counts[0] == counts[1] == counts[2] == counts[3]  # a class in any spelling the VOC reader takes
    assert counts[0]["RBC"] > bloodcell.predict(shipped, image_path)[0].counts["RBC"]  # a lower point counts more
    assert bloodcell.predict(shipped, image_path, cell_size="none")[0].scale == shipped.input_scale
    numpy_numbers = bloodcell.predict(shipped, image_path, min_score=np.float32(0.2), cell_size=np.float64(100))
    assert numpy_numbers[0].ok


def test_annotate_draws_the_counted_boxes_or_says_what_it_needs(shipped, image_path: Path) -> None:
    [kept] = bloodcell.predict(shipped, image_path)
    picture = bloodcell.annotate(kept)
    assert picture.size == (kept.width, kept.height)
    [lean] = list(bloodcell.predict_paths(shipped, [image_path], keep_image=False))
    with pytest.raises(ImageError, match="keep_image=False"):
        bloodcell.annotate(lean)
    assert np.array_equal(np.asarray(bloodcell.annotate(lean, Image.open(image_path))), np.asarray(picture))
    assert np.array_equal(np.asarray(bloodcell.annotate(lean, image_path)), np.asarray(picture))
    with pytest.raises(ImageError, match="counted at 640x480"):
        bloodcell.annotate(lean, np.zeros((10, 10, 3), np.uint8))


def test_evaluate_takes_a_dataset_and_refuses_nothing(shipped, tiny_voc: Path, tmp_path: Path) -> None:
    val = bloodcell.load_dataset(tiny_voc, split="val")
    whole = bloodcell.evaluate(shipped, val)
    assert whole.to_dict() == bloodcell.evaluate(shipped, val.records).to_dict()
    with pytest.raises(DatasetError, match="no image to score"):
        bloodcell.evaluate(shipped, [])
    by_predictor = bloodcell.validate(shipped, tiny_voc, conf={"RBC": 0.5}, progress=False)
    js = tmp_path / "v.json"
    bloodcell.validate(shipped, tiny_voc, json_path=js, progress=False)  # a loaded model is named, as the CLI names it
    assert json.loads(js.read_text())["model"].startswith("cellnet_bccd.pt@")
    by_text = bloodcell.validate(None, tiny_voc, conf="RBC=0.5", progress=False)
    assert by_predictor.to_dict() == by_text.to_dict()
    with pytest.raises(ConfigError, match="a loaded predictor keeps its own"):
        bloodcell.validate(shipped, tiny_voc, device="cpu")
    with pytest.raises(ConfigError, match=r"^--cell-size 3: "):  # `bloodcell val --cell-size 3` names its option
        bloodcell.validate(shipped, tiny_voc, cell_size=3.0)
    with pytest.raises(DatasetError, match="read by load_dataset"):
        bloodcell.load_voc(SRC.parents[1] / "datasets" / "bccd-dense.yaml", split="val")


def test_every_public_name_resolves_and_type_checkers_see_the_same_ones() -> None:
    for name in bloodcell.__all__:
        assert getattr(bloodcell, name) is not None
    assert set(bloodcell.__all__) <= set(dir(bloodcell))
    tree = ast.parse((SRC / "__init__.py").read_text())
    typed = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
        for stmt in node.body
        if isinstance(stmt, ast.ImportFrom)
        for alias in stmt.names
    }
    lazy = {k for k, v in ast.literal_eval(_assigned(tree, "_LAZY")).items()}
    assert typed == lazy and lazy <= set(bloodcell.__all__)
    assert (SRC / "py.typed").is_file()


def _assigned(tree: ast.Module, name: str) -> str:
    node = next(n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == name)
    return ast.unparse(node.value)


def test_calibrate_refits_a_model_file_as_the_command_does(tiny_voc: Path, tmp_path: Path) -> None:
    """`bloodcell calibrate` is this call: the refit is written where asked, its val metrics returned."""
    from bloodcell.runtime.loader import load_predictor

    with pytest.raises(ConfigError, match=r"--out: name the new \.pt model file"):
        bloodcell.calibrate("cellnet_bccd.pt", tiny_voc)
    metrics = bloodcell.calibrate("cellnet_bccd.pt", tiny_voc, tmp_path / "fit.pt", threads=1)
    refit = load_predictor(tmp_path / "fit.pt", device="cpu")
    assert tuple(metrics.conf) == tuple(refit.conf)  # the points it reports are the ones it wrote
    assert metrics.to_dict()["voc_map50"] == bloodcell.validate(refit, tiny_voc, progress=False).to_dict()["voc_map50"]


def test_a_model_file_or_a_folder_where_a_loaded_one_belongs_is_said(shipped, image_path: Path, tiny_voc) -> None:
    with pytest.raises(ConfigError, match=r"^predictor: expected a loaded model, got 'cellnet_bccd\.pt'; load it"):
        bloodcell.predict("cellnet_bccd.pt", image_path)
    with pytest.raises(ConfigError, match="expected a loaded model, got NoneType"):
        list(bloodcell.predict_paths(None, [image_path]))
    with pytest.raises(DatasetError, match=r"is a path; load it with bloodcell\.load_dataset"):
        bloodcell.evaluate(shipped, str(tiny_voc))
    with pytest.raises(ImageError, match="images: None"):
        bloodcell.predict(shipped, None)
    for threads in ("2", 0, True):
        with pytest.raises(ConfigError, match="expected a whole number >= 1"):
            bloodcell.load_predictor(threads=threads)
        with pytest.raises(ConfigError, match="expected a whole number >= 1"):  # before the data is read
            bloodcell.calibrate("cellnet_bccd.pt", tiny_voc / "nowhere", "fit.pt", threads=threads)
    assert bloodcell.load_predictor(threads=np.int64(1)).class_names  # numpy's integers are whole numbers


def test_stage_times_are_each_threads_own() -> None:
    """One predictor shared by two threads: each image's timing holds its own passes (one sum mixed them)."""
    import threading

    from bloodcell.runtime.timing import StageTimes

    times, seen = StageTimes(), {}

    def work(name: str, stage: str) -> None:
        with times.stage(stage):
            pass
        barrier.wait()  # both have timed their stage before either takes
        seen[name] = set(times.take())

    barrier = threading.Barrier(2)
    threads = [threading.Thread(target=work, args=a) for a in (("a", "network"), ("b", "letterbox"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"a": {"network"}, "b": {"letterbox"}} and times.take() == {}
