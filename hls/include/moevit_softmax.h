// moevit HLS kernels: the integer softmax (intops.softmax) of one row, on streams.
//
// CONFIG_T provides:  static const unsigned max_row;  // the longest row, <= 2**15
#ifndef MOEVIT_SOFTMAX_H
#define MOEVIT_SOFTMAX_H

#include "hls_stream.h"
#include "moevit_types.h"

namespace moevit {

// Reads n scores from `in`, writes their n Q0.15 probabilities to `out`:
//   d = max(s - max(s), -2**31);  x = round_shift(d*M, S);  e = exp2_neg(x)
//   R = 2**40 // sum(e);          p = (e*R + 2**24) >> 25
// Three passes over one row buffer (maximum; exponentials and their sum;
// normalise) and one division per row.
template <class CONFIG_T>
void softmax(hls::stream<score_t> &in, hls::stream<prob_t> &out, unsigned n, mult_t mult,
             shift_t shift) {
    static_assert(CONFIG_T::max_row <= (1u << 15), "the row sum is u31: rows of at most 2**15");
    score_t row[CONFIG_T::max_row];
    prob_t e[CONFIG_T::max_row];
    score_t top = 0;
softmax_read:
    for (unsigned i = 0; i < n; i++) {
#pragma HLS pipeline II=1
        score_t s = in.read();
        row[i] = s;
        if (i == 0 || s > top) top = s;
    }
    ap_uint<31> total = 0;  // n <= 2**15 values of at most 2**15
softmax_exp:
    for (unsigned i = 0; i < n; i++) {
#pragma HLS pipeline II=1
        ap_int<33> d = row[i] - top;
        if (d < -(ap_int<33>(1) << 31)) d = -(ap_int<33>(1) << 31);
        wide_t x = round_shift(d * mult, shift);  // d*M is s47
        e[i] = exp2_neg(x);
        total += e[i];
    }
    ap_uint<26> recip = (ap_uint<41>(1) << SOFTMAX_RECIP_BITS) / total;  // total >= 2**15
softmax_emit:
    for (unsigned i = 0; i < n; i++) {
#pragma HLS pipeline II=1
        wide_t scaled = e[i] * recip;  // u41
        out.write(prob_t(round_shift(scaled, SOFTMAX_RECIP_BITS - PROB_FRAC)));
    }
}

}  // namespace moevit

#endif
