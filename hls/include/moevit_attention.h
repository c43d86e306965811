// moevit HLS kernels: the streaming attention kernel. Per head,
//   out = requantize(weighted_sum(softmax(q @ k.T, M_s, S_s), v), M_o, S_o)
// as golden.attention_head: K and V are held on chip for the head, the query
// rows stream through three stages joined by streams (QK scores -> softmax ->
// PV context), so the score matrix never leaves the kernel.
//
// CONFIG_T provides:
//   static const unsigned kv_depth;       // the longest sequence (K, V buffers)
//   static const unsigned max_head_dim;   // the widest head
//   static const unsigned score_lanes;    // multipliers along the head dimension per stage
//   static const unsigned heads_parallel; // head lanes
//   static const unsigned row_lanes;      // query rows of one head at once, per head lane
//   static const unsigned score_packing;  // keys a multiplier: 1, or 2 (score_lanes even)
//   typedef ... softmax_config;           // max_row = kv_depth
#ifndef MOEVIT_ATTENTION_H
#define MOEVIT_ATTENTION_H

#include "hls_stream.h"
#include "moevit_softmax.h"
#include "moevit_types.h"

namespace moevit {

// The fields of the ATTENTION descriptor (AttentionDescriptor) the kernel computes with.
struct attention_desc {
    unsigned tokens, heads, head_dim;
    unsigned rows;       // query rows of q and of the context (the keys: tokens)
    unsigned row_pitch;  // elements from one row of q, k, v to the next
    mult_t sm_mult;
    shift_t sm_shift;
    mult_t out_mult;
    shift_t out_shift;
};

// The query rows of a head go to CONFIG_T::row_lanes row lanes in turn: row lane r takes
// rows r, r + R, r + 2R, ... (as the RTL's HeadLane), each with its own copy of K and V and
// its own score and probability streams, so the R rows of a group compute side by side.

// Stage 1: score_j = sum_c q[t][c] * k[j][c] for the query rows of every group. With
// score_packing 2 (as the RTL's QK stage), two neighbouring keys share the query's value in
// one 27x18 multiply (pack_pair), half the score lanes a step: a pair in twice the steps of
// one key, the same pace; an odd sequence's last key pairs with zero.
template <class CONFIG_T>
void attention_scores(const attention_desc &d, const act_t *q,
                      const act_t kbuf[CONFIG_T::row_lanes][CONFIG_T::kv_depth][CONFIG_T::max_head_dim],
                      hls::stream<score_t> scores[CONFIG_T::row_lanes]) {
    static const unsigned L = CONFIG_T::score_lanes;  // head_dim is a multiple (the descriptor's rule)
    static const unsigned R = CONFIG_T::row_lanes;
    static const unsigned K = CONFIG_T::score_packing;  // keys a step
    static const unsigned M = L / K;                    // multipliers a step
    static_assert(K == 1 || (K == 2 && L % 2 == 0),
                  "score_packing is 1, or 2 with an even number of score lanes");
    act_t qrow[R][CONFIG_T::max_head_dim];
#pragma HLS array_partition variable=qrow complete dim=1
#pragma HLS array_partition variable=qrow cyclic factor=CONFIG_T::score_lanes dim=2
attention_query_groups:
    for (unsigned first = 0; first < d.rows; first += R) {
        for (unsigned r = 0; r < R && first + r < d.rows; r++)
            for (unsigned c = 0; c < d.head_dim; c++) qrow[r][c] = q[(first + r) * d.row_pitch + c];
    attention_keys:
        for (unsigned j = 0; j < d.tokens; j += K) {
            score_t s[R][K];  // head_dim products of s15: an int32 each
#pragma HLS array_partition variable=s complete dim=0
            for (unsigned r = 0; r < R; r++)
                for (unsigned k = 0; k < K; k++) s[r][k] = 0;
        attention_score_chunks:
            for (unsigned ch = 0; ch < d.head_dim / M; ch++) {
#pragma HLS pipeline II=1
                for (unsigned r = 0; r < R; r++) {
#pragma HLS unroll
                    for (unsigned l = 0; l < M; l++) {
#pragma HLS unroll
                        unsigned c = ch * M + l;
                        if (K == 1) {
                            s[r][0] += qrow[r][c] * kbuf[r][j][c];
                        } else {
                            act_t second = j + 1 < d.tokens ? kbuf[r][j + 1][c] : act_t(0);
                            ap_int<16> lo, hi;
                            unpack_product(qrow[r][c] * pack_pair(kbuf[r][j][c], second), lo, hi);
                            s[r][0] += lo;
                            s[r][K - 1] += hi;
                        }
                    }
                }
            }
            for (unsigned k = 0; k < K && j + k < d.tokens; k++)
                for (unsigned r = 0; r < R && first + r < d.rows; r++) scores[r].write(s[r][k]);
        }
    }
}

// Stage 2: one softmax per query row, the row lanes' side by side.
template <class CONFIG_T>
void attention_softmax(const attention_desc &d, hls::stream<score_t> scores[CONFIG_T::row_lanes],
                       hls::stream<prob_t> probs[CONFIG_T::row_lanes]) {
    static const unsigned R = CONFIG_T::row_lanes;
attention_rows:
    for (unsigned first = 0; first < d.rows; first += R) {
        for (unsigned r = 0; r < R; r++) {
#pragma HLS unroll
            if (first + r < d.rows)
                softmax<typename CONFIG_T::softmax_config>(scores[r], probs[r], d.tokens,
                                                           d.sm_mult, d.sm_shift);
        }
    }
}

// Stage 3: ctx[t][c] = requantize(sum_j p_j * v[j][c]); p_j*v is s24, the row sum an int32.
template <class CONFIG_T>
void attention_context(const attention_desc &d, hls::stream<prob_t> probs[CONFIG_T::row_lanes],
                       const act_t vbuf[CONFIG_T::row_lanes][CONFIG_T::kv_depth][CONFIG_T::max_head_dim],
                       act_t *out, unsigned out_pitch) {
    static const unsigned L = CONFIG_T::score_lanes;
    static const unsigned R = CONFIG_T::row_lanes;
    acc_t ctx[R][CONFIG_T::max_head_dim];
#pragma HLS array_partition variable=ctx complete dim=1
#pragma HLS array_partition variable=ctx cyclic factor=CONFIG_T::score_lanes dim=2
attention_context_groups:
    for (unsigned first = 0; first < d.rows; first += R) {
        unsigned rows = d.rows - first < R ? d.rows - first : R;
        for (unsigned r = 0; r < R; r++)
            for (unsigned c = 0; c < d.head_dim; c++) ctx[r][c] = 0;
    attention_values:
        for (unsigned j = 0; j < d.tokens; j++) {
            prob_t p[R];
#pragma HLS array_partition variable=p complete
            for (unsigned r = 0; r < R; r++) p[r] = r < rows ? probs[r].read() : prob_t(0);
        attention_value_chunks:
            for (unsigned ch = 0; ch < d.head_dim / L; ch++) {
#pragma HLS pipeline II=1
                for (unsigned r = 0; r < R; r++) {
#pragma HLS unroll
                    for (unsigned l = 0; l < L; l++) {
#pragma HLS unroll
                        ctx[r][ch * L + l] += p[r] * vbuf[r][j][ch * L + l];
                    }
                }
            }
        }
        for (unsigned r = 0; r < rows; r++)
            for (unsigned c = 0; c < d.head_dim; c++)
                out[(first + r) * out_pitch + c] = requantize(ctx[r][c], d.out_mult, d.out_shift);
    }
}

// K and V of one head into every row lane's on-chip buffers.
template <class CONFIG_T>
void attention_load_kv(const attention_desc &d, const act_t *k, const act_t *v,
                       act_t kbuf[CONFIG_T::row_lanes][CONFIG_T::kv_depth][CONFIG_T::max_head_dim],
                       act_t vbuf[CONFIG_T::row_lanes][CONFIG_T::kv_depth][CONFIG_T::max_head_dim]) {
attention_load_rows:
    for (unsigned j = 0; j < d.tokens; j++) {
        for (unsigned c = 0; c < d.head_dim; c++) {
#pragma HLS pipeline II=1
            for (unsigned r = 0; r < CONFIG_T::row_lanes; r++) {
#pragma HLS unroll
                kbuf[r][j][c] = k[j * d.row_pitch + c];
                vbuf[r][j][c] = v[j * d.row_pitch + c];
            }
        }
    }
}

// One head: q, k, v point at the head's first column (rows d.row_pitch apart);
// out at the head's first column of the context (rows out_pitch apart).
template <class CONFIG_T>
void attention_head(const attention_desc &d, const act_t *q, const act_t *k, const act_t *v,
                    act_t *out, unsigned out_pitch) {
#pragma HLS dataflow
    static const unsigned R = CONFIG_T::row_lanes;
    act_t kbuf[R][CONFIG_T::kv_depth][CONFIG_T::max_head_dim];
    act_t vbuf[R][CONFIG_T::kv_depth][CONFIG_T::max_head_dim];
#pragma HLS array_partition variable=kbuf complete dim=1
#pragma HLS array_partition variable=vbuf complete dim=1
#pragma HLS array_partition variable=kbuf cyclic factor=CONFIG_T::score_lanes dim=3
#pragma HLS array_partition variable=vbuf cyclic factor=CONFIG_T::score_lanes dim=3
    hls::stream<score_t> scores[R];
    hls::stream<prob_t> probs[R];
#pragma HLS stream variable=scores depth=CONFIG_T::kv_depth
#pragma HLS stream variable=probs depth=CONFIG_T::kv_depth
    attention_load_kv<CONFIG_T>(d, k, v, kbuf, vbuf);
    attention_scores<CONFIG_T>(d, q, kbuf, scores);
    attention_softmax<CONFIG_T>(d, scores, probs);
    attention_context<CONFIG_T>(d, probs, vbuf, out, out_pitch);
}

// Every head of the descriptor; the context is rows x (heads * head_dim). The
// heads_parallel head lanes take heads p, p + P, p + 2P, ... (as the RTL's lanes);
// heads is a multiple of P (the descriptor's rule).
template <class CONFIG_T>
void attention(const attention_desc &d, const act_t *q, const act_t *k, const act_t *v,
               act_t *out) {
    static const unsigned P = CONFIG_T::heads_parallel;
attention_rounds:
    for (unsigned first = 0; first < d.heads; first += P) {
    attention_lanes:
        for (unsigned p = 0; p < P; p++) {
#pragma HLS unroll
            unsigned column = (first + p) * d.head_dim;
            attention_head<CONFIG_T>(d, q + column, k + column, v + column, out + column,
                                     d.heads * d.head_dim);
        }
    }
}

}  // namespace moevit

#endif
