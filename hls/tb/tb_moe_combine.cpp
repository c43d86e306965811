// Testbench of the MoE combine (moevit_moe.h). Per case, in:
//   tokens, experts, top_k, dim, out_mult, out_shift, top[tokens*top_k], weights[tokens*top_k],
//   then per expert e, in expert order: fc2[n_e * dim], its n_e listed tokens' rows
// out: acc[tokens*dim], y[tokens*dim].
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
        d.dim = in.next();
        d.out_mult = in.next();
        d.out_shift = in.next();
        d.renorm = false;
        std::vector<expert_t> top = in.array<expert_t>(d.tokens * d.top_k);
        std::vector<prob_t> weights = in.array<prob_t>(d.tokens * d.top_k);
        moe_lists<moe_config>(d, top.data(), weights.data(), buffers);
        for (unsigned e = 0; e < d.experts; e++) {
            std::vector<act_t> fc2 = in.array<act_t>(buffers.count[e] * d.dim);
            moe_combine<moe_config>(d, e, fc2.data(), buffers);
        }
        for (unsigned t = 0; t < d.tokens; t++)
            for (unsigned c = 0; c < d.dim; c++) out.put(buffers.acc[t][c].to_int64());
        std::vector<act_t> y(d.tokens * d.dim);
        moe_emit<moe_config>(d, buffers, y.data());
        out.array(y);
    });
}
