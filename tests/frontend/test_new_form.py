"""The new-job form in the browser: Clone from a job, the last values kept, back to the paper's preset, a batch
larger than the training images warned as one types, 800 px wide. Screenshots in tests/artifacts."""
import pytest

from .conftest import shot

pytestmark = pytest.mark.browser

SMALL = {"epochs": "3", "batch_size": "64", "lr": "0.0003"}


def _values(page, names) -> dict:
    return {n: page.input_value(f"#f-{n}") for n in names}


def test_clone_opens_the_form_filled_in_from_the_job(idle_lab, page):
    lab = idle_lab  # no worker: the job only queues
    jid = lab.submit("to clone", model="resnet152", batch_size=64, lr=3e-4, epochs=3, image_size=128,
                     weights="none", val_limit=100, hflip=False)
    page.goto(f"{lab.url}/#/job/{jid}")
    page.click("#clone")
    page.wait_for_url(f"**/#/new?clone={jid}")
    page.wait_for_selector("#form-origin[data-source='clone']")
    assert page.input_value("#f-name") == f"to clone (clone of #{jid})"
    assert _values(page, ["model", "batch_size", "lr", "epochs", "image_size", "weights", "val_limit"]) == {
        "model": "resnet152", "batch_size": "64", "lr": "0.0003", "epochs": "3", "image_size": "128",
        "weights": "none", "val_limit": "100"}
    assert not page.is_checked("#f-hflip")
    page.wait_for_selector("#method-card .method-card-body[data-model='resnet152']")
    page.click("#advanced summary")
    shot(page, "new-form-cloned")
    page.click("#submit")  # a short run: queued without a plan dialog
    page.wait_for_url("**/#/job/*")
    clone = lab.client.get("/api/experiments").json()[0]
    original = lab.client.get("/api/experiments").json()[1]
    assert clone["name"] == f"to clone (clone of #{jid})" and clone["config"] == original["config"]
    assert not page.errors


def test_the_form_keeps_the_last_values_and_goes_back_to_the_paper_preset(idle_lab, page):
    lab = idle_lab
    page.goto(lab.url + "/#/new")
    page.wait_for_selector("#method-card .method-card-body")
    assert page.input_value("#f-batch_size") == "512"  # a first visit: the paper's preset
    page.fill("#f-name", "kept")
    page.select_option("#f-model", "deit_tiny_patch16_224")
    for k, v in SMALL.items():
        page.fill(f"#f-{k}", v)
    page.click("#advanced summary")
    page.select_option("#f-weights", "none")
    page.click("#submit")
    page.wait_for_url("**/#/job/*")

    page.goto(lab.url + "/#/new")
    page.wait_for_selector("#form-origin[data-source='remembered']")
    assert page.input_value("#f-name") == "kept" and page.input_value("#f-model") == "deit_tiny_patch16_224"
    assert _values(page, SMALL) == SMALL and page.input_value("#f-weights") == "none"
    shot(page, "new-form-remembered")

    page.click("#preset-reset")
    assert _values(page, SMALL) == {"epochs": "20", "batch_size": "512", "lr": "0.0001"}
    assert page.input_value("#f-weights") == "hub" and page.input_value("#f-model") == "deit_tiny_patch16_224"
    assert "paper's preset" in page.text_content("#form-origin")
    page.select_option("#f-model", "swin_base_patch4_window7_224")  # preset values follow the model again
    assert page.input_value("#f-batch_size") == "256"
    shot(page, "new-form-back-to-preset")
    assert not page.errors


def test_a_batch_larger_than_the_training_images_is_warned_as_one_types_800px(idle_lab, page):
    lab = idle_lab
    page.set_viewport_size({"width": 800, "height": 1000})
    page.goto(lab.url + "/#/new")
    page.wait_for_selector("#method-card .method-card-body")
    assert page.text_content("#warn-batch_size") == ""  # 512 of all 50,000: fine
    page.click("#advanced summary")
    page.type("#f-train_per_class", "20")  # 200 training images
    warning = page.text_content("#warn-batch_size")
    assert "Batch 512 is larger than the 200 training images (20 per class × 10)" in warning
    assert page.is_visible("#warn-batch_size")
    page.fill("#f-batch_size", "")
    page.type("#f-batch_size", "200")
    assert page.text_content("#warn-batch_size") == ""
    page.type("#f-batch_size", "0")  # 2000
    assert "Batch 2,000 is larger than the 200 training images" in page.text_content("#warn-batch_size")
    assert page.evaluate("document.documentElement.scrollWidth") <= 800
    form, card = page.locator("#job-form").bounding_box(), page.locator("#method-card").bounding_box()
    assert card["y"] >= form["y"] + form["height"] - 1  # one column at 800 px: the card below the form
    page.locator("#f-batch_size").scroll_into_view_if_needed()
    shot(page, "new-form-batch-warning-800px")
    assert not page.errors
