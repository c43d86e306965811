// moevit HLS kernels: integer types and the steps every kernel shares.
//
// Each function here is one formula of moevit.model.integer.intops (the golden
// model, the specification), written with the widths its docstrings state, so
// that a width too narrow shows up as a mismatch in C simulation rather than
// hiding until synthesis. No intermediate exceeds 48 signed bits: one DSP48E2.
#ifndef MOEVIT_TYPES_H
#define MOEVIT_TYPES_H

#include "ap_int.h"

namespace moevit {

typedef ap_int<8> act_t;      // an int8 activation or weight
typedef ap_int<32> acc_t;     // an int32 accumulator or bias
typedef ap_uint<15> mult_t;   // requantization multiplier, 1 .. 2**15-1
typedef ap_uint<6> shift_t;   // requantization shift, 1 .. 47
typedef ap_int<48> wide_t;    // the widest intermediate, s48
typedef ap_int<32> score_t;   // a softmax input (attention score, gate logit)
typedef ap_uint<16> prob_t;   // Q0.15 probability in [0, 2**15]
typedef ap_uint<8> expert_t;  // an expert index (the MoE descriptor's 8-bit field)
typedef ap_uint<16> token_t;  // a token index (the descriptors' 16-bit fields)

// Constants of intops (same names).
static const int EXP_FRAC = 15;
static const int EXP_A = -22025;  // 2**-v ~ 1 + a*v + b*v*v, Q.15
static const int EXP_B = 5641;
static const int PROB_FRAC = 15;
static const int SOFTMAX_RECIP_BITS = 40;
static const int LN_VAR_SHIFT = 12;
static const int LN_RECIP_BITS = 36;
static const int LN_NORM_FRAC = 12;

// (v + 2**(s-1)) >> s: divide by 2**s, rounding half up (-2.5 -> -2).
// The callers keep v + 2**(s-1) within s48, as intops' widths guarantee.
inline wide_t round_shift(wide_t v, shift_t s) {
#pragma HLS inline
    wide_t half = wide_t(1) << (unsigned(s) - 1);
    return (v + half) >> unsigned(s);
}

// Two int8 factors packed for one 27x18 multiply by a shared int8 (AMD WP486): the
// high one 18 bits up (16 for the low product, two guard bits). The linear kernel's
// weight pairs and the attention's key pairs (the RTL's pack_pair).
static const unsigned PAIR_SHIFT = 18;

inline ap_int<27> pack_pair(act_t lo, act_t hi) {
#pragma HLS inline
    return (ap_int<27>(hi) << PAIR_SHIFT) + lo;
}

// One packed product a * (hi * 2**18 + lo) split into a*lo and a*hi: a*lo is the low
// field sign-extended (|a*lo| <= 2**14 fits it), a*hi what is left, which the low
// field's sign borrowed from (the RTL's unpack_product).
inline void unpack_product(ap_int<35> p, ap_int<16> &lo, ap_int<16> &hi) {
#pragma HLS inline
    ap_int<PAIR_SHIFT> low = p.range(PAIR_SHIFT - 1, 0);
    lo = low;
    hi = (p - low) >> PAIR_SHIFT;
}

// Saturate to int8.
inline act_t clip8(wide_t v) {
#pragma HLS inline
    return v > 127 ? act_t(127) : v < -128 ? act_t(-128) : act_t(v);
}

// intops.requantize: clip8((acc*M + 2**(S-1)) >> S); acc*M is s47.
inline act_t requantize(acc_t acc, mult_t mult, shift_t shift) {
#pragma HLS inline
    wide_t scaled = acc * mult;
    return clip8(round_shift(scaled, shift));
}

// intops.residual_add: clip8((a*Ma + b*Mb + 2**(S-1)) >> S); the sum is s24.
inline act_t residual_add(act_t a, act_t b, mult_t mult_a, mult_t mult_b, shift_t shift) {
#pragma HLS inline
    ap_int<24> sum = a * mult_a + b * mult_b;
    return clip8(round_shift(sum, shift));
}

// intops.exp2_neg: 2**(x / 2**15) in Q0.15 for x <= 0 (x is s48).
inline prob_t exp2_neg(wide_t x) {
#pragma HLS inline
    ap_uint<47> neg = -x;
    ap_uint<32> whole = neg >> EXP_FRAC;
    ap_uint<5> z = whole > 16 ? ap_uint<32>(16) : whole;
    ap_uint<15> r = neg(EXP_FRAC - 1, 0);
    ap_int<29> br = ap_int<16>(EXP_B) * r;                  // s29
    ap_int<17> inner = ap_int<17>(EXP_A) + (br >> EXP_FRAC); // s16
    ap_int<32> rp = r * inner;                              // s31
    ap_uint<16> p = ap_int<33>(1 << EXP_FRAC) + (rp >> EXP_FRAC);  // 2**-v, Q0.15
    return p >> z;
}

// intops.isqrt: floor square root of a u48, bit-serial (24 steps, one result bit each).
inline ap_uint<24> isqrt(ap_uint<48> n) {
    ap_uint<48> rem = n;
    ap_uint<48> root = 0;
    ap_uint<48> bit = ap_uint<48>(1) << 46;
isqrt_steps:
    for (int step = 0; step < 24; step++) {
#pragma HLS pipeline II=1
        ap_uint<48> trial = root + bit;
        if (rem >= trial) {
            rem -= trial;
            root = (root >> 1) + bit;
        } else {
            root >>= 1;
        }
        bit >>= 2;
    }
    return root;
}

}  // namespace moevit

#endif
