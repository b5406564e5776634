// llama.cpp's logits at every position of a token sequence, for issue 18's comparison
// (scripts/compare_logits_llamacpp.py builds and runs this). A benchmark helper, not CI.
//
//   llamacpp_logits tokenize MODEL TEXT_FILE             -> ids on stdout, comma-separated
//                                                          (the model's tokenizer, BOS as the
//                                                          file asks, no special parsing)
//   llamacpp_logits logits MODEL IDS_FILE OUT [THREADS] [KV]
//                                                       -> OUT: T x V little-endian f32
//
// The ids go in as one sequence, one llama_decode of the whole prompt with every position's
// logits requested (what llama-cpp-python's logits_all=True does). KV is the cache type, f16
// (llama.cpp's default) or f32. Linked against the static libraries scripts/build_llamacpp.sh
// leaves in $LLAMACPP_DIR/build, so it needs no second build of llama.cpp.
#include "llama.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

static int fail(const std::string & msg) {
    fprintf(stderr, "llamacpp_logits: %s\n", msg.c_str());
    return 1;
}

static bool read_file(const char * path, std::string & out) {
    std::ifstream f(path, std::ios::binary);
    if (!f) return false;
    std::stringstream ss;
    ss << f.rdbuf();
    out = ss.str();
    return true;
}

static void quiet(enum ggml_log_level level, const char * text, void *) {
    if (level >= GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

int main(int argc, char ** argv) {
    if (argc < 4) return fail("usage: tokenize MODEL TEXT_FILE | logits MODEL IDS_FILE OUT [THREADS] [f16|f32]");
    const std::string mode = argv[1];
    llama_log_set(quiet, nullptr);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.progress_callback = [](float, void *) { return true; };  // no progress dots on stderr
    llama_model * model = llama_model_load_from_file(argv[2], mp);
    if (!model) return fail(std::string("cannot load ") + argv[2]);
    const llama_vocab * vocab = llama_model_get_vocab(model);
    std::string input;
    if (!read_file(argv[3], input)) return fail(std::string("cannot read ") + argv[3]);

    if (mode == "tokenize") {
        std::vector<llama_token> ids(input.size() + 16);
        int n = llama_tokenize(vocab, input.data(), (int) input.size(), ids.data(), (int) ids.size(), true, false);
        if (n < 0) return fail("tokenize failed");
        for (int i = 0; i < n; i++) printf(i ? ",%d" : "%d", ids[i]);
        printf("\n");
        llama_model_free(model);
        return 0;
    }
    if (mode != "logits" || argc < 5) return fail("unknown mode or missing OUT");

    std::vector<llama_token> ids;
    for (char * p = input.data(); *p;) {
        char * end;
        long v = strtol(p, &end, 10);
        if (end == p) { p++; continue; }
        ids.push_back((llama_token) v);
        p = end;
    }
    if (ids.empty()) return fail("no ids");
    const int n_vocab = llama_vocab_n_tokens(vocab);
    for (llama_token id : ids)
        if (id < 0 || id >= n_vocab) return fail("id " + std::to_string(id) + " outside the vocabulary");

    const int threads = argc > 5 ? atoi(argv[5]) : 2;
    const std::string kv = argc > 6 ? argv[6] : "f16";
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t) ids.size() + 16;
    cp.n_batch = (uint32_t) ids.size();
    cp.n_ubatch = (uint32_t) ids.size();
    cp.n_threads = cp.n_threads_batch = threads;
    if (kv == "f32") cp.type_k = cp.type_v = GGML_TYPE_F32;
    else if (kv != "f16") return fail("KV is f16 or f32");
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) return fail("cannot create a context");

    llama_batch batch = llama_batch_init((int) ids.size(), 0, 1);
    for (size_t i = 0; i < ids.size(); i++) {
        batch.token[i] = ids[i];
        batch.pos[i] = (llama_pos) i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = 1;
    }
    batch.n_tokens = (int) ids.size();
    if (llama_decode(ctx, batch) != 0) return fail("llama_decode failed");

    FILE * out = fopen(argv[4], "wb");
    if (!out) return fail(std::string("cannot write ") + argv[4]);
    for (size_t i = 0; i < ids.size(); i++) {
        const float * row = llama_get_logits_ith(ctx, (int) i);
        if (!row || fwrite(row, sizeof(float), n_vocab, out) != (size_t) n_vocab) return fail("no logits");
    }
    fclose(out);
    fprintf(stderr, "llamacpp_logits: %zu positions x %d logits, %d threads, KV %s\n", ids.size(), n_vocab,
            threads, kv.c_str());
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
