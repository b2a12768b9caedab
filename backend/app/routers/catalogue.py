"""GET /api/models, /api/models/{id} (a model's method card), /api/paper, /api/datasets, /api/options and
/api/statuses: the catalogue and the paper's numbers, the datasets and their class names, the training options and
the job statuses, each from its one declaration in core/. The method card is built from catalogue data alone (no
model is built: the backend never imports torch)."""
from fastapi import APIRouter, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from core import catalogue
from core.config import TrainConfig, method_card, preset, web_options
from core.protocol import CANCELLABLE, RESUMABLE, TERMINAL, JobStatus

from ..jobs import FORCE_STOPPABLE
from ..schemas import ExperimentConfig, ModelCard, ModelPublic

router = APIRouter(prefix="/api", tags=["catalogue"])


@router.get("/models", response_model=list[ModelPublic])
def list_models():
    return [catalogue.describe(s) for s in catalogue.CATALOGUE.values()]


@router.get("/models/{model_id}", response_model=ModelCard, responses={404: {"description": "no such model"}})
def model_card(model_id: str, request: Request):
    """The model's method card: weights, input size, numerics, trainable part, head, optimizer, trainable count
    against Table 1, and each known deviation from the authors' runs, for the paper's preset. Query parameters set
    options as an experiment's config does (`?precision=bf16`; empty = null): the card of that config, whose
    `config_deviations` say where it leaves the paper preset (the job page shows its job's card so)."""
    if catalogue.get(model_id) is None:
        raise HTTPException(404, f"unknown model {model_id!r}; choose one of GET /api/models")
    given = {k: None if v in ("", "null") else v for k, v in request.query_params.items() if k != "model"}
    try:
        chosen = ExperimentConfig(model=model_id, **given)
    except ValidationError as err:
        raise RequestValidationError([{**d, "loc": ("query", *d["loc"])}
                                      for d in err.errors(include_url=False)]) from err
    web = {o.name for o in web_options()}
    paper = {k: v for k, v in preset("paper", model=model_id).to_dict().items() if k in web}
    return {**method_card(TrainConfig(**chosen.model_dump())), "config": paper}


@router.get("/paper")
def paper():
    return {"citation": "Malpure, Litake, Ingle, Investigating Transfer Learning Capabilities of Vision "
                        "Transformers and CNNs by Fine-Tuning a Single Trainable Block, arXiv:2110.05270 (2021)",
            "table1": catalogue.paper_table1(), "curves": catalogue.paper_curves(),
            "deit_full_finetune": catalogue.deit_full_finetune()}


@router.get("/datasets")
def datasets():
    """Every dataset a job may train on, with its class names in label order (what a job's per-class views name)
    and whether the paper reports numbers on it (where it does not, comparisons show "no paper number")."""
    return [{"id": d.id, "title": d.title, "classes": list(d.classes), "num_classes": d.num_classes,
             "in_paper": d.in_paper} for d in catalogue.DATASETS.values()]


@router.get("/options")
def options():
    """The training options a browser may set, in form order: what the new-job form renders."""
    return [o.public() for o in web_options()]


@router.get("/statuses")
def statuses():
    """Job statuses and what a user may do in each: the frontend's buttons follow these lists."""
    return {"all": [s.value for s in JobStatus], "terminal": sorted(TERMINAL), "cancellable": sorted(CANCELLABLE),
            "resumable": sorted(RESUMABLE), "progressing": [JobStatus.RUNNING, JobStatus.CANCELLING],
            "force_stoppable": sorted(FORCE_STOPPABLE), "waiting": [JobStatus.QUEUED],
            "stopping": [JobStatus.CANCELLING], "errored": [JobStatus.FAILED]}
