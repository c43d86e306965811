// Testbench of the linear kernel (moevit_linear.h). Per case, in:
//   tokens, in_features, out_features, gelu, gelu_b, gelu_c, gelu_mult, gelu_shift,
//   residual, res_mult_y, res_mult_skip, res_shift,
//   x[tokens*in], w[out*in], bias[out], mult[out], shift[out], skip[tokens*out] (if residual)
// out: y[tokens*out].
#include "moevit_linear.h"
#include "parameters.h"
#include "tb_io.h"

using namespace moevit;

int main(int argc, char **argv) {
    return tb_main(argc, argv, [](tb_input &in, tb_output &out) {
        linear_desc d;
        d.tokens = in.next();
        d.in_features = in.next();
        d.out_features = in.next();
        d.gelu = in.next();
        d.gelu_k.b = in.next();
        d.gelu_k.c = in.next();
        d.gelu_k.mult = in.next();
        d.gelu_k.shift = in.next();
        d.residual = in.next();
        d.res_mult_y = in.next();
        d.res_mult_skip = in.next();
        d.res_shift = in.next();
        std::vector<act_t> x = in.array<act_t>(d.tokens * d.in_features);
        std::vector<act_t> w = in.array<act_t>(d.out_features * d.in_features);
        std::vector<acc_t> bias = in.array<acc_t>(d.out_features);
        std::vector<mult_t> mult = in.array<mult_t>(d.out_features);
        std::vector<shift_t> shift = in.array<shift_t>(d.out_features);
        std::vector<act_t> skip = in.array<act_t>(d.residual ? d.tokens * d.out_features : 0);
        std::vector<chan_t> chan(d.out_features);
        for (unsigned o = 0; o < d.out_features; o++) {
            chan[o].bias = bias[o];
            chan[o].mult = mult[o];
            chan[o].shift = shift[o];
        }
        std::vector<act_t> y(d.tokens * d.out_features);
        linear<linear_config>(d, x.data(), w.data(), chan.data(), skip.data(), y.data());
        out.array(y);
    });
}
