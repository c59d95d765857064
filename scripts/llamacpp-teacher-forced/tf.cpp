// Teacher-forced agreement of llama.cpp with its own SmolLM2 goldens (measurement tool, not
// part of verispec). Build against an external llama.cpp build:
//   scripts/llamacpp-teacher-forced/run.sh LLAMA_CPP_DIR builds and runs it (outside the repo).
// Usage: tf MODEL RECORDS step|batch N_UBATCH THREADS [FA auto|on|off] [KV f16|f32]
//   (RECORDS: prompt ids line, golden ids line; FA and KV default to llama.cpp's defaults)
// Prints "rec step argmax top1 top2" for every golden position.
#include "llama.h"
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

static std::vector<int> ids_of(const std::string &l) {
    std::istringstream s(l); std::vector<int> v; int x; while (s >> x) v.push_back(x); return v;
}

int main(int argc, char **argv) {
    if (argc < 6) { fprintf(stderr, "usage\n"); return 2; }
    const char *model_path = argv[1]; std::string mode = argv[3];
    int n_ubatch = atoi(argv[4]); int threads = atoi(argv[5]);
    std::string fa = argc > 6 ? argv[6] : "auto", kv = argc > 7 ? argv[7] : "f16";
    llama_backend_init();
    llama_log_set([](enum ggml_log_level, const char *, void *) {}, nullptr);
    auto mp = llama_model_default_params();
    llama_model *model = llama_model_load_from_file(model_path, mp);
    if (!model) { fprintf(stderr, "load failed\n"); return 1; }
    const llama_vocab *vocab = llama_model_get_vocab(model);
    int n_vocab = llama_vocab_n_tokens(vocab);
    std::ifstream in(argv[2]); std::string pl, gl; int rec = 0;
    while (std::getline(in, pl) && std::getline(in, gl)) {
        auto p = ids_of(pl), g = ids_of(gl);
        auto cp = llama_context_default_params();
        cp.n_ctx = 1024; cp.n_batch = 1024; cp.n_ubatch = n_ubatch;
        cp.n_threads = threads; cp.n_threads_batch = threads;
        cp.flash_attn_type = fa == "on" ? LLAMA_FLASH_ATTN_TYPE_ENABLED
                           : fa == "off" ? LLAMA_FLASH_ATTN_TYPE_DISABLED : LLAMA_FLASH_ATTN_TYPE_AUTO;
        if (kv == "f32") { cp.type_k = GGML_TYPE_F32; cp.type_v = GGML_TYPE_F32; }
        llama_context *ctx = llama_init_from_model(model, cp);
        auto report = [&](int step, const float *lg) {
            int best = 0; for (int i = 1; i < n_vocab; i++) if (lg[i] > lg[best]) best = i;
            float t2 = -1e30f; for (int i = 0; i < n_vocab; i++) if (i != best && lg[i] > t2) t2 = lg[i];
            printf("%d %d %d %.6f %.6f\n", rec, step, best, lg[best], t2);
        };
        if (mode == "step") {
            llama_batch b = llama_batch_get_one(p.data(), (int)p.size());
            if (llama_decode(ctx, b)) { fprintf(stderr, "decode failed\n"); return 1; }
            report(0, llama_get_logits_ith(ctx, -1));
            for (size_t s = 0; s + 1 < g.size(); s++) {
                llama_batch b1 = llama_batch_get_one(&g[s], 1);
                if (llama_decode(ctx, b1)) { fprintf(stderr, "decode failed\n"); return 1; }
                report((int)s + 1, llama_get_logits_ith(ctx, -1));
            }
        } else {
            std::vector<int> all = p; all.insert(all.end(), g.begin(), g.end() - 1);
            llama_batch b = llama_batch_init((int)all.size(), 0, 1);
            for (size_t i = 0; i < all.size(); i++) {
                b.token[i] = all[i]; b.pos[i] = (int)i; b.n_seq_id[i] = 1; b.seq_id[i][0] = 0;
                b.logits[i] = i + 1 >= p.size();
            }
            b.n_tokens = (int)all.size();
            if (llama_decode(ctx, b)) { fprintf(stderr, "decode failed\n"); return 1; }
            for (size_t s = 0; s < g.size(); s++) report((int)s, llama_get_logits_ith(ctx, (int)(p.size() - 1 + s)));
            llama_batch_free(b);
        }
        llama_free(ctx); rec++;
    }
    llama_model_free(model);
    return 0;
}
