"""One head per task kind, shared by training and serving (see :mod:`tunery_engine.heads.base`).

Importing the package registers every head; :func:`head_for` builds one for training a task,
:func:`head_type` returns the class serving and the artifact reader use for a kind."""

from tunery_engine.heads.base import (
    IGNORE_INDEX,
    Batch,
    DecodedBatch,
    Encoded,
    EncoderHead,
    Feature,
    PredictionInput,
    TaskHead,
    head_for,
    head_type,
    register_head,
)
from tunery_engine.heads.causal_lm import BUILTIN_CHAT_TEMPLATE, CausalLMHead
from tunery_engine.heads.multi_label import LabelThresholds, MultiLabelClassificationHead, fit_label_thresholds
from tunery_engine.heads.sequence_classification import SequenceClassificationHead
from tunery_engine.heads.text_pair import TargetScale, TextPairClassificationHead, TextPairRegressionHead
from tunery_engine.heads.token_classification import TokenClassificationHead

__all__ = [
    "BUILTIN_CHAT_TEMPLATE",
    "IGNORE_INDEX",
    "Batch",
    "CausalLMHead",
    "DecodedBatch",
    "Encoded",
    "EncoderHead",
    "Feature",
    "LabelThresholds",
    "MultiLabelClassificationHead",
    "PredictionInput",
    "SequenceClassificationHead",
    "TargetScale",
    "TaskHead",
    "TextPairClassificationHead",
    "TextPairRegressionHead",
    "TokenClassificationHead",
    "fit_label_thresholds",
    "head_for",
    "head_type",
    "register_head",
]
