"""The customer-service pack honours the contract; reply selection and hand-off behave as configured."""

from __future__ import annotations

import pytest
from tunery_customer_service import intent_metrics, pack, select_reply

from tunery_contract import EvalOutput, PackError, Prediction, TaskKind
from tunery_contract.discovery import discover
from tunery_contract.testing import check_pack

LABELS = ("card_arrival", "exchange_rate", "lost_or_stolen_card")


def prediction(*probabilities: float) -> Prediction:
    return Prediction(kind=TaskKind.SEQUENCE_CLASSIFICATION, label_names=LABELS, probabilities=list(probabilities))


def test_pack_honours_the_contract():
    check_pack(pack)


def test_pack_is_discovered_through_its_entry_point():
    assert discover().get("customer_service").version == pack.version


def test_confident_prediction_gets_the_tenants_template():
    config = {"reply_templates": {"lost_or_stolen_card": "Card frozen."}, "handoff_threshold": 0.6}
    result = select_reply(prediction(0.1, 0.1, 0.8), {"text": "I lost my card"}, config)
    assert result["intent"] == "lost_or_stolen_card"
    assert result["reply"] == "Card frozen."
    assert result["handoff"] is False
    assert [a["intent"] for a in result["alternatives"]] == ["card_arrival", "exchange_rate"]


def test_below_the_threshold_the_answer_is_a_hand_off():
    config = {
        "reply_templates": {"lost_or_stolen_card": "Card frozen."},
        "handoff_threshold": 0.9,
        "handoff_reply": "A colleague will take over.",
    }
    result = select_reply(prediction(0.1, 0.1, 0.8), {"text": "I lost my card"}, config)
    assert result["handoff"] is True
    assert result["handoff_reason"] == "low_confidence"
    assert result["reply"] == "A colleague will take over."


def test_an_intent_without_a_template_is_handed_off():
    result = select_reply(prediction(0.9, 0.05, 0.05), {"text": "where is my card"}, {"reply_templates": {}})
    assert result["handoff_reason"] == "no_template"


def test_a_prediction_of_the_out_of_scope_label_is_handed_off_as_such_even_with_a_template():
    labels = ("card_arrival", "exchange_rate", "oos")
    config = {"reply_templates": {"oos": "Sorry, I cannot help with that.", "card_arrival": "Soon."}}

    def answer(*probabilities: float, oos_label: str | None = "oos", threshold: float = 0.5) -> dict:
        predicted = Prediction(
            kind=TaskKind.SEQUENCE_CLASSIFICATION,
            label_names=labels,
            probabilities=list(probabilities),
            handoff_threshold=threshold,
            out_of_scope_label=oos_label,
        )
        return select_reply(predicted, {"text": "what is the weather"}, config)

    result = answer(0.1, 0.1, 0.8)
    assert (result["intent"], result["handoff"], result["handoff_reason"]) == ("oos", True, "out_of_scope")
    assert result["reply"] != config["reply_templates"]["oos"]
    assert answer(0.3, 0.3, 0.4)["handoff_reason"] == "low_confidence"  # below the threshold: today's reason
    assert answer(0.1, 0.1, 0.8, oos_label=None)["handoff"] is False  # a model without the knob: a plain intent
    assert answer(0.8, 0.1, 0.1)["handoff"] is False


def test_metrics_report_coverage_and_accuracy_at_the_hand_off_threshold():
    out = EvalOutput(
        kind=TaskKind.SEQUENCE_CLASSIFICATION,
        label_names=LABELS,
        y_true=[0, 1, 2, 2],
        y_pred=[0, 1, 1, 2],
        scores=[[0.9, 0.05, 0.05], [0.3, 0.4, 0.3], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]],
    )
    metrics = intent_metrics(out)
    assert metrics["accuracy"] == 0.75
    assert metrics["recall/lost_or_stolen_card"] == 0.5
    assert metrics["coverage_at_handoff"] == 0.75  # the 0.4 row is handed off
    assert metrics["accuracy_at_handoff"] == pytest.approx(2 / 3)


def test_bad_data_is_reported_per_row():
    report = pack.task("intent").validate(
        [(2, {"text": "", "label": "card_arrival"}), (3, {"message": "hi", "label": "x"}), (4, {"text": "ok"})]
    )
    assert [str(e) for e in report.errors] == [
        "line 2, column 'text': missing value",
        "line 3, column 'text': missing value",
        "line 4, column 'label': missing value",
    ]


def test_asking_for_a_task_the_pack_does_not_offer():
    with pytest.raises(PackError, match=r"offers no task 'summary' \(it offers: intent, reply\)"):
        pack.task("summary")


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"handoff_threshold": 1.5}, 'handoff_threshold must be "auto" or a number from 0 to 1, got 1.5'),
        ({"handoff_threshold": "high"}, "handoff_threshold must be \"auto\" or a number from 0 to 1, got 'high'"),
        ({"reply_templates": {"card_arrival": ""}}, "reply_templates must map intent names to non-empty reply texts"),
        ({"handoff_reply": None}, "handoff_reply must be a non-empty text"),
    ],
)
def test_bad_tenant_configuration_is_explained(config, problem):
    assert pack.config_problems(config) == [problem]
