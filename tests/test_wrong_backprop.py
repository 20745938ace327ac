"""The comparison can fail: plausible wrong derivations are each caught.

Each variant below is the delta recursion with one classic slip. The same
comparison the property tests use (``assert_backprop_close``) must reject
every one of them, on networks where the slip matters (m > 1, non-linear
hidden layers), while the correct recursion passes on the same cases.
"""

import jax.numpy as jnp
import pytest

from functional_bp import _validate
from functional_bp.backprop import Backprop, backprop_from_arrays
from functional_bp.mlp import forward_trace, l2_penalty
from helpers import assert_backprop_close, float64_truth, reference_backprop, rtol_for
from strategies import make_case


def recursion_with_slip(params, x, y, l2, activations, loss, slip):
    m = x.shape[0]
    zs, As = forward_trace(params, x, activations)
    J = jnp.mean(loss.value(As[-1], y)) + l2_penalty(params, l2)
    delta = loss.grad(As[-1], y) / m * activations[-1].dg(zs[-1])
    if slip == "one_over_m_twice":
        delta = delta / m
    grads, deltas = [None] * len(params), [None] * len(params)
    for l in reversed(range(len(params))):
        W, a_prev = params[l]["W"], As[l]
        deltas[l] = delta
        db = delta.mean(axis=0) if slip == "bias_averaged" else delta.sum(axis=0)
        if slip == "bias_not_summed":
            db = delta[0]
        grads[l] = {"W": a_prev.T @ delta + l2 * W, "b": db}
        back = delta @ W.T
        if l > 0:
            delta = back if slip == "no_g_prime" else back * activations[l - 1].dg(zs[l - 1])
    return Backprop(J, grads, deltas, back)


CASES = [
    make_case([3, 6, 5, 2], 8, ["tanh", "sigmoid", "identity"], "mse", seed=1),
    make_case([4, 7, 3], 5, ["relu", "identity"], "softmax_cross_entropy", seed=2,
              target_kind="labels", l2=0.1),
    make_case([2, 5, 5, 3], 16, ["gelu", "elu", "identity"], "sigmoid_cross_entropy",
              seed=3, target_kind="binary"),
]
SLIPS = ["no_g_prime", "one_over_m_twice", "bias_not_summed", "bias_averaged"]


def run(case, slip):
    acts, loss, x, y = _validate.prepare(case.params, case.batch, case.activations, case.loss)
    if slip is None:
        ours = backprop_from_arrays(case.params, x, y, case.l2, acts, loss)
    else:
        ours = recursion_with_slip(case.params, x, y, case.l2, acts, loss, slip)
    ref = reference_backprop(case.params, case.batch, **case.kwargs())
    # the float64 fallback of the float32 property test, also in use here
    truth = float64_truth(case.params, case.batch, **case.kwargs())
    return assert_backprop_close(ours, ref, rtol_for(case.dtype), truth)


@pytest.mark.parametrize("case", CASES, ids=repr)
@pytest.mark.parametrize("slip", SLIPS)
def test_each_slip_is_caught(case, slip):
    with pytest.raises(AssertionError, match="leaves over rtol"):
        run(case, slip)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_the_correct_recursion_passes_on_the_same_cases(case):
    run(case, None)
