// moevit HLS kernels: the integer LayerNorm (intops.layernorm) of one row, on streams.
//
// CONFIG_T provides:  static const unsigned max_dim;  // the widest row, <= 2**10
#ifndef MOEVIT_LAYERNORM_H
#define MOEVIT_LAYERNORM_H

#include "hls_stream.h"
#include "moevit_types.h"

namespace moevit {

typedef ap_int<16> gamma_t;  // s16
typedef ap_int<41> beta_t;   // s41
typedef ap_uint<34> eps_t;   // u34

// Reads `dim` int8 values from `in`, writes the normalised row to `out`:
//   s1 = sum(x);  s2 = sum(x*x);  sigma = max(isqrt((dim*s2 - s1*s1 + eps) << 12), 1)
//   R = 2**36 // sigma;  n_i = round_shift((dim*x_i - s1) * R, 18)
//   y_i = clip8(round_shift(n_i*gamma_i + beta_i, shift))
template <class CONFIG_T>
void layernorm(hls::stream<act_t> &in, hls::stream<act_t> &out, unsigned dim, eps_t eps,
               const gamma_t gamma[CONFIG_T::max_dim], const beta_t beta[CONFIG_T::max_dim],
               shift_t shift) {
    static_assert(CONFIG_T::max_dim <= 1024, "the row sums are sized for rows of at most 2**10");
    act_t row[CONFIG_T::max_dim];
    ap_int<18> s1 = 0;   // |sum| <= 2**10 * 128
    ap_uint<25> s2 = 0;  // sum of squares <= 2**10 * 2**14
layernorm_read:
    for (unsigned i = 0; i < dim; i++) {
#pragma HLS pipeline II=1
        act_t x = in.read();
        row[i] = x;
        s1 += x;
        s2 += ap_uint<15>(x * x);
    }
    ap_uint<35> v = ap_int<40>(dim * s2) - ap_int<40>(s1 * s1);  // dim**2 * variance
    ap_uint<24> sigma = isqrt(ap_uint<48>(v + eps) << LN_VAR_SHIFT);
    if (sigma == 0) sigma = 1;
    ap_uint<37> recip = (ap_uint<37>(1) << LN_RECIP_BITS) / sigma;
layernorm_emit:
    for (unsigned i = 0; i < dim; i++) {
#pragma HLS pipeline II=1
        ap_int<19> centred = ap_int<19>(dim * row[i]) - s1;  // dim * (x_i - mean)
        wide_t scaled = centred * recip;                      // |.| <= 2**35 (intops)
        ap_int<18> n = round_shift(scaled, LN_RECIP_BITS - LN_VAR_SHIFT / 2 - LN_NORM_FRAC);
        wide_t affine = n * gamma[i] + beta[i];               // s42
        out.write(clip8(round_shift(affine, shift)));
    }
}

}  // namespace moevit

#endif
