// Testbench of the MoE gate and lists (moevit_moe.h). Per case, in:
//   tokens, experts, top_k, renorm, sm_mult, sm_shift, logits[tokens*experts]
// out: top[tokens*top_k], weights[tokens*top_k], then per expert: count, its tokens.
#include "moevit_moe.h"
#include "parameters.h"
#include "tb_io.h"

using namespace moevit;

static moe_buffers<moe_config> buffers;

int main(int argc, char **argv) {
    return tb_main(argc, argv, [](tb_input &in, tb_output &out) {
        moe_desc d;
        d.tokens = in.next();
        d.experts = in.next();
        d.top_k = in.next();
        d.renorm = in.next();
        d.sm_mult = in.next();
        d.sm_shift = in.next();
        d.dim = 1;  // the lists clear each token's accumulators: one column here
        std::vector<act_t> logits = in.array<act_t>(d.tokens * d.experts);
        std::vector<expert_t> top(d.tokens * d.top_k);
        std::vector<prob_t> weights(d.tokens * d.top_k);
        moe_gate<moe_config>(d, logits.data(), top.data(), weights.data());
        moe_lists<moe_config>(d, top.data(), weights.data(), buffers);
        out.array(top);
        out.array(weights);
        for (unsigned e = 0; e < d.experts; e++) {
            out.put(buffers.count[e].to_int64());
            for (unsigned j = 0; j < buffers.count[e]; j++)
                out.put(buffers.list[e][j].token.to_int64());
        }
    });
}
