// Testbench of the HLS top (hls/src/top.cpp): runs the compiled program as a host runs
// the accelerator. argv[1] is a folder that moevit.hls.csim wrote:
//   runs.txt   line 1: the host's buffer addresses (weights input output scratch), the
//              scratch's bytes, the input's and the output's pitch, the memory's bytes;
//              then one line per run: task images program-file
//   weights.bin, the program files, run<k>-image<n>.bin
// One host memory holds the weights, input, output and scratch buffers at those
// addresses, unlike the program's own, and lives on from run to run (as a device's).
// Per run it writes the images, calls moevit_top, and writes back run<k>-output.bin
// (every image's output region), run<k>-scratch.bin, and run<k>.txt: the error
// code, the status word, the bytes changed outside the output and scratch buffers,
// those of them in the weights, and the call's wall time in seconds.
// When the folder also holds run<k>-expected-output.bin (each image's task output, the
// start of its output region) and run<k>-expected-scratch.bin (the interpreter's, for
// Vitis HLS's csim_design and cosim_design), the testbench checks itself: every byte of
// both, error 0, nothing written elsewhere; it exits 1 on a difference. Otherwise the comparison happens in Python (moevit.hls.csim.check_top).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "ap_int.h"

typedef ap_uint<8> byte_t;

void moevit_top(const ap_uint<32> *program, byte_t *weights, byte_t *input, byte_t *output,
                byte_t *scratch, unsigned task, unsigned images, unsigned *status,
                unsigned *error);

static bool exists(const std::string &path) {
    FILE *file = std::fopen(path.c_str(), "rb");
    if (file) std::fclose(file);
    return file != 0;
}

static std::vector<unsigned char> load(const std::string &path) {
    std::vector<unsigned char> data;
    FILE *file = std::fopen(path.c_str(), "rb");
    if (!file) {
        std::fprintf(stderr, "testbench: cannot open %s\n", path.c_str());
        std::exit(3);
    }
    int c;
    while ((c = std::fgetc(file)) != EOF) data.push_back((unsigned char)c);
    std::fclose(file);
    return data;
}

static void save(const std::string &path, const std::vector<byte_t> &memory, size_t at,
                 size_t size) {
    FILE *file = std::fopen(path.c_str(), "wb");
    for (size_t i = 0; i < size; i++) std::fputc(int(memory[at + i].to_uint()), file);
    std::fclose(file);
}

// Bytes that differ from the file's: `parts` stretches of memory, `pitch` apart from
// `at`, each as long as a part of the file; -1 when the file does not split so.
static long long differing(const std::string &path, const std::vector<byte_t> &memory, size_t at,
                           size_t parts, size_t pitch) {
    std::vector<unsigned char> want = load(path);
    if (parts == 0 || want.size() % parts || want.size() / parts > pitch) return -1;
    const size_t size = want.size() / parts;
    long long count = 0;
    for (size_t i = 0; i < want.size(); i++)
        count += memory[at + (i / size) * pitch + i % size] != want[i];
    return count;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s FOLDER\n", argv[0]);
        return 2;
    }
    const std::string folder = std::string(argv[1]) + "/";
    FILE *runs = std::fopen((folder + "runs.txt").c_str(), "r");
    if (!runs) {
        std::fprintf(stderr, "testbench: no runs.txt in %s\n", argv[1]);
        return 3;
    }
    unsigned long long weights_at, input_at, output_at, scratch_at, scratch_bytes, input_pitch,
        output_pitch, memory_bytes;
    if (std::fscanf(runs, "%llu %llu %llu %llu %llu %llu %llu %llu", &weights_at, &input_at,
                    &output_at, &scratch_at, &scratch_bytes, &input_pitch, &output_pitch,
                    &memory_bytes) != 8) {
        std::fprintf(stderr, "testbench: runs.txt has no buffer line\n");
        return 3;
    }
    std::vector<byte_t> memory(memory_bytes, 0);
    std::vector<unsigned char> weights = load(folder + "weights.bin");
    for (size_t i = 0; i < weights.size(); i++) memory[weights_at + i] = weights[i];
    unsigned task, images;
    char name[256];
    int failed = 0;
    for (int k = 0; std::fscanf(runs, "%u %u %255s", &task, &images, name) == 3; k++) {
        std::vector<unsigned char> bytes = load(folder + name);
        std::vector<ap_uint<32> > program(bytes.size() / 4 + 1, 0);
        for (size_t i = 0; i < bytes.size(); i++)
            program[i / 4](8 * (i % 4) + 7, 8 * (i % 4)) = bytes[i];
        for (unsigned n = 0; n < images; n++) {
            std::vector<unsigned char> image =
                load(folder + "run" + std::to_string(k) + "-image" + std::to_string(n) + ".bin");
            for (size_t i = 0; i < image.size(); i++)
                memory[input_at + n * input_pitch + i] = image[i];
        }
        std::vector<byte_t> before(memory);
        unsigned status = 0, error = 0;
        auto start = std::chrono::steady_clock::now();
        moevit_top(program.data(), &memory[weights_at], &memory[input_at], &memory[output_at],
                   &memory[scratch_at], task, images, &status, &error);
        std::chrono::duration<double> seconds = std::chrono::steady_clock::now() - start;
        // Bytes changed outside the output and scratch buffers, and in the weights.
        const unsigned long long output_end = output_at + images * output_pitch;
        unsigned long long stray = 0, weights_changed = 0;
        for (size_t i = 0; i < memory.size(); i++) {
            bool ours = (i >= output_at && i < output_end) ||
                        (i >= scratch_at && i < scratch_at + scratch_bytes);
            if (!ours && memory[i] != before[i]) {
                stray++;
                if (i >= weights_at && i < weights_at + weights.size()) weights_changed++;
            }
        }
        const std::string run = folder + "run" + std::to_string(k);
        save(run + "-output.bin", memory, output_at, images * output_pitch);
        save(run + "-scratch.bin", memory, scratch_at, scratch_bytes);
        FILE *result = std::fopen((run + ".txt").c_str(), "w");
        std::fprintf(result, "%u %u %llu %llu %.6f\n", error, status, stray, weights_changed,
                     seconds.count());
        std::fclose(result);
        if (exists(run + "-expected-output.bin")) {
            long long out = differing(run + "-expected-output.bin", memory, output_at, images,
                                      output_pitch);
            long long scr = differing(run + "-expected-scratch.bin", memory, scratch_at, 1,
                                      scratch_bytes);
            bool exact = out == 0 && scr == 0 && error == 0 && stray == 0;
            std::printf("testbench: call %d: task %u, %u image(s): %s (error %u, %lld output and "
                        "%lld scratch bytes differ, %llu written elsewhere)\n",
                        k, task, images, exact ? "bit-exact" : "MISMATCH", error, out, scr, stray);
            failed += !exact;
        }
    }
    std::fclose(runs);
    return failed ? 1 : 0;
}
