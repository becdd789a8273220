"""The promotion gate: before a challenger replaces the champion, both are evaluated on the
deployment's pinned evaluation file, and the promotion is refused (409 ``gate_refused``, the
comparison in the error) when the challenger is worse on the pack's selection metric by more than
the deployment's ``gate_margin``. An operator's override (the admin action) promotes anyway and
is recorded as such in the history and the audit log."""

from __future__ import annotations

from typing import Any

from tunery.core.errors import Conflict
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


def verdict(
    *, metric: str, greater_is_better: bool, margin: float, champion: float, challenger: float
) -> tuple[float, bool]:
    """(improvement, passed): how much better the challenger is (negative: worse) and whether
    it is within the margin."""
    improvement = challenger - champion if greater_is_better else champion - challenger
    return improvement, improvement >= -margin - 1e-12


def compare(*, tenant: Tenant, deployment: Deployment, challenger_id: str) -> dict[str, Any]:
    raise Conflict(
        "The promotion gate needs the evaluations service, which this server does not have yet.",
        code="gate_unavailable",
    )
