"""Re-scoring padded rows gives each sampled token the log-prob of an unpadded forward."""

from __future__ import annotations

import pytest
import torch

from kimi_lab.config import compose, to_run_config
from kimi_lab.model.multimodal import KimiK25
from kimi_lab.rl.rescore import ScoredRow, rescore, turn_rows


def _model() -> KimiK25:
    torch.manual_seed(0)
    return KimiK25(to_run_config(compose(["model=tiny"])).model).eval()


def test_sampled_tokens_score_as_in_an_unpadded_forward() -> None:
    m = _model()
    banned = (3, 7)
    rows = [
        ScoredRow(
            [50, 60, 70, 80, 90, 100], [False, False, True, True, False, True], [0, 0, -1, -2, 0, -3], 0.5
        ),
        ScoredRow([41, 42, 43], [False, True, True], [0, -4, -5], -1.0),
    ]
    sc = rescore(m, rows, pad_id=1, banned_ids=banned)
    want, old, adv = [], [], []
    for r in rows:
        with torch.no_grad():
            logits = m(torch.tensor([r.tokens])).logits[0].float()
        logits[:, list(banned)] = float("-inf")
        logp = torch.log_softmax(logits, -1)
        for t in range(1, len(r.tokens)):
            if r.sampled[t]:
                want.append(float(logp[t - 1, r.tokens[t]]))
                old.append(r.old_logprobs[t])
                adv.append(r.advantage)
    assert sc.logp_new.shape == (5,) and sc.logp_new.requires_grad
    assert torch.allclose(sc.logp_new.detach(), torch.tensor(want), atol=1e-4)
    assert sc.logp_old.tolist() == old and sc.advantages.tolist() == adv
    assert sc.n_tokens == 9


def test_no_rows_and_mismatched_rows() -> None:
    m = _model()
    empty = rescore(m, [], pad_id=1, banned_ids=())
    assert empty.logp_new.numel() == 0 and empty.n_tokens == 0
    with pytest.raises(ValueError, match="differ in length"):
        rescore(m, [ScoredRow([5, 6], [True], [0.0, 0.0], 1.0)], pad_id=1, banned_ids=())


def test_turns_folded_into_one_row_score_exactly_as_separate_rows() -> None:
    m = _model()
    # turn 2's context extends turn 1's (context + sample + an observation); turn 3's was
    # re-encoded differently, so it starts a row of its own
    t1 = ([50, 51, 52], [60, 61], [-1.0, -2.0])
    t2 = ([50, 51, 52, 60, 61, 70, 71], [62], [-3.0])
    t3 = ([50, 51, 99, 60], [63, 64], [-4.0, -5.0])
    folded = turn_rows([t1, t2, t3, ([5], [], [])], advantage=0.7)
    assert len(folded) == 2
    assert folded[0].tokens == [50, 51, 52, 60, 61, 70, 71, 62]
    assert folded[0].sampled == [False, False, False, True, True, False, False, True]
    separate = [r for t in (t1, t2, t3) for r in turn_rows([t], advantage=0.7)]
    assert len(separate) == 3
    a = rescore(m, folded, pad_id=1, banned_ids=())
    b = rescore(m, separate, pad_id=1, banned_ids=())
    assert a.logp_old.tolist() == b.logp_old.tolist() == [-1.0, -2.0, -3.0, -4.0, -5.0]
    assert torch.allclose(a.logp_new, b.logp_new, atol=1e-5)
    assert a.n_tokens < b.n_tokens
