"""Training on a dataset YAML with partial labels ends with a model that knows how to count."""

import json

import pytest

from bloodcell.cli import main
from bloodcell.config import TrainConfig
from bloodcell.engine.train import train
from bloodcell.errors import ConfigError
from bloodcell.models.checkpoint import load_model
from bloodcell.runtime.metadata import model_ref

pytestmark = pytest.mark.slow


def test_yaml_with_partial_labels_trains_and_fits_counting(tiny_voc, tmp_path):
    spec = tmp_path / "data.yaml"
    spec.write_text(f"sources:\n  - path: {tiny_voc}\n    exhaustive: [WBC]\n")
    cfg = TrainConfig(
        data=str(spec), epochs=1, batch=2, imgsz=256, out=str(tmp_path / "run"), threads=2,
        pretrained=False, missing_labels="ignore",
    )  # fmt: skip
    result = train(cfg, progress=False)
    _, info = load_model(result.best)
    assert len(info.conf) == 3 and info.calibration is not None
    assert info.extra["train_config"]["missing_labels"] == "ignore"
    # RBC and platelets are not exhaustive anywhere: no image to fit or score their counts on
    assert info.conf[0] == 0.5 and info.metrics["val"]["count_images"] == {"RBC": 0, "WBC": 2, "Platelets": 0}
    # its training images: every score there is in-sample, and val says so (its val split: no such note)
    from bloodcell.engine.validate import trained_on_note
    from bloodcell.runtime.loader import load_predictor

    predictor = load_predictor(result.best)
    assert "is the one this model was trained on" in trained_on_note(predictor, spec, "train")
    assert trained_on_note(predictor, spec, "val") is None and trained_on_note(predictor, tiny_voc, "train") is None


def test_calibrate_refits_a_model_file(tiny_voc, tiny_model, tmp_path, capsys):
    out = tmp_path / "fitted.pt"
    assert main(["calibrate", "--model", str(tiny_model()), "--data", str(tiny_voc), "--out", str(out)]) == 0
    _, info = load_model(out)
    assert len(info.conf) == 3 and set(info.calibration["knots"]) == {"RBC", "WBC", "Platelets"}
    assert info.metrics["val"]["images"] == 2
    out_text, err = capsys.readouterr()
    assert "operating points" in out_text
    # Two val images hold 2 white cells and no platelet: their operating points are guesses, and say so.
    assert "warning: WBC: operating point and intervals fitted on 2 labelled cells in 2 val images" in err
    # no platelet at all: nothing to fit a point on (any point above the false ones would "count best")
    assert (
        "warning: Platelets: val holds no Platelets cell (in the 2 images that box it exhaustively): operating " in err
    )
    assert info.conf[2] == 0.5  # and intervals uninformed, not "every score is no cell" fitted on no hit
    assert info.calibration["knots"]["Platelets"] == {"score": [0.0, 1.0], "prob": [0.0, 1.0]}
    # 40 red cells, but in 2 images: no 90% conformal width exists below 9 (this model has no calibration to keep)
    assert "warning: RBC: 2 val images box it exhaustively, fewer than the 9 that fit a 90% interval's width" in err
    assert "intervals cover about 67% of new images, not 90%" in err and "RBC: operating point" not in err
    assert "note: the count errors and coverage above are in-sample" in err and "on these 2 images" in err
    js = tmp_path / "v.json"
    assert main(["val", "--model", str(out), "--data", str(tiny_voc), "--json", str(js), "--out", ""]) == 0
    table, err = capsys.readouterr()
    # the split its counting was fitted on: val says its count errors there are in-sample; other images not
    assert "note: 2 of the 2 images scored here are named as those the model's operating points" in err
    assert main(["val", "--model", str(out), "--data", str(tiny_voc), "--split", "train", "--out", ""]) == 0
    assert "in-sample" not in capsys.readouterr().err
    assert "nan" not in table and "plots:" not in table  # what cannot be scored shows "-"; no plots asked for
    assert table.splitlines()[3].split()[:2] == ["Platelets", "-"]  # no platelet in these images: no AP
    scored = json.loads(js.read_text())
    assert set(scored["count_coverage"]) == {"RBC", "WBC", "Platelets"}
    assert scored["model"] == model_ref(out) and scored["data"] == str(tiny_voc) and scored["split"] == "val"
    assert scored["cell_size"] == "auto"  # as scored: --cell-size moves mAP and counts


def test_calibrate_stores_per_class_nms_iou_and_refuses_bad_ones(tiny_voc, tiny_model, tmp_path, capsys):
    source, out = tiny_model(), tmp_path / "fitted.pt"
    args = ["calibrate", "--model", str(source), "--data", str(tiny_voc), "--out", str(out)]
    assert main([*args, "--nms-iou", "WBC=0.3"]) == 0
    _, info = load_model(out)
    assert info.iou_threshold == (0.5, 0.3, 0.5)
    assert "NMS IoU RBC 0.50, WBC 0.30, Platelets 0.50" in capsys.readouterr().out
    _, again = load_model(source)
    assert again.iou_threshold == 0.5  # the source file is untouched
    from bloodcell.engine.train import _initial_model

    initial = _initial_model(TrainConfig(model=str(out)), info.class_names)
    assert initial.iou_threshold == (0.5, 0.3, 0.5)  # a fine-tune keeps them, as it keeps the scale
    assert main([*args, "--nms-iou", "0.45"]) == 0
    _, same = load_model(out)
    assert same.iou_threshold == 0.45  # one number stays one: no per-class format an older runtime refuses
    assert main([*args, "--nms-iou", "Monocyte=0.3"]) == 2
    assert "--nms-iou 'Monocyte=0.3'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--nms-iou", "0"])
    assert "--nms-iou 0: expected a value in (0, 1]" in capsys.readouterr().err


def test_unknown_missing_label_method_is_refused():
    with pytest.raises(ConfigError, match="--missing-labels"):
        TrainConfig(missing_labels="guess")


def test_val_says_when_the_reader_repaired_or_dropped_labels(tiny_model, tmp_path, capsys):
    from data.voc_factory import make_voc

    voc = make_voc(tmp_path / "voc", n_images=2)
    voc.add("img1", [("RBC", (2, 2, 30, 30)), ("WBC", (40, 40, 40, 40))])  # a zero-size box: dropped
    assert main(["val", "--model", str(tiny_model()), "--data", str(voc.root), "--out", ""]) == 0
    err = capsys.readouterr().err
    assert f"warning: {voc.root} split val: 1 label findings (1 degenerate-box) repaired or dropped" in err
    assert f"`bloodcell data check {voc.root}` lists them" in err


def test_calibrate_refuses_nms_iou_for_a_model_with_its_own_nms(tiny_voc, tmp_path, capsys):
    import torch

    from bloodcell.models.checkpoint import make_info, model_payload, save_checkpoint
    from bloodcell.models.registry import build_model, model_config

    cfg, path = model_config("fasterrcnn"), tmp_path / "frcnn.pt"
    torch.manual_seed(0)
    net = build_model("fasterrcnn", cfg, pretrained=False)
    save_checkpoint(path, model_payload(net, make_info("fasterrcnn", cfg, ("RBC", "WBC", "Platelets"), (640, 480))))
    args = ["calibrate", "--model", str(path), "--data", str(tiny_voc), "--out", str(tmp_path / "f.pt")]
    assert main([*args, "--nms-iou", "WBC=0.3"]) == 2
    assert "whose NMS is its own" in capsys.readouterr().err
    assert not (tmp_path / "f.pt").exists()


def test_val_and_calibrate_exit_1_when_listed_images_are_left_out(tiny_voc, tiny_model, tmp_path, capsys):
    """Scores or a fit over fewer images than the split lists are a failed input: said after the table,
    with which images, and in the exit code (the results are still written)."""
    root = tmp_path / "voc"
    root.mkdir()
    for sub in ("Annotations", "JPEGImages"):
        (root / sub).symlink_to(tiny_voc / sub)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    listed = (tiny_voc / "ImageSets" / "Main" / "val.txt").read_text().split()
    (root / "ImageSets" / "Main" / "val.txt").write_text("\n".join([*listed, "BloodImage_09999"]) + "\n")
    js = tmp_path / "v.json"
    assert main(["val", "--model", str(tiny_model()), "--data", str(root), "--json", str(js), "--out", ""]) == 1
    err = capsys.readouterr().err
    assert "1 listed images left out (1 missing-annotation: BloodImage_09999.xml); the results cover the other 2" in err
    assert "is a plain VOC folder, so counts are scored as if every cell in it is boxed" in err
    assert json.loads(js.read_text())["images"] == 2
    out = tmp_path / "fitted.pt"
    assert main(["calibrate", "--model", str(tiny_model()), "--data", str(root), "--out", str(out)]) == 1
    assert "BloodImage_09999.xml" in capsys.readouterr().err and out.is_file()
    assert main(["val", "--model", str(out), "--data", str(tiny_voc), "--out", ""]) == 0  # the whole split: 0
    # nothing left to score: no table of zeros, no JSON, exit 2 (it cannot run)
    (root / "ImageSets" / "Main" / "gone.txt").write_text("BloodImage_09998\nBloodImage_09999\n")
    js.unlink()
    assert main(["val", "--model", str(out), "--data", str(root), "--split", "gone", "--json", str(js)]) == 2
    err = capsys.readouterr().err
    assert f"{root}: split 'gone' has no image to score (2 listed images left out; `bloodcell data check" in err
    assert "mAP" not in err and not js.exists()


def test_classes_val_cannot_fit_keep_the_models_counting(tiny_voc, tiny_model, tmp_path, capsys):
    """Refitting (calibrate) or fine-tuning (train --model) on data that boxes only white cells keeps the
    model's red-cell and platelet operating points and calibration: val holds nothing to fit them on."""
    fitted = tmp_path / "fitted.pt"
    assert main(["calibrate", "--model", str(tiny_model()), "--data", str(tiny_voc), "--out", str(fitted)]) == 0
    _, before = load_model(fitted)
    before.conf = (0.61, before.conf[1], 0.57)  # recognisable points, not the 0.5 default
    from bloodcell.models.checkpoint import model_payload, save_checkpoint

    model, _ = load_model(fitted)
    save_checkpoint(fitted, model_payload(model, before))
    wbc_only = tmp_path / "wbc.yaml"
    wbc_only.write_text(f"sources:\n  - path: {tiny_voc}\n    exhaustive: [WBC]\n")
    capsys.readouterr()
    out = tmp_path / "refit.pt"
    assert main(["calibrate", "--model", str(fitted), "--data", str(wbc_only), "--out", str(out)]) == 0
    _, after = load_model(out)
    assert (after.conf[0], after.conf[2]) == (0.61, 0.57)
    for name in ("RBC", "Platelets", "WBC"):  # WBC: 2 cells make no calibration (its intervals would be n-n)
        assert after.calibration["knots"][name] == before.calibration["knots"][name]
        assert after.calibration["width"].get(name) == before.calibration["width"].get(name)
    err = capsys.readouterr().err
    assert "RBC: no val image labels it exhaustively, so it keeps the model's operating point 0.61" in err
    assert "warning: WBC: operating point fitted on 2 labelled cells in 2 val images (fewer than 20), its " in err
    assert "intervals keep the calibration the model had (too few cells to fit one)" in err
    cfg = TrainConfig(
        data=str(wbc_only), model=str(fitted), epochs=1, batch=2, imgsz=256, out=str(tmp_path / "run"), threads=2,
        missing_labels="ignore", input_size=(416, 320),  # the tiny model's own 320x256 holds 2.5 of BCCD's cells
    )  # fmt: skip
    _, tuned = load_model(train(cfg, progress=False).best)
    assert (tuned.conf[0], tuned.conf[2]) == (0.61, 0.57)
    assert tuned.calibration["knots"]["RBC"] == before.calibration["knots"]["RBC"]


def test_calibrate_honours_threads(tiny_voc, tiny_model, tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        args = ["calibrate", "--model", str(tiny_model()), "--data", str(tiny_voc), "--out", str(tmp_path / "f.pt")]
        assert main([*args, "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_the_fitted_images_a_file_records_are_read_whatever_its_history():
    """An export's own refit names its images (an older bloodcell's refit names none: no note, rather than
    the .pt's images); a hand-edited record that is not a list of names is no crash, and no note."""
    from types import SimpleNamespace

    from bloodcell.engine.validate import fitted_images

    def export(raw: dict):
        return SimpleNamespace(metadata=SimpleNamespace(raw=raw))

    inherited = {"counting_fit": {"images": ["a", "b"]}}
    assert fitted_images(export(inherited)) == ["a", "b"]
    assert fitted_images(export({**inherited, "fitted": {"image_ids": ["c"]}})) == ["c"]
    assert fitted_images(export({**inherited, "fitted": {"generation": 1}})) == []  # an older refit's
    assert fitted_images(export({"counting_fit": {"images": 5}})) == []
    assert fitted_images(export({"counting_fit": {"images": ["a", ["b"]]}})) == ["a"]
    assert fitted_images(SimpleNamespace(info=SimpleNamespace(extra={"counting_fit": {"images": ["x"]}}))) == ["x"]


def test_a_val_without_red_cells_keeps_the_models_point_and_cell_size(tiny_voc, tmp_path, capsys):
    """Val boxes every cell but holds no red one: the fit had put RBC's point above every score (0 red cells
    counted) and dropped the reference cell size (no rescaling); the model's own stay, and say so."""
    import shutil
    import xml.etree.ElementTree as ET

    from bloodcell.weights import shipped_by_name

    data = tmp_path / "norbc"
    shutil.copytree(tiny_voc, data, symlinks=False)
    for image_id in (data / "ImageSets" / "Main" / "val.txt").read_text().split():
        path = data / "Annotations" / f"{image_id}.xml"
        tree = ET.parse(path)
        for obj in [o for o in tree.getroot().findall("object") if o.findtext("name") == "RBC"]:
            tree.getroot().remove(obj)
        path.unlink()
        tree.write(path)
    _, shipped = load_model(shipped_by_name("cellnet_bccd.pt"))
    out = tmp_path / "refit.pt"
    assert main(["calibrate", "--model", "cellnet_bccd.pt", "--data", str(data), "--out", str(out)]) == 0
    _, info = load_model(out)
    assert info.conf[0] == shipped.conf[0]
    err = capsys.readouterr().err
    assert "RBC: val holds no RBC cell (in the 2 images that box it exhaustively), so it keeps the model's " in err
    # fields without a cell (a blank slide): no red cell to measure either, so the model's reference size stays
    from PIL import Image

    for image_id in (data / "ImageSets" / "Main" / "val.txt").read_text().split():
        (data / "JPEGImages" / f"{image_id}.jpg").unlink()
        Image.new("RGB", (640, 480), (226, 214, 220)).save(data / "JPEGImages" / f"{image_id}.jpg")
        path = data / "Annotations" / f"{image_id}.xml"
        tree = ET.parse(path)
        for obj in tree.getroot().findall("object"):
            tree.getroot().remove(obj)
        tree.write(path)
    assert main(["calibrate", "--model", "cellnet_bccd.pt", "--data", str(data), "--out", str(out)]) == 0
    _, blank = load_model(out)
    assert blank.cell_size == shipped.cell_size and blank.conf == shipped.conf
    assert f"red cells {shipped.cell_size} px (the model's: too few on val to measure)" in capsys.readouterr().out


def test_a_refit_on_another_split_names_it_in_its_warnings(tiny_voc, tiny_model, tmp_path, capsys):
    out = tmp_path / "fitted.pt"
    args = ["calibrate", "--model", str(tiny_model()), "--data", str(tiny_voc), "--split", "train", "--out", str(out)]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "RBC: 4 train images box it exhaustively, fewer than the 9" in err and " val images" not in err
    assert " val" not in out.splitlines()[-1]  # the model line too
    _, info = load_model(out_path := tmp_path / "fitted.pt")
    assert list(info.metrics) == ["train"] and out_path.is_file()  # stored under the split it was fitted on
