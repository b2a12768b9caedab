"""The paper's preset is the paper (issue 11): 224 px and fp32 for every paper model, the authors' Keras settings
in the three Keras CNN rows only, and a method card per model, built torch-free from the catalogue, that names each
remaining known deviation with its likely effect."""
import pytest

from core import catalogue
from core.config import OPTIONS_BY_NAME, TrainConfig, config_differences, method_card, paper_card, preset

PAPER = [r["model_id"] for r in catalogue.paper_table1()]
KERAS = {"vgg19", "densenet201", "resnet152"}
CARD_FACTS = ("timm_id", "pretrained_tag", "pretrained_on", "image_size", "precision", "tf32", "batch_size",
              "trainable_modules", "trainable_params", "paper_trainable_params", "head", "pooling", "head_init",
              "head_l2", "bn_momentum", "adam_eps", "deviations")


@pytest.mark.parametrize("model", PAPER)
def test_every_paper_model_runs_at_224_in_fp32_with_tf32(model):
    cfg = preset("paper", model=model)
    assert (cfg.image_size, cfg.precision, cfg.tf32) == (224, "fp32", True)
    card = paper_card(model)
    assert (card["image_size"], card["precision"], card["tf32"]) == (224, "fp32", True)
    spec = catalogue.get(model)
    if spec.native_size != 224:  # NFNet-F6 (448), EfficientNetV2-L and ViT-L/32 (384): the card says both sizes
        assert f"its weights' own size is {spec.native_size}" in _row(card, "Image size")


def test_bf16_and_fp16_are_named_speed_options_and_tf32_is_on_by_default():
    precision, tf32 = OPTIONS_BY_NAME["precision"], OPTIONS_BY_NAME["tf32"]
    assert precision.default == "fp32" and set(precision.choices) == {"fp32", "bf16", "fp16", "auto"}
    assert "gradient scaler" in precision.help and "never fp16" in precision.help
    assert tf32.default is True and tf32.web and precision.web and tf32.affects_result
    assert "deviation" in tf32.help and "IEEE fp32" in tf32.help
    card = method_card(preset("paper", model="deit_base_distilled_patch16_224", precision="bf16", tf32=False))
    assert {d["option"]: (d["value"], d["paper"]) for d in card["config_deviations"]} == {
        "precision": ("bf16", "fp32"), "tf32": (False, True)}
    assert "speed option" in _row(card, "Precision") and "TF32 off" in _row(card, "Precision")
    card = method_card(preset("paper", model="deit_base_distilled_patch16_224", precision="fp16"))
    assert {d["option"]: (d["value"], d["paper"]) for d in card["config_deviations"]} == {"precision": ("fp16", "fp32")}
    assert "float16 autocast with a dynamic gradient scaler" in _row(card, "Precision")


@pytest.mark.parametrize("model", PAPER)
def test_the_paper_presets_card_states_tf32_and_its_effect(model):
    """Issue 15: the paper's fp32 runs with TF32 on GPUs that have it; every paper card says so on its Precision
    row and lists it as a known deviation with its likely effect. A run with tf32 off is plain fp32 again: its card
    drops that deviation and says so, and keeps every other one."""
    card = paper_card(model)
    row = _row(card, "Precision")
    assert "fp32, as the paper" in row and "TF32 allowed" in row and "10-bit mantissa" in row
    assert "known deviation" in row
    tf32 = [d for d in card["deviations"] if d["what"].startswith("Numerics: fp32 matmuls")]
    assert tf32 == [{"what": catalogue.TF32.what, "effect": catalogue.TF32.effect}]
    assert "Kaggle GPUs had no TF32" in tf32[0]["what"] and tf32[0]["effect"].startswith("Negligible for accuracy")
    off = method_card(preset("paper", model=model, tf32=False))
    assert "TF32 off" in _row(off, "Precision") and "IEEE fp32" in _row(off, "Precision")
    assert off["deviations"] == [d for d in card["deviations"] if d not in tf32]
    assert [d["option"] for d in off["config_deviations"]] == ["tf32"]


def test_a_model_outside_the_paper_lists_no_tf32_deviation():
    """Nothing to deviate from where the paper has no run (CIFAR-100): the Precision row still says TF32."""
    card = method_card(preset("paper", model="deit_base_distilled_patch16_224", dataset="cifar100"))
    assert card["deviations"] == [] and "TF32 allowed" in _row(card, "Precision")


@pytest.mark.parametrize("model", list(catalogue.CATALOGUE))
def test_keras_settings_only_in_the_keras_rows(model):
    cfg = preset("paper", model=model)
    got = {k: getattr(cfg, k) for k in catalogue.KERAS_PRESET}
    if model in KERAS:
        assert got == {"head_init": "he_normal", "head_l2": 0.01, "bn_momentum": 0.01, "adam_eps": 1e-7}
    else:
        assert got == {"head_init": "torch", "head_l2": 0.0, "bn_momentum": None, "adam_eps": 1e-8}


def test_the_new_options_are_declared_with_their_bounds():
    o = OPTIONS_BY_NAME
    assert o["head_init"].choices == ("torch", "he_normal") and o["head_init"].default == "torch"
    assert (o["head_l2"].default, o["head_l2"].ge) == (0.0, 0)
    assert o["bn_momentum"].nullable and o["bn_momentum"].default is None and o["bn_momentum"].gt == 0
    assert (o["adam_eps"].default, o["adam_eps"].gt) == (1e-8, 0)
    for bad in (dict(head_init="xavier"), dict(head_l2=-1.0), dict(bn_momentum=0.0), dict(adam_eps=0.0),
                dict(bn_momentum=1.5)):
        with pytest.raises(ValueError):
            TrainConfig(**bad)


def test_jobs_stored_before_the_new_options_resume_at_their_defaults():
    """A job stored before issue 11 (precision auto, image size None, no Keras options) rebuilds the same config
    from its stored experiment, so its checkpoint resumes; the new options at their defaults change nothing."""
    old = {**TrainConfig().to_dict(), "precision": "auto", "image_size": None}
    for name in ("head_init", "head_l2", "bn_momentum", "adam_eps", "tf32"):
        del old[name]
    assert config_differences(old, TrainConfig.from_dict(old)) == []
    assert config_differences(old, TrainConfig.from_dict({**old, "head_l2": 0.01})) == ["head_l2"]


@pytest.mark.parametrize("model", list(catalogue.CATALOGUE))
def test_every_model_has_a_method_card_with_the_facts_the_issue_names(model):
    card = paper_card(model)
    assert set(CARD_FACTS) <= set(card)
    spec = catalogue.get(model)
    assert card["pretrained_tag"] == spec.pretrained_tag and card["weights_name"] == f"{model}.{spec.pretrained_tag}"
    assert card["trainable_params"] == spec.trainable_params and card["config_deviations"] == []
    labels = [r["label"] for r in card["rows"]]
    for label in ("Weights", "Image size", "Precision", "Training", "Trainable modules", "Trainable parameters",
                  "Head", "Pooling", "Head init", "Head L2", "BatchNorm momentum", "Adam epsilon"):
        assert label in labels, label
    assert all(d["what"] and d["effect"] for d in card["deviations"])
    assert bool(card["deviations"]) == card["in_paper"]


def _row(card, label):
    return next(r["value"] for r in card["rows"] if r["label"] == label)


def _deviations(model):
    return " ".join(d["what"] + " " + d["effect"] for d in paper_card(model)["deviations"])


def test_the_cards_name_each_remaining_deviation_with_its_effect():
    assert "Stand-in" in _deviations("resnet152") and "15,497,994" in _deviations("resnet152")
    assert "22k" in _deviations("swin_base_patch4_window7_224") and "below the paper" in _deviations(
        "swin_base_patch4_window7_224")
    for model in KERAS:
        text = _deviations(model)
        assert "9,728" in text and "flipped" in text and "patience 3" in text and "best of 20" in text
    for model in set(PAPER) - KERAS:
        assert "9,728" in _deviations(model) and "no code" in _deviations(model)
    assert "caffe" in _deviations("vgg19") and "[-1, 1]" in _deviations("resnet152")
    assert "DenseNet ('torch' mode)" not in _deviations("densenet201")  # normalized as its Keras weights expect
    assert "vit-keras" in _deviations("vit_large_patch32_384")


def test_the_keras_cards_say_what_keras_settings_do():
    card = paper_card("densenet201")
    assert "he_normal" in _row(card, "Head init") and "0.01" in _row(card, "Head L2")
    assert "keras_train_loss" in _row(card, "Head L2")
    assert "65 BatchNorm" in _row(card, "BatchNorm momentum") and "0.99" in _row(card, "BatchNorm momentum")
    assert "no effect" in _row(paper_card("vgg19"), "BatchNorm momentum")  # VGG has no BatchNorm
    assert _row(card, "Adam epsilon") == "1e-07"
    assert _row(paper_card("deit_base_distilled_patch16_224"), "Head L2") == "none"


def test_the_card_counts_the_papers_way():
    card = paper_card("densenet201")  # Table 1 counts DenseNet201 without the MLP head
    assert card["trainable_params_as_paper_counts"] == 6_982_400 == card["paper_trainable_params"]
    assert card["trainable_params"] == 7_476_746 and card["count_matches_paper"]
    wider = method_card(preset("paper", model="densenet201", head_hidden=512))
    assert wider["trainable_params"] - card["trainable_params"] == 1920 * 256 + 256 + 256 * 10


def test_a_timm_model_outside_the_catalogue_has_a_card_that_says_so():
    card = method_card(TrainConfig(model="convnext_atto"))
    rows = {r["label"]: r["value"] for r in card["rows"]}
    assert not card["in_paper"] and card["paper_val_acc"] is None and card["deviations"] == []
    assert "not in the paper" in rows["Model"] and "generic last-block rule" in rows["Trainable depth"]
    assert "once a worker has built the model" in rows["Trainable depth"] and card["trainable_params"] is None
    built = method_card(TrainConfig(model="convnext_atto"), built={
        "unfreeze_from": "stages.3.blocks.1", "trainable_modules": ["stages.3.blocks.1", "head.norm"],
        "trainable_params": 123_456, "total_params": 3_456_789, "blocks": 18})
    rows = {r["label"]: r["value"] for r in built["rows"]}
    assert "cut at stages.3.blocks.1 (reported by the worker" in rows["Trainable depth"]
    assert rows["Trainable parameters"].startswith("123,456 of 3,456,789") and built["trainable_params"] == 123_456
    with pytest.raises(ValueError, match="neither in the catalogue nor in timm's registry"):
        method_card(TrainConfig(model="no_such_net"))


def test_a_stored_config_naming_a_retired_option_still_loads():
    from core.config import RETIRED, TrainConfig
    saved = TrainConfig().to_dict() | {"stop_check_every": 5}  # a checkpoint written before issue 13
    assert "stop_check_every" in RETIRED and "stop_check_every" not in OPTIONS_BY_NAME
    assert TrainConfig.from_dict(saved) == TrainConfig()
    with pytest.raises(ValueError, match="unknown config field"):
        TrainConfig.from_dict({"stop_check_evry": 5})


def test_a_dry_run_caps_a_config_and_never_grows_it():
    from core.config import DRY_RUN, dry_run
    paper = preset().to_dict()
    assert {k: dry_run(paper)[k] for k in DRY_RUN} == DRY_RUN  # all images, 20 epochs, 224 px -> the dry values
    small = {**paper, "epochs": 1, "train_per_class": 2, "val_limit": 20, "image_size": 32}
    assert dry_run(small) == small


@pytest.mark.parametrize("model", ["convnext_atto", "deit_tiny_patch16_224", "vgg19"])
def test_every_card_has_the_data_row_its_dataset_row_points_to(model):
    """The Dataset row says "the Data row says what this run uses": a card outside the catalogue had no Data row
    (nor a Training row), so it said nowhere that a run read 200 images for 3 epochs."""
    cfg = TrainConfig(model=model, train_per_class=20, val_limit=200, epochs=3, batch_size=32, lr=1e-3)
    rows = {r["label"]: r["value"] for r in method_card(cfg)["rows"]}
    assert "the Data row says what this run uses" in rows["Dataset"]
    assert rows["Data"] == "CIFAR-10: 200 training images, random horizontal flip; validation on 200 test images, unflipped"
    assert rows["Training"].startswith("Adam (lr 0.001, eps 1e-08), batch 32, 3 epochs;")
