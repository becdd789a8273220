"""Best-evaluation selection: the selection metric first, the validation loss on a tie."""

from __future__ import annotations

from tunery_worker.engine import _improved


def test_a_tie_of_the_selection_metric_goes_to_the_lower_validation_loss():
    assert _improved(0.5, 0.40, 0.5, 0.60, greater=True)
    assert not _improved(0.5, 0.70, 0.5, 0.60, greater=True)
    assert not _improved(0.5, 0.60, 0.5, 0.60, greater=True)  # an exact repeat is no improvement
    assert _improved(0.3, 0.40, 0.3, 0.60, greater=False)


def test_the_selection_metric_still_decides_when_it_differs():
    assert _improved(0.6, 0.90, 0.5, 0.10, greater=True)
    assert not _improved(0.4, 0.01, 0.5, 0.60, greater=True)
    assert _improved(0.2, 0.90, 0.3, 0.10, greater=False)
    assert _improved(0.1, None, None, None, greater=True)  # the first evaluation is always the best so far
