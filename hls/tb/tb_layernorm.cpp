// Testbench of the LayerNorm (moevit_layernorm.h). Per case, in:
//   rows, dim, eps, shift, gamma[dim], beta[dim], x[rows*dim]
// out: y[rows*dim].
#include "moevit_layernorm.h"
#include "parameters.h"
#include "tb_io.h"

using namespace moevit;

int main(int argc, char **argv) {
    return tb_main(argc, argv, [](tb_input &in, tb_output &out) {
        unsigned rows = in.next(), dim = in.next();
        eps_t eps = in.next();
        shift_t shift = in.next();
        static gamma_t gamma[layernorm_config::max_dim];
        static beta_t beta[layernorm_config::max_dim];
        for (unsigned i = 0; i < dim; i++) gamma[i] = in.next();
        for (unsigned i = 0; i < dim; i++) beta[i] = in.next();
        hls::stream<act_t> x("x"), y("y");
        for (unsigned r = 0; r < rows; r++) {
            for (unsigned i = 0; i < dim; i++) x.write(in.next());
            layernorm<layernorm_config>(x, y, dim, eps, gamma, beta, shift);
            for (unsigned i = 0; i < dim; i++) out.put(y.read().to_int64());
        }
    });
}
