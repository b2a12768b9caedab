"""The method card beside the new-job form follows the form: it is the card of the config Start job would submit,
with where that config leaves the paper preset, updating as fields change (issue 24: after Clone it said the
preset's batch 512, 20 epochs, 224 px, all images and hub weights). Screenshots at 1400 and 800 px in
tests/artifacts."""
import pytest

from .conftest import shot

pytestmark = pytest.mark.browser

CLONED = dict(model="deit_tiny_patch16_224", epochs=3, batch_size=64, image_size=112, train_per_class=100,
              weights="local")


def _card(page) -> str:
    return page.text_content("#method-card") or ""


def _differs(page, sel="#method-card .job-differs li, #method-card .length-differs li") -> dict:
    return dict(page.eval_on_selector_all(sel, "els => els.map(e => [e.dataset.option, e.textContent])"))


@pytest.mark.parametrize("width", [1400, 800])
def test_after_clone_the_card_shows_the_forms_config_and_where_it_leaves_the_preset(make_lab, page, width):
    lab = make_lab()  # no worker: the job only queues
    page.set_viewport_size({"width": width, "height": 1000})
    jid = lab.submit("small run", **CLONED)
    page.goto(f"{lab.url}/#/new?clone={jid}")
    page.wait_for_selector("#form-origin[data-source='clone']")
    page.wait_for_selector("#method-card .length-differs li[data-option='epochs']")
    text = _card(page)
    assert "batch 64, 3 epochs" in text and "112 px" in text and "1,000 training images" in text
    assert "a local file: deit_tiny_patch16_224.safetensors (or .pth) in the worker's weights folder" in text
    for preset in ("batch 512", "20 epochs", "224 px, bilinear", "all 50,000", ".fb_in1k: ImageNet"):
        assert preset not in text, preset
    assert "This config leaves the paper preset" in text
    differs = _differs(page)
    assert set(differs) >= {"batch_size", "image_size", "train_per_class", "weights", "epochs"}
    assert differs["epochs"].startswith("Epochs: 3 (paper preset: 20")
    assert "Batch size: 64 (paper preset: 512)" == differs["batch_size"]
    page.locator("#method-card").scroll_into_view_if_needed()
    shot(page, f"form-card-after-clone-{width}px")

    # It follows the form as fields change: a batch of 32, then the paper's values again.
    page.fill("#f-batch_size", "32")
    page.wait_for_function("document.querySelector('#method-card').textContent.includes('batch 32, 3 epochs')")
    assert _differs(page)["batch_size"] == "Batch size: 32 (paper preset: 512)"
    page.click("#preset-reset")
    page.wait_for_function("document.querySelector('#method-card').textContent.includes('This config runs the paper preset')")
    assert "batch 512, 20 epochs" in _card(page) and _differs(page) == {}
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    assert not page.errors


def test_a_half_typed_value_keeps_the_card_and_says_why(make_lab, page):
    lab = make_lab()
    page.goto(lab.url + "/#/new")
    page.wait_for_selector("#method-card .method-card-body")
    page.fill("#f-batch_size", "")  # not a config the server accepts
    page.wait_for_selector("#method-card .card-stale")
    assert "batch_size" in page.text_content("#method-card .card-stale")
    assert page.locator("#method-card .method-card-body").count() == 1
    page.fill("#f-batch_size", "128")
    page.wait_for_function("document.querySelector('#method-card').textContent.includes('batch 128')")
    assert page.locator("#method-card .card-stale").count() == 0
    assert not page.errors
