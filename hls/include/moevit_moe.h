// moevit HLS kernels: the MoE unit, as golden._Runner.moe computes it
// (M3ViT's computation reordering):
//   1. gate: per token, the top-k experts of the task gate's int8 logits
//      (intops.topk: larger first, ties to the lower index) and their Q0.15
//      weights: the softmax over all E logits, the selected ones kept (V-MoE's
//      rule, renorm = 0), or the softmax over the k selected logits (renorm = 1);
//   2. lists: per expert, its (token, weight) entries in token order, so each
//      expert's weights are fetched once and it runs once over its tokens;
//   3. combine: each expert's fc2 rows, weighted, summed into an int32
//      accumulator per token (intops.weighted_sum; exact in any expert order);
//   4. emit: requantize(acc) -> the layer's int8 output.
//
// CONFIG_T provides:
//   static const unsigned max_tokens;   // tokens of one operation
//   static const unsigned max_experts;  // experts (gate logits per token)
//   static const unsigned max_dim;      // width of an expert's output
//   typedef ... softmax_config;         // max_row = max_experts
#ifndef MOEVIT_MOE_H
#define MOEVIT_MOE_H

#include "hls_stream.h"
#include "moevit_softmax.h"
#include "moevit_types.h"

namespace moevit {

// The fields of the MoE descriptor (MoeDescriptor) the unit computes with.
struct moe_desc {
    unsigned tokens, experts, top_k;
    bool renorm;
    unsigned dim;
    mult_t sm_mult;
    shift_t sm_shift;
    mult_t out_mult;
    shift_t out_shift;
};

// One entry of an expert's list.
struct moe_entry {
    token_t token;
    prob_t weight;
};

// The unit's memories: the per-expert lists and the accumulators.
template <class CONFIG_T>
struct moe_buffers {
    static_assert(CONFIG_T::max_experts <= 255, "expert_t is 8 bits");
    static_assert(CONFIG_T::max_tokens < (1u << 16), "token_t is 16 bits");
    token_t count[CONFIG_T::max_experts];
    moe_entry list[CONFIG_T::max_experts][CONFIG_T::max_tokens];
    acc_t acc[CONFIG_T::max_tokens][CONFIG_T::max_dim];
};

// The top k of one token's E logits, best first: an insertion list that a
// logit enters only when strictly larger, so equal logits keep index order.
template <class CONFIG_T>
void moe_topk(const act_t logits[CONFIG_T::max_experts], unsigned experts, unsigned k,
              expert_t top[CONFIG_T::max_experts]) {
    act_t best[CONFIG_T::max_experts];
#pragma HLS array_partition variable=best complete
#pragma HLS array_partition variable=top complete
    unsigned filled = 0;
moe_topk_walk:
    for (unsigned e = 0; e < experts; e++) {
#pragma HLS pipeline II=1
        act_t value = logits[e];
        unsigned place = filled;  // where it goes: after every entry >= value
        for (unsigned s = 0; s < CONFIG_T::max_experts; s++)
            if (s < filled && value > best[s] && s < place) place = s;
        if (place < k) {
            for (int s = CONFIG_T::max_experts - 1; s > 0; s--) {
                if (unsigned(s) > place && unsigned(s) < k) {
                    best[s] = best[s - 1];
                    top[s] = top[s - 1];
                }
            }
            best[place] = value;
            top[place] = e;
            if (filled < k) filled++;
        }
    }
}

// Stage 1: top-k and gate weights of every token (logits: tokens x experts,
// top and weights: tokens x top_k).
template <class CONFIG_T>
void moe_gate(const moe_desc &d, const act_t *logits, expert_t *top, prob_t *weights) {
    act_t row[CONFIG_T::max_experts];
    expert_t chosen[CONFIG_T::max_experts];
    prob_t probs[CONFIG_T::max_experts];
    hls::stream<score_t> scores("gate_scores");
    hls::stream<prob_t> out("gate_probs");
moe_gate_tokens:
    for (unsigned t = 0; t < d.tokens; t++) {
        for (unsigned e = 0; e < d.experts; e++) row[e] = logits[t * d.experts + e];
        moe_topk<CONFIG_T>(row, d.experts, d.top_k, chosen);
        // V-MoE: the softmax over all E logits; renorm: over the k selected, best first.
        unsigned n = d.renorm ? d.top_k : d.experts;
        for (unsigned e = 0; e < n; e++) scores.write(d.renorm ? row[chosen[e]] : row[e]);
        softmax<typename CONFIG_T::softmax_config>(scores, out, n, d.sm_mult, d.sm_shift);
        for (unsigned e = 0; e < n; e++) probs[e] = out.read();
        for (unsigned s = 0; s < d.top_k; s++) {
            top[t * d.top_k + s] = chosen[s];
            weights[t * d.top_k + s] = d.renorm ? probs[s] : probs[chosen[s]];
        }
    }
}

// Stage 2: every expert's (token, weight) list, tokens ascending.
template <class CONFIG_T>
void moe_lists(const moe_desc &d, const expert_t *top, const prob_t *weights,
               moe_buffers<CONFIG_T> &buf) {
    for (unsigned e = 0; e < d.experts; e++) buf.count[e] = 0;
moe_lists_tokens:
    for (unsigned t = 0; t < d.tokens; t++) {
        for (unsigned s = 0; s < d.top_k; s++) {
#pragma HLS pipeline II=1
            expert_t e = top[t * d.top_k + s];
            moe_entry entry;
            entry.token = t;
            entry.weight = weights[t * d.top_k + s];
            buf.list[e][buf.count[e]] = entry;
            buf.count[e]++;
        }
        for (unsigned c = 0; c < d.dim; c++) buf.acc[t][c] = 0;
    }
}

// Stage 3: expert e's fc2 output (count[e] x dim, its listed tokens in list
// order), weighted into the accumulators.
template <class CONFIG_T>
void moe_combine(const moe_desc &d, unsigned e, const act_t *fc2, moe_buffers<CONFIG_T> &buf) {
moe_combine_rows:
    for (unsigned j = 0; j < buf.count[e]; j++) {
        moe_entry entry = buf.list[e][j];
        for (unsigned c = 0; c < d.dim; c++) {
#pragma HLS pipeline II=1
            buf.acc[entry.token][c] += entry.weight * fc2[j * d.dim + c];
        }
    }
}

// Stage 4: the layer's output (tokens x dim).
template <class CONFIG_T>
void moe_emit(const moe_desc &d, const moe_buffers<CONFIG_T> &buf, act_t *out) {
moe_emit_tokens:
    for (unsigned t = 0; t < d.tokens; t++) {
        for (unsigned c = 0; c < d.dim; c++) {
#pragma HLS pipeline II=1
            out[t * d.dim + c] = requantize(buf.acc[t][c], d.out_mult, d.out_shift);
        }
    }
}

}  // namespace moevit

#endif
