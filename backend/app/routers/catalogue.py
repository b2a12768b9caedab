"""GET /api/models and /api/paper: the model catalogue and the paper's numbers, from their one home."""
from fastapi import APIRouter

from core import catalogue

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
