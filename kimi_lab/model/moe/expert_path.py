"""Which form multiplies the routed experts: one batched call over padded rows, or the ragged rows.

Shape legend: E experts, C rows per expert in the batched form (its capacity), D hidden,
F expert FFN width; ragged rows: the rows the loop or grouped GEMM would multiply.

The ragged forms (``loop``, ``grouped``) multiply exactly the rows each expert received;
the batched form pads every expert to the same C rows and makes each matmul one
``torch.bmm``. It multiplies E x C - ragged rows of zeros, but makes one call where the
loop makes E: on CPUs each small matmul pays an OpenMP fork-join and oneDNN's setup,
which one batched call pays once. How much that buys depends on the machine, the dtype,
the thread count and the rows per expert, so it is measured: the first time a
(device, dtype, D, F, threads, rows-per-expert octave, ragged form) is seen, both forms
time the gate-up matmul (and its weight gradient, for training) on the same rows, and
the ragged form once more on one row per expert (side by side, seven rounds, medians of
the ratios). Kept for the process: the batched
form's *gain* per row (t ragged / t batched), and what one more ragged call costs, in
ragged rows (``call_rows``: the one-row time over the per-row time).

A call then chooses the block's capacity C: experts with more pairs than C put the rest in
an overflow region, multiplied per expert. In ragged rows, C costs E x C / gain for the
block plus, per overflowing expert, its overflow rows and one call; the cheapest C wins
against the ragged form's rows (under gradients E x C is at most twice the ragged rows:
the block's activations are kept for the backward). Balanced routing takes a block that holds nearly everything; a few hot
experts overflow a little; a badly skewed batch (one expert holding most of the tokens)
costs more either way and falls back to the ragged form.

Where timing must not decide (deterministic runs, graphs being compiled) fixed figures
stand in (gain 1.25, a call worth 16 rows). Every form is exact; the choice is only ever about speed.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass

import torch

from kimi_lab.model.moe.expert_matmuls import RowPlan, mm_groups, mm_weight_grads

log = logging.getLogger(__name__)

# A timed call of the calibration multiplies as many of the layer's experts as fit in
# about this many FLOPs (at least 2, at most MAX_CALIBRATION_EXPERTS); where two experts'
# matmuls would exceed MAX_CALIBRATION_FLOPS they amortise their call overhead anyway and
# are not measured (gain 1: padding never pays).
CALIBRATION_FLOPS = 2e9
MAX_CALIBRATION_FLOPS = 2e10
MAX_CALIBRATION_EXPERTS = 64
# The expert rows' activations (kept for the backward) grow with the padded rows: under
# gradients never more than this many times the ragged rows, whatever the measured gain.
MAX_PADDING = 2.0


@dataclass(frozen=True)
class Calibration:
    """The batched form's gain per row over the ragged form, and one ragged call in ragged rows."""

    gain: float
    call_rows: float


FIXED = Calibration(gain=1.25, call_rows=16.0)  # where timing may not decide
UNMEASURED = Calibration(gain=1.0, call_rows=0.0)  # matmuls too big to time: padding never pays


@dataclass(frozen=True)
class GainKey:
    device: str
    dtype: torch.dtype
    dim: int
    ffn: int
    threads: int
    rows_octave: int  # capacity.bit_length(): one measurement per power of two of rows per expert
    experts: int  # how many experts the measurement multiplies (0: too big to measure)
    ragged_form: str
    backward: bool


_CALIBRATIONS: dict[GainKey, Calibration] = {}


def measured_calibrations() -> dict[GainKey, Calibration]:
    """Every calibration made in this process (benchmarks print them)."""
    return dict(_CALIBRATIONS)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _measure(key: GainKey, device: torch.device) -> Calibration | None:
    """Both forms on ``key.experts`` experts with C rows each, and the ragged one on one row
    each, timed side by side in seven rounds; the median of each round's ratios (other load
    slows neighbouring calls alike, and a burst spoils only a round or two). None where too
    big to time."""
    if not key.experts:
        return None
    C, n = 1 << (key.rows_octave - 1), key.experts
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n * C, key.dim, generator=g, device=device).to(key.dtype)
    w13 = torch.randn(n, 2 * key.ffn, key.dim, generator=g, device=device).to(key.dtype)
    gh = torch.randn(n * C, 2 * key.ffn, generator=g, device=device).to(key.dtype)
    plans = {
        "batched": RowPlan.make("batched", [C] * n, device),
        "ragged": RowPlan.make(key.ragged_form, [C] * n, device),
        "one row": RowPlan.make(key.ragged_form, [1] * n, device),
    }
    gains, calls = [], []
    with torch.autocast(device.type, enabled=False):
        for round_ in range(8):  # round 0 warms up (kernel creation, first-touch pages)
            t = {}
            for name, plan in plans.items():
                rows = sum(plan.rows)
                _sync(device)
                t0 = time.perf_counter()
                mm_groups(x[:rows], w13.transpose(1, 2), plan)
                if key.backward:
                    mm_weight_grads(gh[:rows], x[:rows], plan, key.dtype)
                _sync(device)
                t[name] = max(time.perf_counter() - t0, 1e-9)
            if round_:
                gains.append(t["ragged"] / t["batched"])
                calls.append(t["one row"] / t["ragged"] * C)  # one call / (ragged time per row)
    return Calibration(statistics.median(gains), statistics.median(calls))


def _calibration_experts(n_experts: int, capacity: int, dim: int, ffn: int, backward: bool) -> int:
    """How many experts the measurement multiplies: 0 where two are already too big to time."""
    rows = 1 << (capacity.bit_length() - 1)
    per_expert = 2 * rows * dim * 2 * ffn * (2 if backward else 1)
    if 2 * per_expert > MAX_CALIBRATION_FLOPS:
        return 0
    return int(min(n_experts, MAX_CALIBRATION_EXPERTS, max(2, CALIBRATION_FLOPS // per_expert)))


def calibration(
    device: torch.device,
    dtype: torch.dtype,
    dim: int,
    ffn: int,
    capacity: int,
    ragged_form: str,
    backward: bool,
    n_experts: int = MAX_CALIBRATION_EXPERTS,
) -> Calibration:
    """The batched form's gain and a ragged call's cost at this shape (measured once)."""
    key = GainKey(
        device.type,
        dtype,
        dim,
        ffn,
        torch.get_num_threads(),
        capacity.bit_length(),
        _calibration_experts(n_experts, capacity, dim, ffn, backward),
        ragged_form,
        backward,
    )
    if key not in _CALIBRATIONS:
        measured = _measure(key, device)
        _CALIBRATIONS[key] = UNMEASURED if measured is None else measured
        log.info(
            "experts: one bmm over padded rows is %s the %s form per row, one more %s call costs %s "
            "(%s, %s, D=%d, F=%d, %d-%d rows per expert, %d experts timed, %d threads%s)",
            "taken as 1x (too big to time)" if measured is None else f"{measured.gain:.2f}x",
            ragged_form,
            ragged_form,
            "-" if measured is None else f"{measured.call_rows:.0f} rows",
            device.type,
            str(dtype).removeprefix("torch."),
            dim,
            ffn,
            1 << (key.rows_octave - 1),
            (1 << key.rows_octave) - 1,
            key.experts,
            key.threads,
            ", with weight gradients" if backward else "",
        )
    return _CALIBRATIONS[key]


def batched_capacity(
    counts: list[int],
    ragged_rows: int,
    candidates: list[int],
    *,
    device: torch.device,
    dtype: torch.dtype,
    dim: int,
    ffn: int,
    ragged_form: str,
    backward: bool,
) -> int:
    """The block capacity C for the batched form, or 0 where the ragged form is cheaper.

    ``counts``: pairs per expert; ``ragged_rows``: the rows the ragged form would multiply;
    ``candidates``: the capacities allowed (row counts the caller can pad to). Every cost is
    in ragged rows: C's block costs E x C / gain, each expert beyond C its overflow rows and
    one call.
    """
    E = len(counts)
    if E < 2 or not ragged_rows or not candidates:
        return 0
    top = max(candidates)
    if E * top <= ragged_rows:
        return top  # no more arithmetic than the ragged form and no overflow: one call wins
    fixed = torch.are_deterministic_algorithms_enabled() or torch.compiler.is_compiling()
    best, best_cost = 0, float(ragged_rows)
    for C in sorted(set(candidates)):
        if backward and MAX_PADDING * ragged_rows < E * C:
            break
        cal = FIXED if fixed else calibration(device, dtype, dim, ffn, C, ragged_form, backward, E)
        cost = E * C / cal.gain + sum(n - C + cal.call_rows for n in counts if n > C)
        if cost < best_cost:
            best, best_cost = C, cost
    return best
