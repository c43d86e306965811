// Testbench of the attention kernel (moevit_attention.h). Per case, in:
//   tokens, rows, first, heads, head_dim, sm_mult, sm_shift, out_mult, out_shift,
//   qkv[tokens * 3*heads*head_dim]   (one QKV output: [q | k | v] per row)
// out: ctx[rows * heads*head_dim], of the query rows first .. first + rows - 1.
#include "moevit_attention.h"
#include "parameters.h"
#include "tb_io.h"

using namespace moevit;

int main(int argc, char **argv) {
    return tb_main(argc, argv, [](tb_input &in, tb_output &out) {
        attention_desc d;
        d.tokens = in.next();
        d.rows = in.next();
        unsigned first = in.next();
        d.heads = in.next();
        d.head_dim = in.next();
        d.sm_mult = in.next();
        d.sm_shift = in.next();
        d.out_mult = in.next();
        d.out_shift = in.next();
        unsigned width = d.heads * d.head_dim;
        d.row_pitch = 3 * width;
        std::vector<act_t> qkv = in.array<act_t>(d.tokens * d.row_pitch);
        std::vector<act_t> ctx(d.rows * width);
        attention<attention_config>(d, qkv.data() + first * d.row_pitch, qkv.data() + width,
                                    qkv.data() + 2 * width, ctx.data());
        out.array(ctx);
    });
}
