"""The integer units against hand-computed values and their float counterparts."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from moevit.errors import MoevitError
from moevit.model.integer import intops
from moevit.model.integer.intops import QuantizationError

int8s = st.integers(-128, 127)
int32s = st.integers(-(2**31), 2**31 - 1)


def _erf_gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# requantize -----------------------------------------------------------------
def test_requantize_rounds_ties_half_up_and_saturates():
    acc = np.array([5, -5, 3, -3, 7, -7, 1, -1, 1000, -1000])
    # 2.5 3  -2.5 -2  1.5 2  -1.5 -1  3.5 4  -3.5 -3  0.5 1  -0.5 0  500 sat  -500 sat
    assert intops.requantize(acc, 1, 1).tolist() == [3, -2, 2, -1, 4, -3, 1, 0, 127, -128]
    # 6 * 3 / 4 = 4.5 -> 5; -4.5 -> -4; 7 * 3 / 4 = 5.25 -> 5; -5.25 -> -5
    assert intops.requantize(np.array([6, -6, 7, -7]), 3, 2).tolist() == [5, -4, 5, -5]
    assert intops.requantize(np.array([6, -6, 7, -7]), 3, 2).dtype == np.int8


def test_requantize_per_channel_broadcasts_over_the_last_axis():
    acc = np.array([[100, 100, 100], [-100, -100, -100]])
    y = intops.requantize(acc, np.array([1, 2, 3]), np.array([1, 2, 3]))
    # 100/2 = 50, 200/4 = 50, 300/8 = 37.5 -> 38; negatives: -50, -50, -37.5 -> -37
    assert y.tolist() == [[50, 50, 38], [-50, -50, -37]]


def test_requantize_extreme_widths_are_exact():
    acc = np.array([2**31 - 1, -(2**31)])
    y = intops.requantize(acc, 2**15 - 1, 47)
    # (2**31-1)(2**15-1)/2**47 = 0.49998... -> 0 ; -2**31 (2**15-1)/2**47 = -0.49998 -> 0
    assert y.tolist() == [0, 0]
    assert intops.requantize(np.array([2**31 - 1]), 2**15 - 1, 40).tolist() == [64]


@given(acc=int32s, mult=st.integers(1, 2**15 - 1), shift=st.integers(1, 47))
def test_requantize_matches_exact_rational_rounding(acc, mult, shift):
    exact = Fraction(acc * mult, 2**shift)
    expected = min(max(math.floor(exact + Fraction(1, 2)), -128), 127)
    assert int(intops.requantize(np.array([acc]), mult, shift)[0]) == expected
    # error bound against the real product: half a step inside the int8 range
    if -128 <= exact <= 127:
        assert abs(expected - exact) <= Fraction(1, 2)


@pytest.mark.parametrize(
    "args, message",
    [
        ((np.array([1]), 0, 4), r"^Multiplier must hold unsigned 15-bit values in \[1, 32767\], not 0$"),
        ((np.array([1]), 2**15, 4), r"^Multiplier must hold unsigned 15-bit values in \[1, 32767\], not 32768$"),
        ((np.array([1]), 3, 0), r"^Shift must hold shift values in \[1, 47\], not 0$"),
        ((np.array([1]), 3, 48), r"^Shift must hold shift values in \[1, 47\], not 48$"),
        ((np.array([2**31]), 3, 4), r"^Accumulator must hold int32 values in \[-2147483648, 2147483647\], not 2147483648$"),
        ((np.array([1.5]), 3, 4), r"^Accumulator must hold integers, not float64$"),
    ],
)
def test_requantize_rejects_bad_operands(args, message):
    with pytest.raises(QuantizationError, match=message):
        intops.requantize(*args)


def test_quantization_error_is_a_moevit_value_error():
    assert issubclass(QuantizationError, MoevitError) and issubclass(QuantizationError, ValueError)


@given(real=st.floats(2.0**-32, 2.0**13, allow_nan=False))
def test_quantize_multiplier_keeps_15_significant_bits(real):
    mult, shift = intops.quantize_multiplier(real)
    assert 2**14 <= int(mult) < 2**15 and 1 <= int(shift) <= 47
    assert abs(int(mult) / 2.0 ** int(shift) - real) <= real * 2.0**-15


def test_quantize_multiplier_is_vectorised_and_clamps_the_shift():
    mult, shift = intops.quantize_multiplier(np.array([1.0, 0.5, 2.0**-40]))
    assert mult.tolist() == [2**14, 2**14, 2**7] and shift.tolist() == [14, 15, 47]


@pytest.mark.parametrize(
    "real, message",
    [
        (0.0, r"^Scale ratio must be positive and finite, not 0\.0$"),
        (-1.0, r"^Scale ratio must be positive and finite, not -1\.0$"),
        (math.inf, r"^Scale ratio must be positive and finite, not inf$"),
        (2.0**14, r"^Scale ratio 16384\.0 is too large for a 15-bit multiplier and a shift of at least 1$"),
        (1e-20, r"^Scale ratio 1e-20 is too small for a 15-bit multiplier and a shift of at most 47$"),
    ],
)
def test_quantize_multiplier_rejects_bad_ratios(real, message):
    with pytest.raises(QuantizationError, match=message):
        intops.quantize_multiplier(real)


# linear ---------------------------------------------------------------------
@settings(max_examples=30)
@given(
    x=hnp.arrays(np.int8, (3, 7), elements=int8s),
    w=hnp.arrays(np.int8, (5, 7), elements=int8s),
    b=hnp.arrays(np.int32, (5,), elements=st.integers(-(2**20), 2**20)),
)
def test_linear_acc_is_the_exact_integer_product(x, w, b):
    expected = [[sum(int(x[t, i]) * int(w[o, i]) for i in range(7)) + int(b[o]) for o in range(5)] for t in range(3)]
    assert intops.linear_acc(x, w, b).tolist() == expected


def test_linear_acc_rejects_out_of_int8_input():
    with pytest.raises(QuantizationError, match=r"^Linear input must hold int8 values in \[-128, 127\], not 128$"):
        intops.linear_acc(np.array([[128, 0]]), np.zeros((1, 2), np.int8))


def test_linear_acc_rejects_mismatched_widths():
    with pytest.raises(QuantizationError, match=r"^Linear input width 3 does not match weight width 2$"):
        intops.linear_acc(np.zeros((1, 3), np.int8), np.zeros((1, 2), np.int8))


# isqrt ----------------------------------------------------------------------
@given(n=st.lists(st.integers(0, 2**48 - 1), min_size=1, max_size=20))
def test_isqrt_equals_math_isqrt(n):
    assert intops.isqrt(np.array(n, dtype=np.int64)).tolist() == [math.isqrt(v) for v in n]


def test_isqrt_at_square_boundaries():
    roots = np.array([1, 2, 3, 1000, 2**24 - 1], dtype=np.int64)
    squares = roots * roots
    assert intops.isqrt(squares).tolist() == roots.tolist()
    assert intops.isqrt(squares - 1).tolist() == (roots - 1).tolist()
    assert intops.isqrt(np.array([0, 2**48 - 1])).tolist() == [0, 2**24 - 1]


@pytest.mark.parametrize("value, bad", [(-1, "-1"), (2**48, "281474976710656")])
def test_isqrt_rejects_values_outside_u48(value, bad):
    with pytest.raises(QuantizationError, match=rf"^Square root input must hold u48 values in \[0, 281474976710655\], not {bad}$"):
        intops.isqrt(np.array([value]))


# GELU -----------------------------------------------------------------------
def test_gelu_hand_computed():
    # b = 10, c = 111: t = 10 - min(|q|, 10)
    q = np.array([0, 1, -1, 10, -10, 127, -128])
    # q=1: t=9 -> 1*(222-81)=141; q=-1: -1*81; q=10: t=0 -> 2220; q=-10 -> 0
    assert intops.gelu(q, 10, 111).tolist() == [0, 141, -81, 2220, 0, 127 * 222, 0]


@settings(max_examples=60)
@given(scale=st.floats(2.0**-8, 0.5))
def test_gelu_error_bound_over_every_int8_input(scale):
    b, c = intops.gelu_constants(scale)
    q = np.arange(-128, 128)
    y = intops.gelu(q, b, c)
    assert y.dtype == np.int32 and np.abs(y).max() < 2**30
    err = np.abs(y * scale / (2 * c) - _erf_gelu(q * scale))
    # measured: 0.0183 (I-BERT's erf polynomial) plus 0.096 input steps (rounding of b)
    assert err.max() <= 0.0185 + 0.1 * scale


def test_gelu_rejects_bad_input_and_constants():
    with pytest.raises(QuantizationError, match=r"^GELU input must hold int8 values in \[-128, 127\], not -129$"):
        intops.gelu(np.array([-129]), 10, 111)
    with pytest.raises(QuantizationError, match=r"^GELU constants need 2\*c >= b\*b, not c=10, b=10$"):
        intops.gelu(np.array([1]), 10, 10)
    with pytest.raises(QuantizationError, match=r"^GELU input scale 0\.0001 is too small; its constants need c=\d+ < 2\*\*22$"):
        intops.gelu_constants(1e-4)
    with pytest.raises(QuantizationError, match=r"^GELU input scale must be positive and finite, not 0\.0$"):
        intops.gelu_constants(0.0)


# exp and softmax ------------------------------------------------------------
def test_exp2_neg_at_integer_exponents_is_exact():
    x = -np.arange(0, 20) * 2**15
    assert intops.exp2_neg(x).tolist() == [2**15 >> min(z, 16) for z in range(20)]


@given(x=st.integers(-(2**22), 0))
def test_exp2_neg_error_bound(x):
    e = int(intops.exp2_neg(np.array([x]))[0])
    exact = 2.0 ** (x / 2**15)
    # 2e-3 absolute on 2**-v (polynomial), halved per integer step, plus the floor
    assert abs(e / 2**15 - exact) <= 2e-3 * 2.0 ** -((-x) >> 15) + 2**-15


def test_exp2_neg_rejects_positive_exponent():
    with pytest.raises(QuantizationError, match=r"^Exponent must be at most 0, not 5$"):
        intops.exp2_neg(np.array([0, 5]))


@settings(max_examples=60)
@given(
    rows=st.integers(1, 4),
    n=st.integers(1, 300),
    spread=st.integers(1, 2**20),
    scale=st.floats(1e-7, 1e-3),
    seed=st.integers(0, 2**32 - 1),
)
def test_softmax_against_float(rows, n, spread, scale, seed):
    scores = np.random.default_rng(seed).integers(-spread, spread + 1, (rows, n))
    mult, shift = intops.softmax_constants(scale)
    p = intops.softmax(scores, mult, shift)
    assert p.min() >= 0 and p.max() <= 2**15
    # measured: at most 1.2e-3 per entry; every row within N // 2 + 2 of 2**15
    assert np.abs(p / 2**15 - _softmax(scores * scale)).max() <= 3e-3
    assert np.all(np.abs(p.sum(axis=-1) - 2**15) <= n // 2 + 2)


def test_softmax_hand_computed_rows():
    mult, shift = intops.softmax_constants(0.01)
    # equal scores share 1 equally; a single entry is 1 exactly
    assert intops.softmax(np.array([[7, 7, 7, 7]]), mult, shift).tolist() == [[2**13] * 4]
    assert intops.softmax(np.array([[-5]]), mult, shift).tolist() == [[2**15]]
    # scores ln2 apart: e = [2**15, 2**14], R = 2**40 // 49152 = 22369621,
    # p = 2**15 R / 2**25 = 21845.33 -> 21845 and 2**14 R / 2**25 = 10922.67 -> 10923
    mult, shift = intops.softmax_constants(math.log(2.0) / 1024)
    assert (mult, shift) == (2**14, 9)
    assert intops.softmax(np.array([[1024, 0]]), mult, shift).tolist() == [[21845, 10923]]


def test_softmax_rejects_bad_rows():
    with pytest.raises(QuantizationError, match=r"^Softmax row length must be in \[1, 32768\], not 0$"):
        intops.softmax(np.zeros((2, 0), np.int32), 100, 4)
    with pytest.raises(QuantizationError, match=r"^Softmax scores must hold integers, not float64$"):
        intops.softmax(np.zeros((2, 3)), 100, 4)
    with pytest.raises(QuantizationError, match=r"^Softmax score scale must be positive and finite, not -1\.0$"):
        intops.softmax_constants(-1.0)


# LayerNorm ------------------------------------------------------------------
@settings(max_examples=40)
@given(
    dim=st.integers(2, 1024),
    in_scale=st.floats(1e-3, 1.0),
    out_scale=st.floats(1e-2, 0.2),
    seed=st.integers(0, 2**32 - 1),
)
def test_layernorm_against_float(dim, in_scale, out_scale, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, (5, dim)) // rng.integers(1, 64, (5, 1))
    gamma = rng.normal(1.0, 0.5, dim)
    beta = rng.normal(0.0, 0.3, dim)
    eps, g, b, shift = intops.layernorm_constants(in_scale, gamma, beta, out_scale, 1e-6)
    y = intops.layernorm(x, eps, g, b, shift)
    xf = x * in_scale
    norm = (xf - xf.mean(-1, keepdims=True)) / np.sqrt(xf.var(-1, keepdims=True) + 1e-6)
    # the constants carry gamma and beta to 15 significant bits of the largest
    gamma_q = g * out_scale * 2.0 ** (12 - shift)
    beta_q = b * out_scale * 2.0**-shift
    assert np.abs(gamma_q - gamma).max() <= np.abs(gamma).max() * 2.0**-14
    assert np.abs(beta_q - beta).max() <= out_scale * 2.0**-shift
    expected = np.clip((norm * gamma_q + beta_q) / out_scale, -128, 127)
    # half a step, plus the normalised value's error (square root and
    # reciprocal floors: relative 1/(64 sqrt(v)) + 2**-12; epsilon rounded to an
    # integer: 0.25 / v; rounding 2**-13) times gamma
    v = np.maximum(dim * (x * x).sum(-1, keepdims=True) - x.sum(-1, keepdims=True) ** 2, 1)
    relative = 1.0 / (64.0 * np.sqrt(v)) + 2.0**-12 + 0.25 / v
    bound = 0.5 + (np.abs(norm) * relative + 2.0**-13) * np.abs(gamma_q) / out_scale
    assert np.all(np.abs(y - expected) <= bound + 1e-6)


def test_layernorm_of_a_constant_row_is_beta():
    eps, g, b, shift = intops.layernorm_constants(0.1, np.ones(4), np.array([0.0, 0.5, -0.5, 1.0]), 0.1, 1e-6)
    assert intops.layernorm(np.full((1, 4), 9), eps, g, b, shift).tolist() == [[0, 5, -5, 10]]


def test_layernorm_reaches_its_bound():
    """The normalised value ``n`` reaches 2**17, its bound (so it needs 19 signed bits):
    one 1 among 1,023 zeros. With gamma 1, a shift of 1 and beta -(2**17 + 1) the output
    is ``(n - 2**17) >> 1``: 0 there (2**17 - 1 would give -1)."""
    dim = 1024
    x = np.zeros((1, dim), np.int64)
    x[0, 3] = 1
    beta = np.zeros(dim, np.int64)
    beta[3] = -(2**17 + 1)
    y = intops.layernorm(x, 0, np.ones(dim, np.int64), beta, 1)
    assert y[0, 3] == 0


def test_layernorm_rejects_bad_input():
    eps, g, b, shift = intops.layernorm_constants(0.1, np.ones(4), np.zeros(4), 0.1, 1e-6)
    with pytest.raises(QuantizationError, match=r"^LayerNorm input must hold int8 values in \[-128, 127\], not 300$"):
        intops.layernorm(np.array([[300, 0, 0, 0]]), eps, g, b, shift)
    with pytest.raises(QuantizationError, match=r"^LayerNorm gamma and beta must have shape \(3,\), not \(4,\) and \(4,\)$"):
        intops.layernorm(np.zeros((1, 3), np.int8), eps, g, b, shift)
    with pytest.raises(QuantizationError, match=r"^LayerNorm output scale must be positive and finite, not 0\.0$"):
        intops.layernorm_constants(0.1, np.ones(4), np.zeros(4), 0.0, 1e-6)


# residual add ---------------------------------------------------------------
@given(
    a=hnp.arrays(np.int8, 16, elements=int8s),
    b=hnp.arrays(np.int8, 16, elements=int8s),
    sa=st.floats(1e-3, 1.0),
    sb=st.floats(1e-3, 1.0),
    sy=st.floats(1e-3, 1.0),
)
def test_residual_add_against_float(a, b, sa, sb, sy):
    ma, mb, shift = intops.residual_constants(sa, sb, sy)
    y = intops.residual_add(a, b, ma, mb, shift)
    expected = np.clip((a * sa + b * sb) / sy, -128, 127)
    # half a step of rounding plus the multipliers' 2**-15 relative error
    assert np.abs(y - expected).max() <= 0.5 + 2**-14 * (128 * (sa + sb) / sy) + 1e-9


def test_residual_add_hand_computed():
    # 3*2 + 5*3 = 21 over 2**2 = 5.25 -> 5; -6 -15 = -21 -> -5.25 -> -5; 2+3 = 5 -> 1.25 -> 1
    assert intops.residual_add(np.array([3, -3, 1]), np.array([5, -5, 1]), 2, 3, 2).tolist() == [5, -5, 1]


def test_residual_rejects_a_zero_scale():
    with pytest.raises(QuantizationError, match=r"^Residual scale must be positive and finite, not 0\.0$"):
        intops.residual_constants(0.1, 0.0, 0.1)
    with pytest.raises(QuantizationError, match=r"^Residual input b must hold int8 values in \[-128, 127\], not 128$"):
        intops.residual_add(np.array([1]), np.array([128]), 2, 3, 2)


# gating ---------------------------------------------------------------------
def test_topk_ties_go_to_the_lowest_index():
    logits = np.array([[3, 5, 5, 1], [0, 0, 0, 0], [-1, 2, -1, 2], [-128, -128, 127, -128]])
    assert intops.topk(logits, 2).tolist() == [[1, 2], [0, 1], [1, 3], [2, 0]]
    assert intops.topk(logits, 1).tolist() == [[1], [0], [1], [2]]


@given(rows=st.lists(st.lists(st.integers(-3, 3), min_size=6, max_size=6), min_size=1, max_size=8), k=st.integers(1, 6))
def test_topk_matches_a_sort_by_value_then_index(rows, k):
    expected = [sorted(range(6), key=lambda e: (-row[e], e))[:k] for row in rows]
    assert intops.topk(np.array(rows), k).tolist() == expected


@pytest.mark.parametrize("k", [0, 5, 1.5])
def test_topk_rejects_bad_k(k):
    with pytest.raises(QuantizationError, match=rf"^Top-k must be an integer in \[1, 4\], not {k!r}$"):
        intops.topk(np.zeros((2, 4), np.int8), k)


def test_gate_weights_over_two_selected_logits():
    # the "renorm" gate's weights: the softmax over the k selected int8 logits
    mult, shift = intops.softmax_constants(0.1)
    logits = np.array([[40, 30], [10, 10]])
    w = intops.softmax(logits, mult, shift)
    assert np.abs(w / 2**15 - _softmax(logits * 0.1)).max() <= 3e-3
    assert w[1].tolist() == [2**14, 2**14]


def test_weighted_sum_for_attention_and_moe_combine():
    w = np.array([[2**15, 0], [2**14, 2**14]])
    v = np.array([[10, -20], [30, 40]])
    assert intops.weighted_sum(w, v).tolist() == [[10 * 2**15, -20 * 2**15], [40 * 2**14, 20 * 2**14]]
    combined = intops.weighted_sum(w[:, None, :], np.stack([v, v]))
    assert combined[:, 0].tolist() == [[10 * 2**15, -20 * 2**15], [40 * 2**14, 20 * 2**14]]
    with pytest.raises(QuantizationError, match=r"^Weights must hold Q0\.15 values in \[0, 32768\], not 32769$"):
        intops.weighted_sum(np.array([[2**15 + 1]]), np.array([[1]]))
