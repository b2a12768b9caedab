"""Issue 13: progress by phase, and a stop honoured at once in every phase (setup, downloads, the frozen pass,
inside a forward and a backward pass), through the engine's real entry points on tiny data."""
import hashlib
import shutil
import threading

import pytest
import torch

from core.config import TrainConfig
from worker.engine import data
from worker.engine import train as engine
from worker.engine.stop import Stop, StopRequested
from worker.engine.train import Callbacks, Paths, run
from worker.engine.weights import HUB_CHUNK_BYTES

from .hubserver import FakeHub, deit_tiny_weights
from .test_data import _archive
from .test_train import TINY


def _phases(events):
    """The phases in order, each run of the same (phase, split) once."""
    out = []
    for p in events:
        key = (p["phase"], p["split"])
        if not out or out[-1] != key:
            out.append(key)
    return out


def test_progress_reports_every_phase_with_done_of_total(tiny_cifar_dir, tmp_path):
    seen = []
    run(TrainConfig(**TINY, epochs=2), Paths(tiny_cifar_dir, tmp_path / "o"), Callbacks(on_progress=seen.append))
    phases = _phases(seen)
    assert phases[:3] == [("starting", None), ("loading", None), ("features", "train")]
    assert phases[3:6] == [("training", None), ("features", "val"), ("validating", None)]
    assert phases[-2:] == [("training", None), ("validating", None)]
    for phase, split in set(phases) - {("starting", None)}:
        last = [p for p in seen if (p["phase"], p["split"]) == (phase, split)][-1]
        assert last["done"] == last["total"] > 0, (phase, split)
    feats = [p for p in seen if p["phase"] == "features" and p["epoch"] == 1]
    assert {p["split"]: p["total"] for p in feats} == {"train": 200, "val": 60}
    train = [p for p in seen if p["phase"] == "training" and p["epoch"] == 2]
    assert [p["done"] for p in train] == list(range(8)) and train[-1]["total"] == 7  # 200 images, batch 32


def _stop_at_block(monkeypatch, stop: Stop, at: int) -> dict:
    """Once armed, set `stop` inside the forward of the `at`-th transformer block that runs; count the blocks that
    start and finish after arming."""
    from timm.models.vision_transformer import Block
    calls = {"armed": False, "started": 0, "finished": 0}
    orig = Block.forward

    def forward(self, x, *a, **kw):
        if not calls["armed"]:
            return orig(self, x, *a, **kw)
        calls["started"] += 1
        if calls["started"] == at:
            stop.set()
        out = orig(self, x, *a, **kw)
        calls["finished"] += 1
        return out
    monkeypatch.setattr(Block, "forward", forward)
    return calls


@pytest.mark.parametrize("cache", [False, True])
def test_a_stop_lands_inside_a_long_forward_pass(tiny_cifar_dir, tmp_path, monkeypatch, cache):
    """One batch of all 200 images (the big-batch case of the issue): the stop set inside block 3's forward ends
    the run inside that block, not after the batch. With the cache on, that forward is the frozen pass."""
    stop = Stop()
    calls = _stop_at_block(monkeypatch, stop, at=3)
    arm = {"features" if cache else "training"}
    s = run(TrainConfig(**dict(TINY, batch_size=256), epochs=2, feature_cache=cache),
            Paths(tiny_cifar_dir, tmp_path / "o"),
            Callbacks(stop=stop, on_progress=lambda p: p["phase"] in arm and calls.update(armed=True)))
    assert s["status"] == "stopped" and s["epochs_run"] == 0
    assert s["stopped_in"] == ("features" if cache else "training")
    assert (calls["started"], calls["finished"]) == (3, 2)  # block 3 never finished its forward


def test_a_stop_inside_backward_keeps_the_last_checkpoint(tiny_cifar_dir, tmp_path, monkeypatch):
    """Set from autograd itself (a hook on the logits' gradient, batch 2 of epoch 2): the next gradient hook, in
    the trainable block, raises inside backward(). The batch never steps, the run ends stopped, and the checkpoint
    of epoch 1 is the one on disk, byte for byte."""
    stop = Stop()
    at = {"epoch": 0, "batch": 0}
    saved = {}
    orig = engine.SingleBlockModel.forward_from_features

    def forward_from_features(self, feats):
        out = orig(self, feats)
        if self.training and torch.is_grad_enabled():
            at["batch"] += 1
            if (at["epoch"], at["batch"]) == (1, 2):
                out.register_hook(lambda g: stop.set())
        return out
    monkeypatch.setattr(engine.SingleBlockModel, "forward_from_features", forward_from_features)
    steps = []
    real_step = torch.optim.Adam.step
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, *a, **kw: (steps.append(1), real_step(self, *a, **kw))[1])

    def on_epoch(row):
        at.update(epoch=row["epoch"], batch=0)
        saved["ckpt"] = (tmp_path / "o" / "checkpoint.pt").read_bytes()
        saved["steps"] = len(steps)
    trained = []
    s = run(TrainConfig(**TINY, epochs=3), Paths(tiny_cifar_dir, tmp_path / "o"),
            Callbacks(stop=stop, on_epoch=on_epoch,
                      on_progress=lambda p: p["phase"] == "training" and trained.append((p["epoch"], p["done"]))))
    assert s["status"] == "stopped" and s["stopped_in"] == "training" and s["epochs_run"] == 1
    assert trained[-1] == (2, 1)  # batch 2 of epoch 2 never got to its report: it ended inside its backward
    assert len(steps) == saved["steps"] + 1  # batch 1 of epoch 2 stepped; batch 2 did not
    assert (tmp_path / "o" / "checkpoint.pt").read_bytes() == saved["ckpt"]
    again = run(TrainConfig(**TINY, epochs=3), Paths(tiny_cifar_dir, tmp_path / "o"))
    assert again["status"] == "succeeded" and again["epochs_run"] == 3


def test_a_stop_during_setup_ends_the_run_stopped(tiny_cifar_dir, tmp_path):
    stop = Stop()
    seen = []
    s = run(TrainConfig(**TINY, epochs=2), Paths(tiny_cifar_dir, tmp_path / "o"),
            Callbacks(stop=stop, on_progress=lambda p: (seen.append(p["phase"]), stop.set())))
    assert s["status"] == "stopped" and s["stopped_in"] == "starting" and s["epochs_run"] == 0
    assert seen == ["starting"] and (tmp_path / "o" / "metrics.jsonl").read_text() == ""  # no epoch
    assert (tmp_path / "o" / "summary.json").is_file()


def test_should_stop_is_asked_by_time_not_by_batch_count(tiny_cifar_dir, tmp_path, monkeypatch):
    """A polled callback (no Event) is asked every STOP_POLL_S at batch boundaries, and after every epoch."""
    clock = {"t": 0.0}
    monkeypatch.setattr(engine.time, "monotonic", lambda: clock["t"])
    asked = []

    def should_stop():
        asked.append(clock["t"])
        return clock["t"] >= 10.0

    def on_progress(p):
        if p["phase"] == "training" and p["done"]:  # a batch trained
            clock["t"] += 0.05 if p["epoch"] == 1 else 5.0  # four batches per poll in epoch 1; then slow batches
    s = run(TrainConfig(**dict(TINY, batch_size=16), epochs=3), Paths(tiny_cifar_dir, tmp_path / "o"),
            Callbacks(should_stop=should_stop, on_progress=on_progress))
    assert s["status"] == "stopped" and s["epochs_run"] == 1
    in_epoch_1 = [a for a in asked if 0 < a < 0.649]  # 13 batch boundaries, 0.05 s apart: a poll every 0.2 s
    assert 2 <= len(in_epoch_1) <= 4
    assert asked[-1] == pytest.approx(10.65)  # epoch 2: asked after batch 1 (5.65) and batch 2 (10.65): stop


def test_a_stop_during_the_data_download_aborts_it_and_keeps_nothing(tmp_path):
    blob = _archive(tmp_path / "src")
    stop = Stop()
    seen = []

    def on_progress(p):
        seen.append(p)
        if p["phase"] == "downloading" and p["done"] > 0:
            stop.set()
    with FakeHub({"data/cifar-10-python.tar.gz": blob}, rate=len(blob) / 30, chunk=1024) as hub:
        s = run(TrainConfig(**TINY, epochs=1), Paths(tmp_path / "data", tmp_path / "o", allow_download=True,
                                                     download_url=f"{hub.url}/data/cifar-10-python.tar.gz"),
                Callbacks(stop=stop, on_progress=on_progress))
    assert s["status"] == "stopped" and s["stopped_in"] == "downloading"
    dl = [p for p in seen if p["phase"] == "downloading"]
    assert dl[-1]["total"] == len(blob) and 0 < dl[-1]["done"] < len(blob) and dl[-1]["what"] == "CIFAR-10"
    assert list((tmp_path / "data").iterdir()) == []  # no partial file left


def test_the_data_download_reports_bytes_of_total(tmp_path):
    blob = _archive(tmp_path / "src")
    done = []
    with FakeHub({"a/c.tar.gz": blob}, chunk=4096) as hub:
        data.download(tmp_path / "dl", url=f"{hub.url}/a/c.tar.gz", md5=hashlib.md5(blob).hexdigest(),
                      progress=lambda d, t: done.append((d, t)))
    assert len(done) > 1 and done[-1] == (len(blob), len(blob))
    assert [d for d, _ in done] == sorted(d for d, _ in done)


@pytest.fixture
def hub(monkeypatch):
    """The fake hub serving deit_tiny's weights, with huggingface_hub pointed at it (and allowed online)."""
    from huggingface_hub import constants
    blob = deit_tiny_weights(seed=3)
    with FakeHub({"timm/deit_tiny_patch16_224.fb_in1k/model.safetensors": blob}, rate=len(blob) / 20) as h:
        monkeypatch.setenv("HF_ENDPOINT", h.url)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # read at each load, as a worker does
        h.blob = blob
        yield h


def test_hub_weights_report_their_bytes_and_a_stop_aborts_the_download(hub, tiny_cifar_dir, tmp_path):
    from safetensors.torch import load

    from worker.engine.weights import create_backbone
    stop = Stop()
    seen = []

    def on_progress(p):
        seen.append(p)
        if p["phase"] == "downloading" and p["done"] >= 2 << 20:
            stop.set()
    s = run(TrainConfig(**dict(TINY, weights="hub"), epochs=1),
            Paths(tiny_cifar_dir, tmp_path / "o", weights_dir=tmp_path / "w"), Callbacks(stop=stop,
                                                                                          on_progress=on_progress))
    assert s["status"] == "stopped" and s["stopped_in"] == "downloading"
    dl = [p for p in seen if p["phase"] == "downloading"]
    assert dl[-1]["total"] == len(hub.blob) and dl[-1]["done"] < len(hub.blob)
    assert dl[-1]["what"] == "weights of deit_tiny_patch16_224.fb_in1k"
    steps = [b["done"] - a["done"] for a, b in zip(dl, dl[1:])]
    assert len(dl) >= 2 and max(steps) <= HUB_CHUNK_BYTES  # fine steps: a stop lands within one

    hub.rate = None  # the next try finishes: progress to the total, and the weights are the served ones
    seen.clear()
    bb = create_backbone("deit_tiny_patch16_224", "hub", tmp_path / "w", on_progress=seen.append)
    assert seen[-1]["done"] == seen[-1]["total"] == len(hub.blob) or seen == []  # resumed: may be one request
    want = load(hub.blob)
    assert torch.equal(bb.blocks[5].mlp.fc1.weight, want["blocks.5.mlp.fc1.weight"])
    assert (tmp_path / "w" / "hub").is_dir()


def test_a_stop_before_the_download_starts_raises_stop_not_a_weights_error(hub, tmp_path):
    from worker.engine.weights import create_backbone
    stop = Stop()
    stop.set()
    with pytest.raises(StopRequested):
        create_backbone("deit_tiny_patch16_224", "hub", tmp_path / "w", stop=stop)
    shutil.rmtree(tmp_path / "w", ignore_errors=True)


def test_raising_in_a_gradient_hook_leaves_autograd_usable():
    """What `Stop.guard` relies on: the hook's exception reaches backward()'s caller with its type, and the
    next backward works."""
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(inplace=True), torch.nn.Linear(4, 2))
    stop = Stop()
    x = torch.randn(3, 4)
    with stop.guard(net):
        loss = net(x).sum()
        stop.set()
        with pytest.raises(StopRequested):
            loss.backward()
        stop.event.clear()
        net(x).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    assert not net._forward_pre_hooks and not net[0]._forward_pre_hooks  # the guard left no hook behind


def test_the_stop_flag_is_a_threading_event_any_thread_can_set(tiny_cifar_dir, tmp_path):
    event = threading.Event()
    setter = threading.Thread(target=event.set)
    s = run(TrainConfig(**TINY, epochs=2), Paths(tiny_cifar_dir, tmp_path / "o"),
            Callbacks(stop=event, on_epoch=lambda r: (setter.start(), setter.join())))
    assert s["status"] == "stopped" and s["epochs_run"] == 1
