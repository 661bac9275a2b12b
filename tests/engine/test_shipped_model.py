"""The shipped default model: integrity, and accuracy and counting guards (a drop fails CI)."""

import json
import re
import shutil
from pathlib import Path

import pytest

from bloodcell.cli import main
from bloodcell.errors import ModelError
from bloodcell.models.checkpoint import load_model
from bloodcell.weights import default_model

pytestmark = pytest.mark.slow

#: Regression guards: the counts issue's CI guard (RBC MAE 1.5, mAP 0.88), and its targets, a little looser, for
#: what that guard leaves out (BENCHMARKS.md has the measured numbers). The operating points were fitted on
#: these 42 dense val images, so the counting guard is in-sample: it catches a model or a counting change
#: that got worse, not how well the model counts images it has not seen (BENCHMARKS: 2-fold).
MIN_VAL_MAP50 = 0.88  # BCCD val with its original labels, the 2019 seed's metric (0.869)
MAX_DENSE_RBC_MAE = 1.5  # red cells per image on the densely labelled val images
MAX_DENSE_RBC_TOTAL = 0.03  # |total % error|; target 2%
MAX_DENSE_WBC_MAE = 0.05  # target 0.03
MAX_DENSE_PLATELET_MAE = 0.15  # the target itself: a platelet point that drifts moves it at once
MAX_DENSE_PLATELET_TOTAL = 0.10  # 42 platelets on the 42 images: one is 2.4%


def test_shipped_model_is_small_and_checked():
    path, digest = default_model()
    assert path.stat().st_size <= 25 * 2**20
    _, info = load_model(path, expected_sha256=digest)
    assert info.class_names == ("RBC", "WBC", "Platelets")
    assert len(info.conf) == 3 and all(0.05 <= c <= 0.95 for c in info.conf)
    assert info.calibration is not None and set(info.calibration["knots"]) == set(info.class_names)
    assert 60 <= info.cell_size <= 140


def test_the_shipped_model_names_the_images_its_counting_was_fitted_on(bccd_root, dense_root, tmp_path):
    """Its points were fitted on datasets/bccd-dense.yaml's val split (BCCD val, dense labels where they exist):
    val on those images says its count errors are in-sample."""
    from bloodcell.data.sources import load_dataset
    from bloodcell.engine.validate import fitted_images, in_sample_note
    from bloodcell.runtime.loader import load_predictor

    predictor = load_predictor(None)
    val_ids = (bccd_root / "ImageSets" / "Main" / "val.txt").read_text().split()
    assert sorted(fitted_images(predictor)) == sorted(val_ids)
    note = in_sample_note(predictor, load_dataset(dense_root, "val", decode_images=False))
    assert note is not None and note.startswith("note: 42 of the 42 images scored here")
    assert in_sample_note(predictor, load_dataset(bccd_root, "test", decode_images=False)) is None
    copy = tmp_path / "models" / "mine.pt"  # the same bytes elsewhere are the same model, fitted on the same
    copy.parent.mkdir()
    shutil.copyfile(default_model()[0], copy)
    assert sorted(fitted_images(load_predictor(copy))) == sorted(val_ids)


def test_the_shipped_model_by_its_file_name_from_any_folder(tmp_path, monkeypatch):
    from bloodcell.models.checkpoint import read_checkpoint
    from bloodcell.runtime.loader import load_predictor

    path = default_model()[0]
    monkeypatch.chdir(tmp_path)  # no such file here: the name means the packaged model, as yolo11n.pt does
    assert load_predictor(path.name).describe()["name"] == load_predictor(None).describe()["name"]
    assert read_checkpoint(path.name)["info"]["name"] == read_checkpoint(path)["info"]["name"]
    with monkeypatch.context() as m:  # and it is checked against the manifest's sha256, as the default is
        m.setattr("bloodcell.models.checkpoint.default_model", lambda: (path, "0" * 64))
        with pytest.raises(ModelError, match="sha256"):
            load_predictor(path.name)
    with monkeypatch.context() as m:  # also where it is read as a checkpoint (train, export, calibrate)
        m.setattr("bloodcell.models.checkpoint.default_model", lambda: (path, "0" * 64))
        with pytest.raises(ModelError, match="sha256"):
            read_checkpoint(path.name)
    hint = f"(the shipped model, from any folder: --model {path.name})"
    with pytest.raises(ModelError, match=re.escape(f"{Path('models', path.name)}: model file not found {hint}")):
        load_predictor(Path("models", path.name))
    with pytest.raises(ModelError, match=r"other\.pt: model file not found$"):  # another model: no hint
        load_predictor("other.pt")
    from bloodcell.config import TrainConfig
    from bloodcell.engine.train import absolute_paths

    assert absolute_paths(TrainConfig(model=path.name)).model == str(path)  # `train --model cellnet_bccd.pt`
    (tmp_path / path.name).write_bytes(b"not a model")  # a file of that name here is the user's, and is read
    with pytest.raises(ModelError, match="not a"):
        load_predictor(path.name)


def test_another_model_reads_without_a_usable_shipped_model(tmp_path, monkeypatch):
    from bloodcell.models.checkpoint import read_checkpoint

    mine = tmp_path / "mine.pt"
    shutil.copyfile(default_model()[0], mine)

    def broken():
        raise ModelError("shipped model manifest unreadable")

    monkeypatch.setattr("bloodcell.models.checkpoint.default_model", broken)
    assert read_checkpoint(mine)["info"]["name"]  # --model given: the shipped model's state does not matter


def test_tampered_model_is_refused(tmp_path):
    path, digest = default_model()
    copy = tmp_path / path.name
    shutil.copyfile(path, copy)
    with copy.open("r+b") as f:
        f.seek(-100, 2)
        f.write(b"\0" * 10)
    with pytest.raises(ModelError, match="sha256"):
        load_model(copy, expected_sha256=digest)


def test_shipped_model_accuracy_on_val(bccd_root, tmp_path, capsys):
    out = tmp_path / "val"
    code = main(
        ["val", "--data", str(bccd_root), "--split", "val", "--json", str(tmp_path / "m.json"), "--out", str(out)]
    )
    assert code == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["images"] == 87
    assert metrics["voc_map50"] >= MIN_VAL_MAP50, metrics
    assert min(metrics["voc_ap50"].values()) >= 0.75, metrics
    assert (out / "pr_curves.png").is_file() and (out / "confusion_matrix.png").is_file()
    assert "VOC mAP@0.5" in capsys.readouterr().out


def test_predict_counts_white_cells_on_bccd(bccd_root, tmp_path):
    """Each of these val images holds exactly one labelled WBC; the shipped model must count it."""
    names = ["BloodImage_00000.jpg", "BloodImage_00002.jpg", "BloodImage_00014.jpg"]
    js = tmp_path / "r.json"
    assert main(["predict", *(str(bccd_root / "JPEGImages" / n) for n in names), "--json", str(js)]) == 0
    records = json.loads(js.read_text())
    assert [r["counts"]["WBC"] for r in records] == [1, 1, 1]
    assert all(r["counts"]["RBC"] >= 5 for r in records)


def test_shipped_model_counts_on_dense_val(dense_root, tmp_path):
    args = ["val", "--data", str(dense_root), "--split", "val", "--json", str(tmp_path / "d.json"), "--out", ""]
    assert main(args) == 0
    m = json.loads((tmp_path / "d.json").read_text())
    assert m["images"] == 42
    assert m["count_mae"]["RBC"] <= MAX_DENSE_RBC_MAE, m
    assert abs(m["count_total_error"]["RBC"]) <= MAX_DENSE_RBC_TOTAL, m
    assert m["count_mae"]["WBC"] <= MAX_DENSE_WBC_MAE, m
    assert m["count_mae"]["Platelets"] <= MAX_DENSE_PLATELET_MAE, m
    assert abs(m["count_total_error"]["Platelets"]) <= MAX_DENSE_PLATELET_TOTAL, m
    assert 0.7 <= m["count_coverage"]["RBC"] <= 1.0, m
