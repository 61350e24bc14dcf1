"""Typed tables. Importing this package registers every table on Base.metadata."""

from db.tables.model import Model
from db.tables.model_version import Hardware, ModelVersion
from db.tables.prediction import Prediction, PredictionStatus
from db.tables.user import Role, User

__all__ = [
    "Hardware",
    "Model",
    "ModelVersion",
    "Prediction",
    "PredictionStatus",
    "Role",
    "User",
]
