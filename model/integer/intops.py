"""Integer primitives of the golden model: the arithmetic specification.

Every unit of the accelerator (RTL and HLS) computes exactly what the
functions below compute, bit for bit. Each function is numpy-vectorised,
takes only integers, and receives its constants as explicit integer arguments
(the fields of the hardware descriptor). Each ``*_constants`` helper derives
those integers from float scales; it runs once, at quantization time, and is
the only place floats appear.

Conventions
-----------
* ``>>`` is an arithmetic (floor) shift of a two's-complement value;
  ``round_shift(v, s) = (v + 2**(s-1)) >> s`` rounds half up (towards +inf).
* ``clip8(v) = min(max(v, -128), 127)``.
* Widths are stated as signed bits including the sign ("s47" fits in
  ``[-2**46, 2**46)``) or unsigned ("u16"). No intermediate exceeds 48 bits
  signed, so one DSP48E2 (27x18 multiply, 48-bit accumulate) or an int64 in
  C++ holds it.
* Row length ``N`` (softmax) is at most ``2**15``; LayerNorm width ``D`` at
  most ``2**10``; linear input width at most ``2**16``.

Units (formulas in each docstring)
----------------------------------
``requantize``      int32 accumulator -> int8, multiplier u15 and shift 1..47.
``linear_acc``      int8 x int8 matrix product + int32 bias, int32 accumulator.
``isqrt``           floor square root of u48, bit-serial (24 steps).
``gelu``            int8 -> s31, I-BERT second-order erf polynomial.
``exp2_neg``        2**x for x <= 0 in Q.15, shift + second-order polynomial.
``softmax``         int32 rows -> probabilities Q0.15 (u16, sum ~ 2**15),
                    one integer reciprocal per row.
``layernorm``       int8 rows -> int8, integer mean/variance, ``isqrt``,
                    one integer reciprocal per row, per-channel gamma/beta.
``residual_add``    int8 + int8 -> int8 with two multipliers and one shift.
``topk``            top-k expert indices, ties to the lowest index.
``weighted_sum``    Q0.15 weights x int8 rows -> int32 accumulator.

Errors
------
Bad input (a value outside int8 handed to an int8 unit, a non-integer array,
a multiplier or shift out of range, a scale that is zero, negative or not
finite) raises :class:`QuantizationError`.
"""

import math

import numpy as np

from moevit.errors import MoevitError

__all__ = [
    "QuantizationError",
    "INT8_MIN",
    "INT8_MAX",
    "MULT_BITS",
    "SHIFT_MIN",
    "SHIFT_MAX",
    "EXP_FRAC",
    "EXP_A",
    "EXP_B",
    "PROB_FRAC",
    "PROB_ONE",
    "SOFTMAX_RECIP_BITS",
    "LN_VAR_SHIFT",
    "LN_RECIP_BITS",
    "LN_NORM_FRAC",
    "GELU_ERF_A",
    "GELU_ERF_B",
    "round_shift",
    "requantize",
    "quantize_multiplier",
    "linear_acc",
    "isqrt",
    "gelu",
    "gelu_constants",
    "exp2_neg",
    "softmax",
    "softmax_constants",
    "layernorm",
    "layernorm_constants",
    "residual_add",
    "residual_constants",
    "topk",
    "weighted_sum",
]


class QuantizationError(MoevitError, ValueError):
    """An integer unit got a value, constant or scale outside its range."""


INT8_MIN, INT8_MAX = -128, 127
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1

#: Requantization multipliers are unsigned 15-bit: ``1 <= M < 2**15``.
MULT_BITS = 15
#: Requantization shifts: ``1 <= S <= 47`` (acc*M + 2**(S-1) fits in s48).
SHIFT_MIN, SHIFT_MAX = 1, 47

#: Fraction bits of the base-2 exponent fed to ``exp2_neg`` (Q.15).
EXP_FRAC = 15
#: ``2**-v ~ 1 + a*v + b*v*v`` on ``0 <= v < 1`` (a + b = -1/2, so the
#: polynomial is continuous across integer exponents); max error 1.9e-3.
#: a = -0.67214, b = 0.17214, both in Q.15.
EXP_A = -22025
EXP_B = 5641
#: Probabilities are unsigned Q0.15: ``PROB_ONE = 2**15`` stands for 1.0.
PROB_FRAC = 15
PROB_ONE = 1 << PROB_FRAC
#: Softmax reciprocal: ``R = 2**40 // row_sum``.
SOFTMAX_RECIP_BITS = 40
#: LayerNorm: the variance is scaled by ``2**12`` before the square root
#: (sigma in Q.6), the reciprocal is ``2**36 // sigma`` and normalised values
#: are Q.12.
LN_VAR_SHIFT = 12
LN_RECIP_BITS = 36
LN_NORM_FRAC = 12
#: I-BERT's erf approximation ``erf(u) ~ sgn(u) * (1 + a*(min(|u|, -b) + b)**2)``
#: (Kim et al., "I-BERT: Integer-only BERT Quantization", ICML 2021, eq. 8).
GELU_ERF_A = -0.2888
GELU_ERF_B = -1.769

_MAX_ROW = 2**15
_MAX_LN_DIM = 2**10
_MAX_LINEAR_IN = 2**16


# Checks ---------------------------------------------------------------------
def _int_array(value, what):
    array = np.asarray(value)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise QuantizationError(f"{what} must hold integers, not {array.dtype}")
    return array.astype(np.int64, copy=False)


def _in_range(array, low, high, what, kind):
    if array.size:
        smallest, largest = int(array.min()), int(array.max())
        if smallest < low or largest > high:
            bad = smallest if smallest < low else largest
            raise QuantizationError(f"{what} must hold {kind} values in [{low}, {high}], not {bad}")
    return array


def _int8(value, what):
    return _in_range(_int_array(value, what), INT8_MIN, INT8_MAX, what, "int8")


def _int32(value, what):
    return _in_range(_int_array(value, what), INT32_MIN, INT32_MAX, what, "int32")


def _multiplier(value, what="Multiplier"):
    array = _int_array(value, what)
    return _in_range(array, 1, 2**MULT_BITS - 1, what, "unsigned 15-bit")


def _shift(value, what="Shift"):
    return _in_range(_int_array(value, what), SHIFT_MIN, SHIFT_MAX, what, "shift")


def _scale(value, what="Scale"):
    array = np.asarray(value, dtype=np.float64)
    bad = array[~(np.isfinite(array) & (array > 0))]
    if bad.size:
        raise QuantizationError(f"{what} must be positive and finite, not {float(bad.flat[0])!r}")
    return array


# Rounding and requantization ------------------------------------------------
def round_shift(value, shift):
    """``(value + 2**(shift-1)) >> shift``: divide by ``2**shift``, round half up.

    Integer in, integer out (int64); no range check (an internal step of the
    units below, with their own bounds).
    """
    value = np.asarray(value, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    return (value + (np.int64(1) << (shift - 1))) >> shift


def requantize(acc, multiplier, shift):
    """Scale an int32 accumulator to int8.

    ``y = clip8((acc * M + 2**(S-1)) >> S)``: the real factor ``M / 2**S``,
    rounding half up (ties go towards +inf: 2.5 -> 3, -2.5 -> -2), then
    saturation to [-128, 127].

    Parameters
    ----------
    acc : int array, values in int32
    multiplier : int or int array broadcasting against ``acc``
        (per output channel: shape ``(O,)`` against ``acc (..., O)``);
        ``1 <= M < 2**15`` (u15).
    shift : int or int array, like ``multiplier``; ``1 <= S <= 47``.

    Returns
    -------
    numpy.ndarray of int8

    Widths: ``|acc * M| < 2**31 * 2**15 = 2**46`` (s47); with the rounding
    constant ``2**(S-1) <= 2**46`` the sum fits s48. Exact by construction
    (no error beyond the stated rounding).
    """
    acc = _int32(acc, "Accumulator")
    multiplier = _multiplier(multiplier)
    shift = _shift(shift)
    scaled = round_shift(acc * multiplier, shift)
    return np.clip(scaled, INT8_MIN, INT8_MAX).astype(np.int8)


def quantize_multiplier(real):
    """Integer ``(M, S)`` with ``M / 2**S ~ real``, for :func:`requantize`.

    ``S = 14 - floor(log2(real))`` puts ``M = round(real * 2**S)`` in
    ``[2**14, 2**15)`` (15 significant bits, relative error <= 2**-15). Where
    ``S`` would exceed 47 (``real < 2**-33``) it stays at 47 and ``M`` has
    fewer bits. Vectorised: ``real`` may be an array (per channel).

    Raises
    ------
    QuantizationError
        If ``real`` is zero, negative or not finite, too large (``S < 1``),
        or so small that ``M`` rounds to 0.
    """
    real = _scale(real, "Scale ratio")
    shift = 14 - np.floor(np.log2(real)).astype(np.int64)
    shift = np.minimum(shift, SHIFT_MAX)
    mult = np.floor(real * np.exp2(shift.astype(np.float64)) + 0.5).astype(np.int64)
    # round() may carry to 2**15: halve it (and its shift) back into range.
    carry = mult >= 2**MULT_BITS
    mult = np.where(carry, mult >> 1, mult)
    shift = np.where(carry, shift - 1, shift)
    if np.any(shift < SHIFT_MIN):
        raise QuantizationError(
            f"Scale ratio {float(np.max(real))!r} is too large for a 15-bit multiplier "
            f"and a shift of at least {SHIFT_MIN}"
        )
    if np.any(mult < 1):
        raise QuantizationError(
            f"Scale ratio {float(np.min(real))!r} is too small for a 15-bit multiplier "
            f"and a shift of at most {SHIFT_MAX}"
        )
    return mult, shift


# Linear ---------------------------------------------------------------------
def _exact_matmul(a, b, bound):
    """``a @ b`` of integer arrays, exactly, through BLAS.

    ``bound`` bounds every partial sum's magnitude. Below ``2**24`` float32
    holds every partial sum exactly (whatever the order of additions or an
    FMA), below ``2**53`` float64 does; the integer result is then exact.
    """
    dtype = np.float32 if bound < 2**24 else np.float64
    if bound >= 2**53:
        raise QuantizationError(f"Integer product bound {bound} exceeds 2**53")
    return np.rint(a.astype(dtype) @ b.astype(dtype)).astype(np.int64)


def linear_acc(x, weight, bias=None):
    """int32 accumulator of a linear layer: ``acc[t,o] = sum_i x[t,i]*W[o,i] + b[o]``.

    ``x`` int8 ``(T, I)``, ``weight`` int8 ``(O, I)``, ``bias`` int32 ``(O,)``
    or None. Products are s15 (-128*-128 = 2**14), the sum of ``I <= 2**16``
    of them s31 at most; with the bias the result must fit int32 (checked).
    Exact: see ``_exact_matmul``.
    """
    x = _int8(x, "Linear input")
    weight = _int8(weight, "Linear weight")
    if x.shape[-1] != weight.shape[-1]:
        raise QuantizationError(
            f"Linear input width {x.shape[-1]} does not match weight width {weight.shape[-1]}"
        )
    if weight.shape[-1] > _MAX_LINEAR_IN:
        raise QuantizationError(f"Linear input width must be at most {_MAX_LINEAR_IN}, not {weight.shape[-1]}")
    acc = _exact_matmul(x, weight.T, int(np.abs(x).max(initial=0)) * int(np.abs(weight).sum(axis=-1).max(initial=0)))
    if bias is not None:
        acc = acc + _int32(bias, "Linear bias")
    return _int32(acc, "Linear accumulator")


# Integer square root ----------------------------------------------------------
_ISQRT_BITS = 48


def isqrt(n):
    """Floor integer square root of u48 values, exactly ``math.isqrt``.

    The bit-serial (digit-by-digit, restoring) algorithm the hardware runs,
    24 iterations, one result bit each::

        rem = n; root = 0; bit = 1 << 46
        repeat 24 times:
            if rem >= root + bit: rem -= root + bit; root = (root >> 1) + bit
            else:                 root >>= 1
            bit >>= 2
        return root            # u24

    ``rem``, ``root + bit`` stay below ``2**48``.
    """
    n = _in_range(_int_array(n, "Square root input"), 0, 2**_ISQRT_BITS - 1, "Square root input", "u48")
    rem = n.copy()
    root = np.zeros_like(n)
    bit = np.int64(1) << (_ISQRT_BITS - 2)
    while bit:
        trial = root + bit
        take = rem >= trial
        rem = np.where(take, rem - trial, rem)
        root = np.where(take, (root >> 1) + bit, root >> 1)
        bit >>= 2
    return root


# GELU -----------------------------------------------------------------------
def gelu(q, b, c):
    """Integer GELU of int8 input (I-BERT's i-GELU, sign cases written out).

    With ``t = b - min(|q|, b)``::

        y = q * (2*c - t*t)   if q >= 0
        y = q * (t*t)         if q < 0

    and ``y * S / (2*c) ~ gelu(q * S)`` for the input scale ``S`` that
    ``gelu_constants(S)`` turned into ``b`` and ``c``. The output scale is
    therefore ``S / (2*c)``; a :func:`requantize` brings ``y`` back to int8.

    Derivation: GELU(x) = x/2 (1 + erf(x/sqrt2)); I-BERT's
    ``erf(u) ~ sgn(u) (1 - 0.2888 (min(|u|, 1.769) - 1.769)**2)``; with
    ``u = q S / sqrt2``, ``b = round(1.769 sqrt2 / S)``, ``c = round(2 / (0.2888 S**2))``
    one has ``c * erf ~ sgn(q) (c - t**2)`` and ``1 ~ c / c``.

    Parameters
    ----------
    q : int array, int8 values.
    b : int, ``1 <= b < 2**12`` (u12).
    c : int, ``1 <= c < 2**22`` (u22), and ``2*c >= b*b``.

    Returns
    -------
    numpy.ndarray of int32 (|y| < 2**30).

    Widths: ``t`` u12, ``t*t`` u24, ``2c - t*t`` u23, ``y`` s31.
    Error (measured over every int8 input for scales 2**-8..2**-1, see tests):
    ``|y*S/(2c) - gelu(q*S)| <= 0.0185 + 0.1*S`` (the polynomial's 0.0183,
    I-BERT reports 1.8e-2, plus the rounding of ``b`` to whole input steps).
    """
    q = _int8(q, "GELU input")
    b = int(_in_range(_int_array(b, "GELU constant b"), 1, 2**12 - 1, "GELU constant b", "u12"))
    c = int(_in_range(_int_array(c, "GELU constant c"), 1, 2**22 - 1, "GELU constant c", "u22"))
    if 2 * c < b * b:
        raise QuantizationError(f"GELU constants need 2*c >= b*b, not c={c}, b={b}")
    t = b - np.minimum(np.abs(q), b)
    t2 = t * t
    return np.where(q >= 0, q * (2 * c - t2), q * t2).astype(np.int32)


def gelu_constants(scale):
    """``(b, c)`` of :func:`gelu` for the int8 input scale ``scale``.

    Needs ``scale > ~1.3e-3`` (so that ``c < 2**22``). The output scale of
    :func:`gelu` is ``scale / (2*c)``.
    """
    scale = float(_scale(scale, "GELU input scale"))
    b = max(1, int(math.floor(-GELU_ERF_B * math.sqrt(2.0) / scale + 0.5)))
    c = int(math.floor(2.0 / (-GELU_ERF_A * scale * scale) + 0.5))
    if b >= 2**12 or c >= 2**22:
        raise QuantizationError(
            f"GELU input scale {scale!r} is too small; its constants need c={c} < 2**22"
        )
    return b, max(c, (b * b + 1) // 2)


# Softmax --------------------------------------------------------------------
def exp2_neg(x):
    """``2**(x / 2**15)`` in Q0.15 for non-positive Q.15 exponents ``x``.

    With ``z = (-x) >> 15`` (integer part) and ``r = (-x) & 0x7fff``
    (fraction, ``v = r / 2**15``)::

        p = 2**15 + ((r * (EXP_A + ((EXP_B * r) >> 15))) >> 15)   # 2**-v, Q0.15
        e = p >> min(z, 16)

    ``e`` is u16 in ``[0, 2**15]``; ``e = 2**15`` exactly at ``x = 0``.
    Widths: ``EXP_B * r`` s29, ``r * (...)`` s31. Error (measured): ``p``
    within 2.0e-3 of ``2**15 * 2**-v`` / ``2**15`` (polynomial 1.9e-3 plus two
    floors), so ``|e / 2**15 - 2**x| <= 2e-3 * 2**-z + 2**-15``.
    """
    x = _int_array(x, "Exponent")
    if x.size and int(x.max()) > 0:
        raise QuantizationError(f"Exponent must be at most 0, not {int(x.max())}")
    neg = -x
    z = np.minimum(neg >> EXP_FRAC, 16)
    r = neg & ((1 << EXP_FRAC) - 1)
    p = (1 << EXP_FRAC) + ((r * (EXP_A + ((EXP_B * r) >> EXP_FRAC))) >> EXP_FRAC)
    return p >> z


def softmax(scores, multiplier, shift):
    """Integer softmax along the last axis; probabilities in Q0.15.

    For each row of int32 scores ``s`` (real value ``s * S_s``) with the
    constants ``(M, S) = softmax_constants(S_s)``, i.e.
    ``M / 2**S ~ S_s * log2(e) * 2**15``::

        d = max(s - max(s), -2**31)                 # s33 -> s32, <= 0
        x = (d * M + 2**(S-1)) >> S                 # log2-domain exponent, Q.15, <= 0
        e = exp2_neg(x)                             # u16 in [0, 2**15]
        total = sum(e)                              # u31 (N <= 2**15), >= 2**15
        R = 2**40 // total                          # the one division per row, u26
        p = (e * R + 2**24) >> 25                   # u16 in [0, 2**15]

    Parameters
    ----------
    scores : int array ``(..., N)``, int32 values, ``1 <= N <= 2**15``.
    multiplier, shift : int, the row's constants (u15 and 1..47).

    Returns
    -------
    numpy.ndarray of int32, values in ``[0, 2**15]`` (Q0.15: ``p / 2**15``).

    Error (measured, see tests): ``|p / 2**15 - softmax| <= 3e-3`` for each
    entry, and every row sums to ``2**15`` within ``N // 2 + 2``.
    Widths: ``d * M`` s47, ``e * R`` u41.
    """
    scores = _int32(scores, "Softmax scores")
    multiplier = int(_multiplier(multiplier))
    shift = int(_shift(shift))
    if scores.ndim == 0 or not 1 <= scores.shape[-1] <= _MAX_ROW:
        raise QuantizationError(
            f"Softmax row length must be in [1, {_MAX_ROW}], not {scores.shape[-1] if scores.ndim else 0}"
        )
    d = np.maximum(scores - scores.max(axis=-1, keepdims=True), INT32_MIN)
    e = exp2_neg(round_shift(d * multiplier, shift))
    recip = (np.int64(1) << SOFTMAX_RECIP_BITS) // e.sum(axis=-1, keepdims=True)
    return round_shift(e * recip, SOFTMAX_RECIP_BITS - PROB_FRAC).astype(np.int32)


def softmax_constants(score_scale):
    """``(M, S)`` of :func:`softmax` for scores whose real value is ``s * score_scale``."""
    score_scale = float(_scale(score_scale, "Softmax score scale"))
    mult, shift = quantize_multiplier(score_scale * math.log2(math.e) * 2**EXP_FRAC)
    return int(mult), int(shift)


# LayerNorm ------------------------------------------------------------------
def layernorm(x, eps, gamma, beta, shift):
    """Integer LayerNorm of int8 rows (last axis, width ``D <= 2**10``).

    ::

        s1 = sum(x)                                  # s18
        s2 = sum(x*x)                                # u25
        v = D*s2 - s1*s1                             # u35: D**2 * variance
        sigma = max(isqrt((v + eps) << 12), 1)       # u24: D * std in Q.6
        R = 2**36 // sigma                           # the one division per row, u37
        c_i = D*x_i - s1                             # s19: D * (x_i - mean)
        n_i = (c_i * R + 2**17) >> 18                # s19: (x_i-mean)/std in Q.12
        y_i = clip8((n_i * gamma_i + beta_i + 2**(shift-1)) >> shift)

    ``64 * c_i / sigma`` is the normalised value, at most ``sqrt(D-1)`` in
    magnitude, so ``|c_i * R|`` is about ``2**30 sqrt(D) <= 2**35``: at most
    ``2**35 (1 + 2**-22)`` by the square root's floor, and that only on rows of one
    value apart from the rest (``c_i**2 = (D-1) v``; any other row is below by far
    more), whose every case (D <= 1024, the two values 1 to 255 apart) gives at
    most ``2**35 - 32`` (one 1 among 1,023 zeros, R's floor): s36, the 36 bits
    the LayerNorm unit holds it in. So ``|n_i| <= 2**17``, which it reaches: one 1
    among 1,023 zeros gives ``n = 2**17`` (s19; ``tests/test_model_intops.py``).
    ``(v + eps) << 12`` is below ``2**47``. ``n_i * gamma_i`` is s33, plus
    ``beta_i``: s42.

    Parameters
    ----------
    x : int array ``(..., D)``, int8 values.
    eps : int, ``0 <= eps < 2**34``: ``round(epsilon * D**2 / S_x**2)``.
    gamma : int array ``(D,)``, signed, ``|gamma_i| < 2**15`` (s16).
    beta : int array ``(D,)``, ``|beta_i| < 2**40`` (s41).
    shift : int, 1..47 (one per tensor).

    Returns
    -------
    numpy.ndarray of int8.

    Error (see tests): the normalised value ``n / 2**12`` has a relative
    error below ``1 / (64 sqrt(v)) + 2**-12 + 0.25 / v`` (square root floor,
    reciprocal floor, epsilon rounded to an integer) plus ``2**-13``
    absolute; the int8 output is within half a step of
    the float LayerNorm of the same int8 input (with the gamma and beta the
    integers stand for) plus that error times ``|gamma| / S_out``.
    ``layernorm_constants`` keeps gamma to 2**-14 of the largest |gamma|.
    """
    x = _int8(x, "LayerNorm input")
    dim = x.shape[-1] if x.ndim else 0
    if not 1 <= dim <= _MAX_LN_DIM:
        raise QuantizationError(f"LayerNorm width must be in [1, {_MAX_LN_DIM}], not {dim}")
    eps = int(_in_range(_int_array(eps, "LayerNorm eps"), 0, 2**34 - 1, "LayerNorm eps", "u34"))
    gamma = _in_range(_int_array(gamma, "LayerNorm gamma"), -(2**15) + 1, 2**15 - 1, "LayerNorm gamma", "s16")
    beta = _in_range(_int_array(beta, "LayerNorm beta"), -(2**40) + 1, 2**40 - 1, "LayerNorm beta", "s41")
    shift = int(_shift(shift))
    if gamma.shape != (dim,) or beta.shape != (dim,):
        raise QuantizationError(
            f"LayerNorm gamma and beta must have shape ({dim},), not {gamma.shape} and {beta.shape}"
        )
    s1 = x.sum(axis=-1, keepdims=True)
    s2 = (x * x).sum(axis=-1, keepdims=True)
    sigma = np.maximum(isqrt((dim * s2 - s1 * s1 + eps) << LN_VAR_SHIFT), 1)
    recip = (np.int64(1) << LN_RECIP_BITS) // sigma
    n = round_shift((dim * x - s1) * recip, LN_RECIP_BITS - LN_VAR_SHIFT // 2 - LN_NORM_FRAC)
    y = round_shift(n * gamma + beta, shift)
    return np.clip(y, INT8_MIN, INT8_MAX).astype(np.int8)


def layernorm_constants(in_scale, gamma, beta, out_scale, epsilon):
    """``(eps, gamma, beta, shift)`` of :func:`layernorm` from float parameters.

    ``gamma_i / (out_scale * 2**12)`` becomes ``gamma_int_i / 2**shift`` with
    the largest ``|gamma_int|`` in ``[2**14, 2**15)``; ``beta_int_i =
    round(beta_i / out_scale * 2**shift)`` (clipped to s41, far beyond
    saturation).
    """
    in_scale = float(_scale(in_scale, "LayerNorm input scale"))
    out_scale = float(_scale(out_scale, "LayerNorm output scale"))
    gamma = np.asarray(gamma, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    dim = gamma.shape[-1]
    eps = min(int(math.floor(epsilon * dim * dim / in_scale**2 + 0.5)), 2**34 - 1)
    real = gamma / (out_scale * 2**LN_NORM_FRAC)
    largest = float(np.max(np.abs(real))) if real.size else 0.0
    if largest > 0:
        _, shift = quantize_multiplier(largest)
        shift = int(shift)
    else:
        shift = SHIFT_MAX
    gamma_int = np.floor(real * 2.0**shift + 0.5).astype(np.int64)
    gamma_int = np.clip(gamma_int, -(2**15) + 1, 2**15 - 1)
    beta_int = np.floor(beta / out_scale * 2.0**shift + 0.5)
    beta_int = np.clip(beta_int, -(2**40) + 1, 2**40 - 1).astype(np.int64)
    return eps, gamma_int, beta_int, shift


# Residual add ---------------------------------------------------------------
def residual_add(a, b, mult_a, mult_b, shift):
    """``y = clip8((a * Ma + b * Mb + 2**(S-1)) >> S)`` for int8 ``a`` and ``b``.

    Brings two int8 tensors of scales ``S_a`` and ``S_b`` to the output
    scale ``S_y``: ``Ma / 2**S ~ S_a / S_y`` and ``Mb / 2**S ~ S_b / S_y``
    (:func:`residual_constants`). ``Ma``, ``Mb`` u15, ``S`` 1..47; the sum is
    s24. Error: exact rounding of the integer sum (half a step) plus the
    multipliers' 2**-15 relative error.
    """
    a = _int8(a, "Residual input a")
    b = _int8(b, "Residual input b")
    mult_a = int(_multiplier(mult_a, "Residual multiplier a"))
    mult_b = int(_multiplier(mult_b, "Residual multiplier b"))
    shift = int(_shift(shift))
    y = round_shift(a * mult_a + b * mult_b, shift)
    return np.clip(y, INT8_MIN, INT8_MAX).astype(np.int8)


def residual_constants(scale_a, scale_b, scale_out):
    """``(Ma, Mb, S)`` of :func:`residual_add`; a multiplier that would round
    to 0 (a ratio below 2**-48 of the other) is kept at 1."""
    scale_a, scale_b, scale_out = (
        float(_scale(s, "Residual scale")) for s in (scale_a, scale_b, scale_out)
    )
    ratio_a, ratio_b = scale_a / scale_out, scale_b / scale_out
    _, shift = quantize_multiplier(max(ratio_a, ratio_b))
    shift = int(shift)
    mult_a = max(1, int(math.floor(ratio_a * 2.0**shift + 0.5)))
    mult_b = max(1, int(math.floor(ratio_b * 2.0**shift + 0.5)))
    return min(mult_a, 2**MULT_BITS - 1), min(mult_b, 2**MULT_BITS - 1), shift


# Gating ---------------------------------------------------------------------
def topk(logits, k):
    """Indices of the ``k`` largest integer logits per row, best first.

    Ties go to the lowest expert index (a stable sort of the negated
    logits). ``logits`` ``(T, E)`` integers; returns ``(T, k)`` int64
    indices, the hardware's comparison order: larger value first, and at
    equal values the smaller index first.
    """
    logits = _int_array(logits, "Gate logits")
    experts = logits.shape[-1] if logits.ndim else 0
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= experts:
        raise QuantizationError(f"Top-k must be an integer in [1, {experts}], not {k!r}")
    return np.argsort(-logits, axis=-1, kind="stable")[..., :k]


def weighted_sum(weights, values):
    """``acc = weights @ values`` (numpy ``matmul``): Q0.15 weights times int8 values.

    Attention: ``weights`` ``(T, N)`` probabilities, ``values`` ``(N, C)`` (V),
    ``acc[t, c] = sum_j w[t, j] * v[j, c]``. MoE combine: ``weights``
    ``(T, 1, k)`` gate weights, ``values`` ``(T, k, C)`` the selected experts'
    outputs of each token. Weights lie in ``[0, 2**15]``; products are s24;
    since a row of weights sums to about ``2**15``,
    ``|acc| <= 128 * (2**15 + N) < 2**31``: an int32 accumulator.
    """
    weights = _in_range(_int_array(weights, "Weights"), 0, PROB_ONE, "Weights", "Q0.15")
    values = _int8(values, "Weighted values")
    bound = int(weights.sum(axis=-1).max(initial=0)) * int(np.abs(values).max(initial=0))
    return _exact_matmul(weights, values, bound)
