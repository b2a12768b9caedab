"""The authors' Keras CNN settings as named options (issue 11, items 4-5): he_normal head init, the L2(0.01) penalty
on both Dense kernels with Keras' semantics, BatchNorm momentum 0.99 (torch 0.01) in the trainable block, Adam
epsilon 1e-7. Each is checked against a hand computation or the optimizer it must reach; `val_loss` stays plain."""
import json
import math

import pytest
import timm
import torch

from core.config import TrainConfig, preset
from worker.engine import checkpoint
from worker.engine import train as engine
from worker.engine.heads import MLPHead
from worker.engine.model import SingleBlockModel, plan_for
from worker.engine.train import Paths, run

from .test_train import TINY


def _rows(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_he_normal_init_has_keras_statistics():
    """Keras' he_normal: a normal truncated at two standard deviations whose kept values have std sqrt(2 / fan_in);
    Dense biases start at zero. PyTorch's default is uniform, with non-zero biases."""
    torch.manual_seed(0)
    head = MLPHead(2048, 256, init="he_normal")
    for layer, fan_in in zip(head.linears(), (2048, 256)):
        w = layer.weight.detach()
        target = math.sqrt(2 / fan_in)
        assert w.std().item() == pytest.approx(target, rel=3 / math.sqrt(2 * w.numel()))  # three standard errors
        assert abs(w.mean().item()) < 5 * target / math.sqrt(w.numel())  # five standard errors
        assert w.abs().max().item() <= 2 * target / 0.87962566103423978 + 1e-7  # cut at two (pre-scaling) stds
        assert (w.abs() > 1.9 * target / 0.87962566103423978).any()  # ... and really reaching out to the cut
        assert torch.count_nonzero(layer.bias) == 0
        kurtosis = (((w - w.mean()) / w.std()) ** 4).mean().item()
        assert 2.2 < kurtosis < 2.8  # a truncated normal (uniform 1.8, normal 3.0)
    plain = MLPHead(2048, 256)
    w = plain[1].weight.detach()
    assert w.abs().max().item() <= 1 / math.sqrt(2048) + 1e-7 and torch.count_nonzero(plain[1].bias) > 0


def test_the_l2_term_equals_a_hand_computation():
    """Keras' kernel_regularizer=l2(0.01) adds 0.01 * sum(kernel ** 2) of each Dense layer to the loss; biases are
    not penalized."""
    bb = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=32)
    m = SingleBlockModel(bb, plan_for("deit_tiny_patch16_224", bb), head_hidden=2)
    first, second = m.heads[0].linears()
    with torch.no_grad():
        first.weight.copy_(torch.arange(2 * 192, dtype=torch.float32).view(2, 192) / 100)
        second.weight.fill_(0.5)
        first.bias.fill_(7.0)
        second.bias.fill_(-3.0)  # biases must not count
    by_hand = 0.01 * (sum((i / 100) ** 2 for i in range(2 * 192)) + 2 * 10 * 0.25)
    cfg = TrainConfig(**{**TINY, "head_l2": 0.01})
    assert float(engine._l2_penalty(m, cfg).detach()) == pytest.approx(by_hand, rel=1e-6)
    assert float(engine._l2_penalty(m, TrainConfig(**TINY))) == 0.0


def test_two_heads_are_both_penalized():
    bb = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=32)
    m = SingleBlockModel(bb, plan_for("deit_tiny_distilled_patch16_224", bb))
    per_head = [sum(float((lin.weight.detach() ** 2).sum()) for lin in h.linears()) for h in m.heads]
    assert float(m.head_l2_term().detach()) == pytest.approx(sum(per_head), rel=1e-6) and len(per_head) == 2


def test_the_penalty_trains_and_is_recorded_as_keras_would_print_it(tiny_cifar_dir, tmp_path):
    """With a vanishing learning rate the model stays put: then keras_train_loss - train_loss and keras_val_loss -
    val_loss are the penalty of the weights (which the checkpoint holds), and val_loss is the same plain
    cross-entropy as without the penalty. With a real learning rate the penalty shrinks the head's kernels."""
    still = dict(TINY, epochs=1, lr=1e-12, head_init="he_normal")
    plain = run(TrainConfig(**still), Paths(tiny_cifar_dir, tmp_path / "plain"))
    l2 = run(TrainConfig(**still, head_l2=0.01), Paths(tiny_cifar_dir, tmp_path / "l2"))
    a, b = _rows(tmp_path / "plain")[0], _rows(tmp_path / "l2")[0]
    assert a["keras_train_loss"] is None and a["keras_val_loss"] is None  # off: nothing to report
    heads = {k: v for k, v in checkpoint.load(tmp_path / "l2")["model"].items()
             if k.startswith("heads.") and k.endswith(".weight")}
    penalty = 0.01 * sum(float((w ** 2).sum()) for w in heads.values())
    assert len(heads) == 2 and penalty > 0.1
    assert b["keras_val_loss"] - b["val_loss"] == pytest.approx(penalty, rel=1e-4)
    assert b["keras_train_loss"] - b["train_loss"] == pytest.approx(penalty, rel=1e-4)
    for k in ("val_loss", "val_acc", "train_loss"):  # plain cross-entropy, comparable across runs
        assert b[k] == pytest.approx(a[k], abs=1e-5), k
    assert plain["status"] == l2["status"] == "succeeded"

    moving = dict(TINY, epochs=1, lr=1e-2, head_init="he_normal")
    run(TrainConfig(**moving), Paths(tiny_cifar_dir, tmp_path / "free"))
    run(TrainConfig(**moving, head_l2=0.5), Paths(tiny_cifar_dir, tmp_path / "decayed"))

    def kernels(out):
        sd = checkpoint.load(out)["model"]
        return sum(float((v ** 2).sum()) for k, v in sd.items() if k.startswith("heads.") and k.endswith(".weight"))
    assert kernels(tmp_path / "decayed") < 0.9 * kernels(tmp_path / "free")


def test_bn_momentum_is_the_momentum_of_the_blocks_running_statistics():
    """torch convention: new = (1 - m) * old + m * batch (Keras' momentum 0.99 is torch's 0.01); the frozen part's
    statistics never move."""
    torch.manual_seed(0)
    bb = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    m = SingleBlockModel(bb, plan_for("tf_efficientnet_lite0", bb), bn_momentum=0.01).train()
    bn = m.backbone.bn2  # the final BatchNorm, after conv_head: a kept layer of the trainable part
    frozen_before = {k: v.clone() for k, v in m.frozen_state().items()}
    old = bn.running_mean.clone()
    seen = {}
    handle = bn.register_forward_pre_hook(lambda _m, args: seen.update(x=args[0].detach()))
    m(torch.randn(4, 3, 64, 64))
    handle.remove()
    batch_mean = seen["x"].mean((0, 2, 3))
    torch.testing.assert_close(bn.running_mean, 0.99 * old + 0.01 * batch_mean, rtol=1e-5, atol=1e-6)
    assert all(b.momentum == 0.01 for b in m.trainable_batchnorms()) and len(m.trainable_batchnorms()) == 4
    for k, v in m.frozen_state().items():
        assert torch.equal(v, frozen_before[k]), k
    default = SingleBlockModel(timm.create_model("tf_efficientnet_lite0"), plan_for("tf_efficientnet_lite0"))
    assert all(b.momentum == 0.1 for b in default.trainable_batchnorms())


def test_adam_eps_reaches_the_optimizer(tiny_cifar_dir, tmp_path):
    bb = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=32)
    m = SingleBlockModel(bb, plan_for("deit_tiny_patch16_224", bb))
    keras = preset("paper", model="densenet201")
    assert keras.adam_eps == 1e-7
    opt = engine.make_optimizer(m, keras)
    assert isinstance(opt, torch.optim.Adam) and opt.param_groups[0]["eps"] == 1e-7
    assert engine.make_optimizer(m, TrainConfig(**TINY)).param_groups[0]["eps"] == 1e-8
    run(TrainConfig(**TINY, epochs=1, adam_eps=1e-7), Paths(tiny_cifar_dir, tmp_path / "o"))
    assert [g["eps"] for g in checkpoint.load(tmp_path / "o")["optimizer"]["param_groups"]] == [1e-7]
