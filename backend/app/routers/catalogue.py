"""GET /api/models, /api/models/{id} (a model's method card), /api/paper, /api/datasets, /api/options and
/api/statuses: the catalogue and the paper's numbers, the datasets and their class names, the training options and
the job statuses, each from its one declaration in core/. The method card is built from catalogue data alone (no
model is built: the backend never imports torch)."""
from fastapi import APIRouter, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from core import catalogue, folders, palette
from core.config import TrainConfig, config_warnings, method_card, preset, web_options
from core.protocol import CANCELLABLE, RESUMABLE, TERMINAL, JobStatus

from ..jobs import FORCE_STOPPABLE
from ..schemas import ExperimentConfig, ModelCard, ModelPublic

router = APIRouter(prefix="/api", tags=["catalogue"])


@router.get("/models", response_model=list[ModelPublic])
def list_models():
    return [{**catalogue.describe(s), "colour": palette.model_colour(s.id)} for s in catalogue.CATALOGUE.values()]


@router.get("/models/{model_id}", response_model=ModelCard, responses={404: {"description": "no such model"}})
def model_card(model_id: str, request: Request):
    """The model's method card: weights, input size, numerics, trainable part, head, optimizer, trainable count
    against Table 1, and each known deviation from the authors' runs, for the paper's preset. Query parameters set
    options as an experiment's config does (`?precision=bf16`; empty = null): the card of that config, whose
    `config_deviations` say where it leaves the paper preset (the job page shows its job's card so)."""
    if not catalogue.is_model(model_id):
        raise HTTPException(404, f"unknown model {model_id!r}: neither in the catalogue (GET /api/models) nor in "
                                 "timm's registry")
    given = {k: None if v in ("", "null") else v for k, v in request.query_params.items() if k != "model"}
    try:
        chosen = ExperimentConfig(model=model_id, **given)
    except ValidationError as err:
        raise RequestValidationError([{**d, "loc": ("query", *d["loc"])}
                                      for d in err.errors(include_url=False)]) from err
    web = {o.name for o in web_options()}
    paper = {k: v for k, v in preset("paper", model=model_id).to_dict().items() if k in web}
    return {**method_card(TrainConfig(**chosen.model_dump())), "config": paper,
            "warnings": config_warnings(chosen.model_dump())}


@router.get("/paper")
def paper():
    return {"citation": "Malpure, Litake, Ingle, Investigating Transfer Learning Capabilities of Vision "
                        "Transformers and CNNs by Fine-Tuning a Single Trainable Block, arXiv:2110.05270 (2021)",
            "table1": catalogue.paper_table1(), "curves": catalogue.paper_curves(),
            "deit_full_finetune": catalogue.deit_full_finetune()}


def _dataset_public(d: catalogue.DatasetSpec) -> dict:
    return {"id": d.id, "title": d.title, "classes": list(d.classes), "num_classes": d.num_classes,
            "in_paper": d.in_paper, "train_size": d.train_size, "val_size": d.val_size}


@router.get("/datasets")
def datasets():
    """Every dataset a job may train on, with its class names in label order (what a job's per-class views name),
    the size of its training and validation sets and whether the paper reports numbers on it (where it does not,
    comparisons show "no paper number"): the built-in ones, then each folder of one's own images found under
    `<data dir>/folders` (a folder that breaks the layout comes with `error`, what is wrong where, and no classes)."""
    out = [_dataset_public(d) for d in catalogue.DATASETS.values()]
    for f in folders.available():
        out.append(_dataset_public(f["spec"]) if "spec" in f else
                   {"id": f["id"], "title": f"{f['name']} (your folder)", "classes": [], "num_classes": 0,
                    "in_paper": False, "train_size": 0, "val_size": 0, "error": f["error"]})
    return out


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
