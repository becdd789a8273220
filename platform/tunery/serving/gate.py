"""The promotion gate: before a challenger replaces the champion, both are evaluated on the
deployment's pinned evaluation file, and the promotion is refused (409 ``gate_refused``, the
comparison in the error) when the challenger is worse on the pack's selection metric by more than
the deployment's ``gate_margin``. An operator's override (the admin action) promotes anyway and
is recorded as such in the history and the audit log."""

from __future__ import annotations

from typing import Any

from tunery.core.errors import Conflict
from tunery.evaluations import services as evaluations
from tunery.evaluations.models import EvaluationStatus
from tunery.serving import promotion
from tunery.serving.models import Deployment
from tunery.tenants.models import Tenant


class GateRefused(Conflict):
    def __init__(self, comparison: dict[str, Any]) -> None:
        challenger, champion = comparison["challenger"], comparison["champion"]
        super().__init__(
            f"The challenger scores {challenger['value']:.4f} on {comparison['metric']} against the champion's "
            f"{champion['value']:.4f} on the pinned evaluation file; it may be at most {comparison['margin']:g} "
            "worse. The promotion was refused (an operator can override it in the admin).",
            param="challenger",
            code="gate_refused",
        )
        self.extra = {"comparison": comparison}


def promote(*, tenant: Tenant, deployment: Deployment, actor: str, override: bool = False) -> Deployment:
    """Promote the deployment's challenger, through the gate when an evaluation file is pinned."""
    challenger_id = deployment.challenger_id
    if challenger_id is None:
        raise Conflict("The deployment has no challenger to promote.", param="challenger", code="no_challenger")
    comparison = None
    if deployment.evaluation_file_id is not None:
        comparison = compare(tenant=tenant, deployment=deployment, challenger_id=challenger_id)
        if not comparison["passed"] and not override:
            raise GateRefused(comparison)
    return promotion.promote(
        tenant=tenant,
        deployment_id=deployment.id,
        expected_challenger=challenger_id,
        actor=actor,
        gate=comparison,
        overridden=comparison is not None and not comparison["passed"],
    )


def verdict(*, greater_is_better: bool, margin: float, champion: float, challenger: float) -> tuple[float, bool]:
    """(improvement, passed): how much better the challenger is (negative: worse) and whether
    it is within the margin."""
    improvement = challenger - champion if greater_is_better else champion - challenger
    return improvement, improvement >= -margin - 1e-12


def compare(*, tenant: Tenant, deployment: Deployment, challenger_id: str) -> dict[str, Any]:
    """Evaluate champion and challenger on the pinned file now (in this process, with the
    evaluation worker's code; an earlier succeeded evaluation of a model on the same file content
    is reused) and compare them on the pack's selection metric. The verdict, the
    two evaluations' ids and every metric's paired difference (challenger - champion) are returned."""
    file_id = deployment.evaluation_file_id
    assert file_id is not None  # the caller checked that a file is pinned
    actor = f"gate:{deployment.id}"
    champion = evaluations.evaluate_or_reuse(tenant=tenant, model_id=deployment.model_id, file_id=file_id, actor=actor)
    challenger = evaluations.evaluate_or_reuse(tenant=tenant, model_id=challenger_id, file_id=file_id, actor=actor)
    for evaluation in (champion, challenger):
        if evaluation.status != EvaluationStatus.SUCCEEDED:
            reason = (evaluation.error or {}).get("message", evaluation.status)
            raise Conflict(
                f"The gate's evaluation {evaluation.id} of '{evaluation.model_id}' did not succeed: {reason}",
                param="evaluation_file",
                code="gate_evaluation_failed",
            )
    paired = evaluations.compare(champion, challenger)
    metric, greater_is_better = evaluations.selection_metric(champion)
    if metric not in paired["metrics"]:
        raise Conflict(
            f"The evaluations do not report the pack's selection metric '{metric}'; the gate cannot decide.",
            param="evaluation_file",
            code="gate_metric_missing",
        )
    row = paired["metrics"][metric]
    improvement, passed = verdict(
        greater_is_better=greater_is_better, margin=deployment.gate_margin, champion=row["a"], challenger=row["b"]
    )
    return {
        "object": "deployment.gate",
        "file": file_id,
        "metric": metric,
        "greater_is_better": greater_is_better,
        "margin": deployment.gate_margin,
        "champion": {"model": deployment.model_id, "evaluation": champion.id, "value": row["a"]},
        "challenger": {"model": challenger_id, "evaluation": challenger.id, "value": row["b"]},
        "improvement": improvement,
        "difference_ci": [row.get("ci_low"), row.get("ci_high")],
        "rows": paired.get("rows"),
        "metrics": paired["metrics"],
        "passed": passed,
    }
