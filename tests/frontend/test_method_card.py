"""The method card in the browser: beside the model picker (it follows the model) and on the job page (with where
the job leaves the paper preset). Screenshots in tests/artifacts."""
import pytest

from .conftest import shot

pytestmark = pytest.mark.browser


def _card_text(page, sel="#method-card") -> str:
    return page.text_content(sel) or ""


def test_the_card_sits_beside_the_picker_and_follows_the_model(idle_lab, page):
    lab = idle_lab  # no worker needed: the card is catalogue data
    page.goto(lab.url + "/#/new")
    page.wait_for_selector("#method-card .method-card-body[data-model='deit_base_distilled_patch16_224']")
    text = _card_text(page)
    assert "deit_base_distilled_patch16_224.fb_in1k" in text and "224 px" in text and "fp32, as the paper" in text
    assert "7,488,276" in text and "Known deviations from the authors' runs" in text
    form, card = page.locator("#job-form").bounding_box(), page.locator("#method-card").bounding_box()
    assert card["x"] >= form["x"] + form["width"] - 1 and card["y"] < form["y"] + 50  # beside, not below

    page.select_option("#f-model", "densenet201")
    page.wait_for_selector("#method-card .method-card-body[data-model='densenet201']")
    text = _card_text(page)
    assert "he_normal" in text and "l2(0.01)" in text and "Keras momentum 0.99" in text and "1e-07" in text
    assert "9,728" in text and "patience 3" in text
    assert page.input_value("#f-head_l2") == "0.01" and page.input_value("#f-head_init") == "he_normal"
    shot(page, "method-card-new-job")

    page.select_option("#f-model", "dm_nfnet_f6")
    page.wait_for_selector("#method-card .method-card-body[data-model='dm_nfnet_f6']")
    assert "its weights' own size is 448" in _card_text(page)
    assert page.input_value("#f-head_l2") == "0" and page.input_value("#f-image_size") == "224"
    assert not page.errors


def test_the_job_page_shows_the_card_and_where_the_job_leaves_the_preset(idle_lab, page):
    lab = idle_lab
    jid = lab.submit("bf16 resnet", model="resnet152", precision="bf16", epochs=1)  # queued: no worker
    page.goto(f"{lab.url}/#/job/{jid}")
    page.wait_for_selector("#job-card .method-card-body[data-model='resnet152']")
    text = _card_text(page, "#job-card")
    assert "resnet152.tv_in1k" in text and "Stand-in" in text and "[-1, 1]" in text
    assert "bf16 autocast (a speed option" in text  # the card of the job's own config
    differs = page.eval_on_selector_all("#job-card .job-differs li", "els => els.map(e => e.textContent)")
    assert differs == ["Precision: bf16 (paper preset: fp32)"]  # epochs change no result: not a deviation
    shot(page, "method-card-job")
    paper = lab.submit("paper deit", epochs=20)
    page.goto(f"{lab.url}/#/job/{paper}")
    page.wait_for_selector("#job-card .method-card-body[data-model='deit_base_distilled_patch16_224']")
    assert "This job runs the paper preset" in _card_text(page, "#job-card") and not page.errors
