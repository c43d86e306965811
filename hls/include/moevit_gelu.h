// moevit HLS kernels: the integer GELU (intops.gelu, I-BERT's i-GELU) and its requantization.
#ifndef MOEVIT_GELU_H
#define MOEVIT_GELU_H

#include "moevit_types.h"

namespace moevit {

typedef ap_uint<12> gelu_b_t;  // u12
typedef ap_uint<22> gelu_c_t;  // u22, with 2*c >= b*b

// A fused GELU's constants: gelu (b, c), then requantize (mult, shift).
struct gelu_consts {
    gelu_b_t b;
    gelu_c_t c;
    mult_t mult;
    shift_t shift;
};

// With t = b - min(|q|, b):  y = q*(2c - t*t) if q >= 0, else q*(t*t).  y is s31.
inline acc_t gelu(act_t q, gelu_b_t b, gelu_c_t c) {
#pragma HLS inline
    ap_uint<8> mag = q < 0 ? ap_uint<8>(-q) : ap_uint<8>(q);  // |-128| = 128 fits u8
    ap_uint<12> t = b - (mag < b ? ap_uint<12>(mag) : b);
    ap_uint<24> t2 = t * t;
    ap_uint<23> factor = q >= 0 ? ap_uint<23>((ap_uint<23>(c) << 1) - t2) : ap_uint<23>(t2);
    return q * factor;
}

// The int8 GELU of a linear layer's output: requantize(gelu(q)).
inline act_t gelu_requantize(act_t q, const gelu_consts &g) {
#pragma HLS inline
    return requantize(gelu(q, g.b, g.c), g.mult, g.shift);
}

}  // namespace moevit

#endif
