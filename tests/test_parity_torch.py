"""Numeric parity with PyTorch (hypnettorch): runs when torch and hypnettorch are installed."""

import numpy as np
import pytest

REASON = 'needs torch and hypnettorch: pip install -r requirements-torch.txt'
pytest.importorskip('torch', reason=REASON)
pytest.importorskip('hypnettorch', reason=REASON)

from experiments import parity_torch  # pylint: disable=g-import-not-at-top


def test_masks_with_ties_match_pytorch():
  diffs = parity_torch.tie_rows()
  assert max(diffs.values()) <= parity_torch.TOLERANCE, diffs


@pytest.mark.slow
@pytest.mark.parametrize('case', list(parity_torch.CASES))
def test_every_quantity_matches_pytorch_in_float64(case):
  values = parity_torch.evaluate_case(case, dtypes=(np.float64,))[np.float64]
  rows = {q: parity_torch.worst(*v) for q, v in values.items()}
  assert {q: d for q, d in rows.items() if d > parity_torch.TOLERANCE} == {}
  if case.startswith('hypermask'):
    assert {'masks at s=0', 'masks at s=30', 'loss term l1'} <= set(rows)
  assert {'hypernetwork outputs (all tasks)', 'loss', 'loss term ce', 'loss term reg',
          'gradients', 'params after one Adam step'} <= set(rows)
