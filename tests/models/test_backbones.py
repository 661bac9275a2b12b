import pytest
import torch

from bloodcell.errors import ModelError
from bloodcell.models.backbones import BACKBONES, _lite0_weights, _mnv2_weights, create_backbone


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_declared_channels_and_strides_match_real_outputs(name):
    backbone = create_backbone(name, pretrained=False).eval()
    with torch.no_grad():
        outs = backbone(torch.zeros(1, 3, 96, 128))
    assert [o.shape[1] for o in outs] == backbone.channels
    assert [96 // o.shape[2] for o in outs] == backbone.strides == [8, 16, 32]


WEIGHT_FILES = {"efficientnet_lite0": _lite0_weights, "mobilenet_v2": _mnv2_weights}


def features(backbone, x):
    backbone.eval()
    with torch.no_grad():
        return backbone(x)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_imagenet_weights_determine_the_features(name):
    """Loaded features differ from a random initialisation's and are the same on every load
    (a tensor left unmapped would keep its random values and differ between loads)."""
    x = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    random_feats = features(create_backbone(name, pretrained=False), x)
    torch.manual_seed(2)
    first = features(create_backbone(name, pretrained=True), x)
    torch.manual_seed(3)
    second = features(create_backbone(name, pretrained=True), x)
    for loaded, again, rand in zip(first, second, random_feats, strict=True):
        torch.testing.assert_close(loaded, again, rtol=0, atol=0)
        assert not torch.allclose(loaded, rand, atol=1e-3)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_changed_tensor_in_weights_file_changes_the_features(name, tmp_path):
    """The file's tensors are what the backbone computes with: perturbing the stem changes the output."""
    state = torch.load(WEIGHT_FILES[name](), map_location="cpu", weights_only=True)
    stem = next(iter(state))
    state[stem] = state[stem] * 1.5
    torch.save(state, tmp_path / "tampered.pt")
    x = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    original = features(create_backbone(name, pretrained=True), x)
    tampered = features(create_backbone(name, pretrained=False, weights=str(tmp_path / "tampered.pt")), x)
    assert not torch.allclose(original[0], tampered[0], atol=1e-4)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_weights_file_missing_a_tensor_is_refused(name, tmp_path):
    state = torch.load(WEIGHT_FILES[name](), map_location="cpu", weights_only=True)
    del state[list(state)[5]]  # a backbone tensor (the stem's batch norm), not the classifier's
    torch.save(state, tmp_path / "short.pt")
    with pytest.raises(ModelError, match=r"short\.pt: .*tensors"):
        create_backbone(name, pretrained=False, weights=str(tmp_path / "short.pt"))


def test_lite0_weights_of_wrong_shape_are_refused(tmp_path):
    state = torch.load(_lite0_weights(), map_location="cpu", weights_only=True)
    stem = next(iter(state))
    state[stem] = torch.zeros(16, 3, 3, 3)
    torch.save(state, tmp_path / "wrong.pt")
    with pytest.raises(ModelError, match="do not fit"):
        create_backbone("efficientnet_lite0", pretrained=False, weights=str(tmp_path / "wrong.pt"))


def test_user_weights_file_is_loaded(tmp_path):
    reference = create_backbone("efficientnet_lite0", pretrained=False)
    torch.save(reference.body.state_dict(), tmp_path / "mine.pt")
    loaded = create_backbone("efficientnet_lite0", pretrained=False, weights=str(tmp_path / "mine.pt"))
    for a, b in zip(reference.body.state_dict().values(), loaded.body.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint"])
def test_bad_weights_file_is_a_clear_error(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=r"bad\.pt"):
        create_backbone("mobilenet_v2", pretrained=False, weights=str(path))


def test_unknown_backbone():
    with pytest.raises(ModelError, match="unknown backbone"):
        create_backbone("resnet9000")


def test_a_weights_file_that_is_not_one_says_so(tmp_path):
    from bloodcell.errors import ModelError

    text = tmp_path / "w.pth"
    text.write_text("hello")
    with pytest.raises(ModelError, match=r"w\.pth: not a PyTorch weights file \(not a file torch\.save wrote\)$"):
        create_backbone("efficientnet_lite0", pretrained=True, weights=str(text))
