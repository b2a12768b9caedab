"""Any timm model from the web form: a name typed beside the catalogue's picker gets its card (not in the paper,
the generic rule), queues as a job whose page shows that card, and a name timm lacks is refused at the model field.
Screenshots in tests/artifacts (1400 and 800 px)."""
import pytest

from .conftest import shot

pytestmark = pytest.mark.browser

MODEL = "tf_efficientnet_lite2"


def test_a_timm_model_outside_the_catalogue_from_the_form_to_its_job_page(make_lab, page):
    lab = make_lab()  # no worker: the card and the queue are the backend's
    for width in (1400, 800):
        page.set_viewport_size({"width": width, "height": 1000})
        page.goto(lab.url + "/#/new")
        page.fill("#f-timm-model", MODEL)
        page.press("#f-timm-model", "Tab")
        page.wait_for_selector(f"#method-card .method-card-body[data-model='{MODEL}']")
        text = page.text_content("#method-card")
        assert "not in the paper" in text and "generic last-block rule" in text
        assert page.is_disabled("#f-model")  # the typed name runs, not the picker's model: the picker says so
        shot(page, f"new-form-any-timm-model-{width}px")
    page.fill("#f-timm-model", "")
    page.wait_for_function("!document.querySelector('#f-model').disabled")  # cleared: the picker's model runs again
    page.fill("#f-timm-model", "tf_efficientnet_lite9")
    page.click("#submit")
    page.wait_for_function("document.querySelector('#err-model').textContent.includes(\"timm's registry\")")
    page.fill("#f-timm-model", MODEL)
    page.fill("#f-epochs", "1")
    page.click("#submit")
    page.wait_for_url("**/#/job/*")
    job = lab.client.get("/api/jobs").json()[0]
    assert job["model"] == MODEL
    page.wait_for_selector("#job-card .method-card-body")
    text = page.text_content("#job-card")
    assert "not in the paper" in text and "once a worker has built the model" in text
    shot(page, "job-page-any-timm-model")
    assert not page.errors
