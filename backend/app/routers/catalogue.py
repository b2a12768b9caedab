"""GET /api/models, /api/paper, /api/options and /api/statuses: the catalogue and the paper's numbers, the
training options and the job statuses, each from its one declaration in core/."""
from fastapi import APIRouter

from core import catalogue
from core.config import web_options
from core.protocol import CANCELLABLE, RESUMABLE, TERMINAL, JobStatus

from ..schemas import ModelPublic

router = APIRouter(prefix="/api", tags=["catalogue"])


@router.get("/models", response_model=list[ModelPublic])
def list_models():
    return [catalogue.describe(s) for s in catalogue.CATALOGUE.values()]


@router.get("/paper")
def paper():
    return {"citation": "Malpure, Litake, Ingle, Investigating Transfer Learning Capabilities of Vision "
                        "Transformers and CNNs by Fine-Tuning a Single Trainable Block, arXiv:2110.05270 (2021)",
            "table1": catalogue.paper_table1(), "curves": catalogue.paper_curves(),
            "deit_full_finetune": catalogue.deit_full_finetune()}


@router.get("/options")
def options():
    """The training options a browser may set, in form order: what the new-job form renders."""
    return [o.public() for o in web_options()]


@router.get("/statuses")
def statuses():
    """Job statuses and what a user may do in each: the frontend's buttons follow these lists."""
    return {"all": [s.value for s in JobStatus], "terminal": sorted(TERMINAL), "cancellable": sorted(CANCELLABLE),
            "resumable": sorted(RESUMABLE), "progressing": [JobStatus.RUNNING, JobStatus.CANCELLING]}
