"""A job that failed because a file was missing says what to put where and offers to run again once the worker
reports the file there, instead of a Resume that fails the same way (issue 24). Screenshots in tests/artifacts."""
import pytest

from tests.lab import wait_for

from .conftest import shot

pytestmark = pytest.mark.browser

REPORT_S = 1.0
FIRST_REPORT_S = 120
JOB_S = 300
JOB = dict(model="deit_tiny_patch16_224", weights="local", batch_size=32, image_size=32, val_limit=40, epochs=1,
           train_per_class=20)


def _write_weights(folder):
    """Real deit_tiny weights (random init) where weights: local looks, as a user would copy them."""
    import timm
    from safetensors.torch import save_file
    folder.mkdir(parents=True, exist_ok=True)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "deit_tiny_patch16_224.safetensors"))


def test_a_job_failed_for_missing_weights_says_where_to_put_them_and_runs_again_once_there(make_lab, page):
    from pathlib import Path
    lab = make_lab(BLOCKLAB_WORKER_REPORT_S=str(REPORT_S))
    lab.new_worker()
    rep = wait_for(lambda: (w := lab.client.get("/api/workers").json()) and w[0], FIRST_REPORT_S, "the report")
    jid = lab.submit("local weights", **JOB)
    job = lab.wait_status(jid, "failed", timeout=JOB_S)
    assert "deit_tiny_patch16_224.safetensors" in job["error"]

    for width in (1400, 800):
        page.set_viewport_size({"width": width, "height": 1000})
        page.goto(f"{lab.url}/#/job/{jid}")
        page.wait_for_selector("#fix-card")
        steps = page.text_content("#fix-card .fix-steps")
        assert f"put deit_tiny_patch16_224.safetensors in {rep['weights_dir']}" in steps
        assert "A file is missing: the pretrained weights of deit_tiny_patch16_224" in page.text_content("#fix-card h3")
        assert page.is_disabled("#fix-run-again")
        assert not page.locator("#job-head button.resume").is_visible()  # a Resume would fail the same way
        shot(page, f"job-failed-missing-weights-{width}px")

    page.click("#fix-check")  # still missing: said again
    page.wait_for_function("document.querySelector('#fix-state').textContent.startsWith('Still missing')")
    _write_weights(Path(rep["weights_dir"]))

    def ready():
        page.click("#fix-check")
        page.wait_for_function("!document.querySelector('#fix-check').disabled")
        return page.is_enabled("#fix-run-again")
    wait_for(ready, 10 * REPORT_S + 20, "the worker to report the weights", interval=REPORT_S)
    assert "The worker has it now" in page.text_content("#fix-state")
    shot(page, "job-failed-missing-weights-now-there")
    page.click("#fix-run-again")
    done = lab.wait_status(jid, "succeeded", timeout=JOB_S)
    assert done["attempt"] == 2
    page.wait_for_selector("#job-status.status-succeeded")
    assert page.locator("#fix-card").count() == 0
    assert not page.errors
