// moevit HLS kernels: the reusable linear kernel,
//   y = post(requantize(x @ W.T + b, M, S))
// with post the optional fused integer GELU (and its requantization), then the
// optional residual add of a skip tensor (intops.linear_acc, requantize, gelu,
// residual_add). One rows x cols array of multiply-accumulate units serves
// every linear layer; the shape comes at run time with the descriptor.
//
// Tiling, as the RTL kernel (hw/units/linear.py): output-stationary, out tile
// outermost; a tile of `rows` tokens by `cols` output channels takes one step
// per cycle (rows*cols*chain_depth MACs), then drains through
// `post_lanes` lanes of post-processing. The padding rows and columns of a
// ragged last tile are computed and never written.
//
// As the RTL's HwConfig options: with dsp_packing 2 the columns 2j and 2j+1 share
// one 27x18 multiply a row (AMD WP486: the pair's weights packed w_hi * 2**18 +
// w_lo against the shared activation); with chain_depth D a step takes D input
// features, their products summed down a DSP48E2 cascade (48 bits), so a tile
// takes ceil(in_features / D) steps. A packed chain starts from 2**17 so that
// its low field, the sum of at most 7 low products, never borrows from the high
// one (hw/units/linear.py: unpack_pair).
//
// CONFIG_T provides:
//   static const unsigned rows, cols;        // the MAC array
//   static const unsigned max_tokens, max_in; // the input buffer
//   static const unsigned post_lanes;        // post-processing lanes, divides cols
//   static const unsigned acc_width;         // accumulator bits, <= 32
//   static const unsigned dsp_packing;       // int8 MACs a multiplier: 1, or 2 (cols even)
//   static const unsigned chain_depth;       // multipliers a position: 1 .. 8 (7 packed)
#ifndef MOEVIT_LINEAR_H
#define MOEVIT_LINEAR_H

#include "moevit_gelu.h"
#include "moevit_types.h"

namespace moevit {

// The fields of the LINEAR descriptor (moevit.hw.program.descriptor.LinearDescriptor)
// that the kernel computes with: the shape and the per-tensor constants.
struct linear_desc {
    unsigned tokens, in_features, out_features;
    bool gelu, residual;
    gelu_consts gelu_k;
    mult_t res_mult_y, res_mult_skip;
    shift_t res_shift;
};

// The per-channel constants of requantize.
struct chan_t {
    acc_t bias;
    mult_t mult;
    shift_t shift;
};

typedef ap_int<48> chain_t;  // a chain's sum: the DSP48E2's P and its cascade

// Post-processing of one accumulator: bias, requantize, GELU, residual add.
template <class CONFIG_T>
act_t linear_post(ap_int<CONFIG_T::acc_width> acc, const chan_t &chan, const linear_desc &d,
                  act_t skip) {
#pragma HLS inline
    act_t y = requantize(acc_t(acc + chan.bias), chan.mult, chan.shift);
    if (d.gelu) y = gelu_requantize(y, d.gelu_k);
    if (d.residual) y = residual_add(y, skip, d.res_mult_y, d.res_mult_skip, d.res_shift);
    return y;
}

// x: tokens x in_features; w: out_features x in_features; chan: out_features;
// skip (when d.residual) and y: tokens x out_features; all row-major.
template <class CONFIG_T>
void linear(const linear_desc &d, const act_t *x, const act_t *w, const chan_t *chan,
            const act_t *skip, act_t *y) {
    static const unsigned R = CONFIG_T::rows, C = CONFIG_T::cols, D = CONFIG_T::chain_depth;
    static const bool packed = CONFIG_T::dsp_packing == 2;
    static_assert(C % CONFIG_T::post_lanes == 0, "post_lanes must divide cols");
    static_assert(CONFIG_T::dsp_packing == 1 || (packed && C % 2 == 0),
                  "dsp_packing is 1, or 2 with an even number of cols");
    static_assert(D >= 1 && D <= (packed ? 7 : 8), "a chain holds 1 to 8 (packed: 7) links");
    static_assert(CONFIG_T::acc_width <= 32, "the accumulator is at most the int32 of intops");
    typedef ap_int<CONFIG_T::acc_width> sum_t;

    // The buffers' features, whole steps of D (a last step's extra features read zeros).
    static const unsigned IN = (CONFIG_T::max_in + D - 1) / D * D;
    // The whole input of the operation, `rows` tokens per word.
    static act_t xbuf[CONFIG_T::max_tokens][IN];
#pragma HLS array_partition variable=xbuf cyclic factor=CONFIG_T::rows dim=1
#pragma HLS array_partition variable=xbuf cyclic factor=CONFIG_T::chain_depth dim=2
    // One out tile's weights and channel constants.
    static act_t wbuf[IN][CONFIG_T::cols];
#pragma HLS array_partition variable=wbuf cyclic factor=CONFIG_T::chain_depth dim=1
#pragma HLS array_partition variable=wbuf complete dim=2
    chan_t cbuf[CONFIG_T::cols];
#pragma HLS array_partition variable=cbuf complete
    sum_t acc[CONFIG_T::rows][CONFIG_T::cols];
#pragma HLS array_partition variable=acc complete dim=0

    const unsigned n_in = d.in_features;
    const unsigned token_tiles = (d.tokens + R - 1) / R;
    const unsigned out_tiles = (d.out_features + C - 1) / C;

linear_load_x:
    for (unsigned t = 0; t < token_tiles * R; t++) {
        for (unsigned i = 0; i < n_in; i++) {
#pragma HLS pipeline II=1
            xbuf[t][i] = t < d.tokens ? x[t * n_in + i] : act_t(0);
        }
    }
linear_out_tiles:
    for (unsigned ot = 0; ot < out_tiles; ot++) {
    linear_load_w:
        for (unsigned i = 0; i < n_in; i++) {
#pragma HLS pipeline II=1
            for (unsigned c = 0; c < C; c++) {
                unsigned o = ot * C + c;
                wbuf[i][c] = o < d.out_features ? w[o * n_in + i] : act_t(0);
            }
        }
    linear_load_chan:
        for (unsigned c = 0; c < C; c++) {
            unsigned o = ot * C + c;
            if (o < d.out_features) cbuf[c] = chan[o];
        }
    linear_token_tiles:
        for (unsigned tt = 0; tt < token_tiles; tt++) {
        linear_steps:
            for (unsigned i = 0; i < n_in; i += D) {
#pragma HLS pipeline II=1
                for (unsigned r = 0; r < R; r++) {
                    // A step's D features; one past in_features multiplies zero.
                    act_t a[D];
                    for (unsigned b = 0; b < D; b++)
                        a[b] = i + b < n_in ? xbuf[tt * R + r][i + b] : act_t(0);
                    for (unsigned c = 0; c < C; c += CONFIG_T::dsp_packing) {
                        sum_t lo, hi = 0;
                        if (packed) {
                            chain_t p = chain_t(1) << (PAIR_SHIFT - 1);
                            for (unsigned b = 0; b < D; b++)
                                p += a[b] * pack_pair(wbuf[i + b][c], wbuf[i + b][c + 1]);
                            lo = ap_int<19>(ap_uint<18>(p.range(PAIR_SHIFT - 1, 0))) -
                                 (1 << (PAIR_SHIFT - 1));
                            hi = ap_int<30>(p.range(47, PAIR_SHIFT));
                        } else {
                            chain_t p = 0;
                            for (unsigned b = 0; b < D; b++) p += a[b] * wbuf[i + b][c];
                            lo = p;
                        }
                        acc[r][c] = (i == 0 ? sum_t(0) : acc[r][c]) + lo;
                        if (packed) acc[r][c + 1] = (i == 0 ? sum_t(0) : acc[r][c + 1]) + hi;
                    }
                }
            }
        linear_drain:
            for (unsigned k = 0; k < R * C / CONFIG_T::post_lanes; k++) {
#pragma HLS pipeline II=1
                for (unsigned lane = 0; lane < CONFIG_T::post_lanes; lane++) {
                    unsigned r = (k * CONFIG_T::post_lanes + lane) / C;
                    unsigned c = (k * CONFIG_T::post_lanes + lane) % C;
                    unsigned t = tt * R + r, o = ot * C + c;
                    if (t < d.tokens && o < d.out_features) {
                        act_t s = d.residual ? skip[t * d.out_features + o] : act_t(0);
                        y[t * d.out_features + o] = linear_post<CONFIG_T>(acc[r][c], cbuf[c], d, s);
                    }
                }
            }
        }
    }
}

}  // namespace moevit

#endif
