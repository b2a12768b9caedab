"""The fill's chunks: no padded image is ever computed on the CPU, a GPU's padded chunk never reaches the stored
features, and chunk sizes come from measurement (ChunkPlan). The CUDA path's policy (fixed shapes under cuDNN's
benchmark mode) is injected on the CPU; time is a stand-in clock that the stand-in frozen part advances, so the
measured speeds, and so every choice, are known."""
import pytest
import torch

from core.config import TrainConfig
from worker.engine import features
from worker.engine import train as engine
from worker.engine.device import DevicePolicy
from worker.engine.features import ChunkPlan, FrozenFeatures
from worker.engine.store import FeatureStore, Placement
from worker.engine.train import Paths, run

from .test_train import TINY

CPU = DevicePolicy.for_device(torch.device("cpu"))
NO_AMP = dict(device_type="cpu", enabled=False)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class StandInFrozen:
    """A frozen part whose output per image is a function of the image alone (as the real one in inference mode),
    which records each call's rows and cuDNN's benchmark flag and advances the clock: `per_image(rows)` seconds per
    row, plus `selection` seconds at the first call of a shape under benchmark mode (cuDNN's kernel choice)."""
    cacheable = True

    def __init__(self, clock, per_image=lambda rows: 0.01, selection=0.0):
        self.clock, self.per_image, self.selection = clock, per_image, selection
        self.calls, self.shapes = [], set()

    def frozen_features(self, x):
        rows = len(x)
        self.calls.append((rows, torch.backends.cudnn.benchmark))
        if torch.backends.cudnn.benchmark and rows not in self.shapes:
            self.clock.now += self.selection
        self.shapes.add(rows)
        self.clock.now += rows * self.per_image(rows)
        return [x.float().mean(dim=(2, 3)) * 2 + x.float()[:, :, 0, 0]]


def _prep(images, flip=None):
    x = images.float()
    if flip is not None:
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


def _setup(n, plan, frozen, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 255, (n, 3, 4, 4), dtype=torch.uint8, generator=g)
    store = FeatureStore(n, 2, [(3,)], torch.float32, Placement("memory", "t"), CPU)
    ff = FrozenFeatures(frozen, _prep, NO_AMP, {"train": images}, {"train": store}, {}, None, chunking=plan)
    return images, store, ff, g


@pytest.mark.parametrize("n,prefilled", [(300, 0.0), (300, 0.7), (300, 0.995), (50, 0.5)])
def test_no_padded_image_is_computed_on_the_cpu(n, prefilled):
    """Whatever is missing, the frozen part sees exactly the missing images: every call's rows add up to them."""
    clock = Clock()
    frozen = StandInFrozen(clock)
    images, store, ff, g = _setup(n, ChunkPlan(features.CHUNK_CANDIDATES["cpu"], clock=clock), frozen, n)
    ff.fill("train", torch.rand(n, generator=g) < 0.5)
    store.filled &= torch.rand(n, 2, generator=g) < prefilled
    frozen.calls.clear()
    flips = torch.rand(n, generator=g) < 0.5
    missing = int(store.missing(torch.arange(n), flips.long()).sum())
    assert ff.fill("train", flips) == missing
    assert sum(rows for rows, _ in frozen.calls) == missing  # not one padded row
    assert not any(bench for _, bench in frozen.calls)  # no cuDNN benchmark mode either
    torch.testing.assert_close(ff.train(torch.arange(n), flips)[0], frozen.frozen_features(_prep(images, flips))[0])


def test_a_real_cpu_run_computes_each_image_once_and_no_padding(tiny_cifar_dir, tmp_path, monkeypatch):
    """The engine on the CPU (DeiT-Ti, 200 training images: chunks of 32..128 never divide every fill): the rows
    the frozen part sees are the probe and the distinct (image, flip state) pairs the epochs use, nothing more."""
    rows = []
    orig = engine.SingleBlockModel.frozen_features
    monkeypatch.setattr(engine.SingleBlockModel, "frozen_features", lambda m, x: rows.append(len(x)) or orig(m, x))
    cfg = TrainConfig(**TINY, epochs=3)
    s = run(cfg, Paths(tiny_cifar_dir, tmp_path / "o"))
    assert s["feature_cache"]["enabled"]
    pairs = set()
    for epoch in range(1, 4):
        _perm, flips = engine._epoch_order(cfg, epoch, 200)
        pairs |= {(i, int(f)) for i, f in enumerate(flips)}
    assert sum(rows) == 1 + len(pairs) + 60  # the probe, the training pairs, the validation images


def test_a_padded_gpu_chunk_never_reaches_the_stored_features():
    """The CUDA path's plan (fixed shapes, cuDNN benchmark) on the CPU: the last chunk of a fill is padded to the
    chunk size, and yet the store holds exactly the unpadded computation, flags set for the real images only."""
    clock = Clock()
    frozen = StandInFrozen(clock, selection=0.001)  # selecting kernels costs less than computing any padding
    images, store, ff, g = _setup(300, ChunkPlan((64, 128), fixed_shapes=True, clock=clock), frozen)
    flips = torch.rand(300, generator=g) < 0.5
    assert ff.fill("train", flips) == 300
    assert any(bench for _, bench in frozen.calls) and torch.backends.cudnn.benchmark is False  # restored
    store.filled[:] = False
    store.filled[:290, :] = True  # 10 images left: padded to the chosen chunk
    frozen.calls.clear()
    frozen.selection = 100.0  # a new shape would now cost far more than padding
    ff.chunking.first_call.update({c: 100.0 + c * 0.01 for c in (64, 128)})
    assert ff.fill("train", flips) == 10
    assert frozen.calls == [(ff.chunking.size, True)]  # padded: one call at the fixed shape
    assert int(store.filled.sum()) == 290 * 2 + 10
    want = frozen.frozen_features(_prep(images, flips))[0]
    torch.testing.assert_close(ff.train(torch.arange(300), flips)[0], want)
    assert not store.missing(torch.arange(300), flips.long()).any()


def test_a_small_gpu_fill_is_not_padded_when_padding_costs_more_than_a_kernel_selection():
    clock = Clock()
    frozen = StandInFrozen(clock, per_image=lambda rows: 0.01, selection=0.05)
    plan = ChunkPlan((64, 128), fixed_shapes=True, clock=clock)
    images, store, ff, g = _setup(400, plan, frozen)
    ff.fill("train", None)  # measures both sizes (each twice: selection, then speed), fills the rest
    assert not plan.measuring and plan.selection_s == pytest.approx(0.05)
    size = plan.size
    assert plan.next(size - 2) == (size - 2, size)  # 2 rows of padding (0.02 s) cost less than 0.05 s: padded
    assert plan.next(3) == (3, 3)  # 125 rows of padding (1.25 s) cost more than a selection: as it is
    store.filled[:] = False
    store.filled[:397] = True
    frozen.calls.clear()
    ff.fill("train", None)
    assert frozen.calls == [(3, True)]
    plan.first_call.update({c: 1000.0 for c in plan.first_call})  # selections dearer than any padding now
    assert plan.next(3) == (3, 3)  # but 3 rows were selected once already: as it is
    assert plan.next(5) == (5, size)


def test_the_cpu_chunk_size_is_the_fastest_measured():
    """Per-row cost falls to 32 rows, rises after (a CPU whose caches like mid-size batches): 32 is chosen, every
    candidate measured once after one warm-up call, and every later chunk runs at 32."""
    clock = Clock()
    cost = {16: 0.012, 32: 0.008, 64: 0.009, 128: 0.011}
    frozen = StandInFrozen(clock, per_image=lambda rows: cost.get(rows, 0.02))
    plan = ChunkPlan((16, 32, 64, 128), clock=clock)
    images, store, ff, g = _setup(600, plan, frozen)
    ff.fill("train", None)
    assert [r for r, _ in frozen.calls[:5]] == [16, 16, 32, 64, 128]  # warm-up, then each candidate
    assert plan.size == 32 and plan.per_image == pytest.approx(cost)
    assert all(r == 32 for r, _ in frozen.calls[5:-1]) and sum(r for r, _ in frozen.calls) == 600
