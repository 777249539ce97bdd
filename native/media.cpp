#include "media.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <stdexcept>

#include "logging.h"
#include "model.h"
#include "mtmd-helper.h"
#include "mtmd.h"

// stb_image, compiled into libmtmd (mtmd-helper.cpp): its header reader, to check the size first.
extern "C" int stbi_info_from_memory(const unsigned char * buffer, int len, int * x, int * y, int * comp);

namespace lcl {

namespace {

struct ChunksFree {
    void operator()(mtmd_input_chunks * c) const { mtmd_input_chunks_free(c); }
};
struct BitmapFree {
    void operator()(mtmd_bitmap * b) const { mtmd_bitmap_free(b); }
};

// A negative id per file, the same at each of its positions: its hash's first 30 bits.
llama_token placeholder(const std::string & id) {
    uint32_t h = 0;
    for (size_t i = 0; i < id.size() && i < 8; ++i) {
        const char c = id[i];
        h = (h << 4) | static_cast<uint32_t>(c >= 'a' ? c - 'a' + 10 : c >= 'A' ? c - 'A' + 10 : c - '0');
    }
    return -2 - static_cast<llama_token>(h >> 2);
}

}  // namespace

const MediaChunk * MediaPrompt::starting_at(size_t pos) const {
    for (const auto & m : media) {
        if (m.offset == pos) {
            return &m;
        }
    }
    return nullptr;
}

size_t MediaPrompt::next_start(size_t pos) const {
    for (const auto & m : media) {
        if (m.offset >= pos) {
            return m.offset;
        }
    }
    return tokens.size();
}

Vision::Vision(const std::string & mmproj_path, llama_model * model, int n_threads, bool use_gpu) {
    mtmd_log_set(log_to_buffer, nullptr);
    mtmd_helper_log_set(log_to_buffer, nullptr);
    std::error_code ec;
    if (!std::filesystem::exists(mmproj_path, ec)) {
        throw FileNotFound("projector (mmproj) file not found: " + mmproj_path);
    }
    auto params = mtmd_context_params_default();
    params.use_gpu = use_gpu;
    params.print_timings = false;
    params.n_threads = n_threads;
    params.warmup = false;
    ErrorCapture capture;
    ctx_ = mtmd_init_from_file(mmproj_path.c_str(), model, params);
    if (ctx_ == nullptr) {
        throw std::invalid_argument("failed to load the projector " + mmproj_path + ": " +
                                    capture.message("not an mmproj GGUF for this model"));
    }
}

Vision::~Vision() {
    if (ctx_ != nullptr) {
        mtmd_free(ctx_);
    }
}

const char * Vision::marker() const { return mtmd_get_marker(ctx_); }
bool Vision::supports_images() const { return mtmd_support_vision(ctx_); }
bool Vision::supports_audio() const { return mtmd_support_audio(ctx_); }

namespace {

// One media file's bytes, decoded by libmtmd (images, audio) after the size checks; `which` names it.
std::unique_ptr<mtmd_bitmap, BitmapFree> load_bitmap(mtmd_context * ctx, const std::string & file, const std::string & which) {
    const auto * bytes = reinterpret_cast<const unsigned char *>(file.data());
    int nx = 0, ny = 0, nc = 0;
    if (stbi_info_from_memory(bytes, static_cast<int>(file.size()), &nx, &ny, &nc) &&
        static_cast<long long>(nx) * ny > kMaxImagePixels) {
        throw std::invalid_argument(which + " is an image of " + std::to_string(nx) + "x" + std::to_string(ny) +
                                    " pixels, over the limit of " + std::to_string(kMaxImagePixels));
    }
    ErrorCapture capture;
    auto wrapper = mtmd_helper_bitmap_init_from_buf(ctx, bytes, file.size(), false, mtmd_helper_init_opt_default());
    if (wrapper.bitmap == nullptr) {
        throw std::invalid_argument(which + " could not be decoded: " +
                                    capture.message("not an image (JPEG, PNG, BMP, GIF, TGA, PSD, HDR, PNM) "
                                                    "or audio file (WAV, MP3, FLAC) this model reads"));
    }
    std::unique_ptr<mtmd_bitmap, BitmapFree> bitmap(wrapper.bitmap);
    if (mtmd_bitmap_is_audio(bitmap.get()) ? !mtmd_support_audio(ctx) : !mtmd_support_vision(ctx)) {
        throw std::invalid_argument(which + " is " + (mtmd_bitmap_is_audio(bitmap.get()) ? "audio" : "an image") +
                                    ", which this projector does not take");
    }
    return bitmap;
}

// A media chunk of the prompt at `offset`: its cells, its positions (fewer for an M-RoPE image: its grid's
// longer side), its file's hash.
MediaChunk media_chunk(const mtmd_input_chunk * chunk, size_t offset) {
    MediaChunk m;
    m.offset = offset;
    m.n_tokens = mtmd_input_chunk_get_n_tokens(chunk);
    m.n_pos = static_cast<size_t>(mtmd_input_chunk_get_n_pos(chunk));
    m.id = mtmd_input_chunk_get_id(chunk) ? mtmd_input_chunk_get_id(chunk) : "";
    m.chunk.reset(mtmd_input_chunk_copy(chunk), mtmd_input_chunk_free);
    if (m.n_pos == 0 || m.n_pos > m.n_tokens) {  // KvSequence counts positions as cells less a saving
        throw std::invalid_argument("this projector places media at more positions than it has tokens");
    }
    return m;
}

}  // namespace

std::shared_ptr<MediaPrompt> Vision::tokenize(const std::string & text, const std::vector<std::string> & files) const {
    std::vector<std::unique_ptr<mtmd_bitmap, BitmapFree>> bitmaps;
    for (size_t i = 0; i < files.size(); ++i) {
        const auto & file = files[i];
        const std::string which = "media file " + std::to_string(i + 1) + " of " + std::to_string(files.size());
        if (file.empty()) {
            throw std::invalid_argument(which + " is empty");
        }
        if (file.size() > kMaxMediaBytes) {
            throw std::invalid_argument(which + " is " + std::to_string(file.size()) + " bytes, over the limit of " +
                                        std::to_string(kMaxMediaBytes));
        }
        bitmaps.push_back(load_bitmap(ctx_, file, which));
    }
    std::vector<const mtmd_bitmap *> raw;
    for (const auto & b : bitmaps) {
        raw.push_back(b.get());
    }
    mtmd_input_text input{text.c_str(), text.size(), true, true};
    std::unique_ptr<mtmd_input_chunks, ChunksFree> chunks(mtmd_input_chunks_init());
    int32_t rc = 0;
    {
        ErrorCapture capture;
        std::lock_guard<std::mutex> lock(mutex_);
        rc = mtmd_tokenize(ctx_, chunks.get(), &input, raw.data(), raw.size());
        if (rc == 1) {
            size_t markers = 0;
            const std::string marker = mtmd_get_marker(ctx_);
            for (size_t at = text.find(marker); at != std::string::npos; at = text.find(marker, at + marker.size())) {
                markers++;
            }
            throw std::invalid_argument("the prompt has " + std::to_string(markers) + " media markers (" + marker +
                                        ") for " + std::to_string(files.size()) + " media files");
        }
        if (rc != 0) {
            throw std::invalid_argument("could not prepare the media: " + capture.message("preprocessing failed"));
        }
    }
    auto out = std::make_shared<MediaPrompt>();
    for (size_t i = 0; i < mtmd_input_chunks_size(chunks.get()); ++i) {
        const mtmd_input_chunk * chunk = mtmd_input_chunks_get(chunks.get(), i);
        if (mtmd_input_chunk_get_type(chunk) == MTMD_INPUT_CHUNK_TYPE_TEXT) {
            size_t n = 0;
            const llama_token * tokens = mtmd_input_chunk_get_tokens_text(chunk, &n);
            out->tokens.insert(out->tokens.end(), tokens, tokens + n);
            continue;
        }
        MediaChunk m = media_chunk(chunk, out->tokens.size());
        out->tokens.insert(out->tokens.end(), m.n_tokens, placeholder(m.id));
        out->media.push_back(std::move(m));
    }
    if (!out->media.empty() && out->media.back().offset + out->media.back().n_tokens == out->tokens.size()) {
        throw std::invalid_argument("the prompt ends with a media file: put text after it (chat templates do)");
    }
    return out;
}

std::string Vision::batch_error(const MediaChunk & media, int n_batch, int n_ubatch) const {
    // Some models (Gemma 3) attend across an image's tokens in both directions: they must be decoded in
    // one micro-batch, or the image is read wrongly without a word said.
    if (mtmd_decode_use_non_causal(ctx_, media.chunk.get()) &&
        media.n_tokens > static_cast<size_t>(std::min(n_batch, n_ubatch))) {
        return "this model reads each image whole, " + std::to_string(media.n_tokens) +
               " tokens at once: raise n_batch and n_ubatch to at least that";
    }
    return {};
}

std::string Vision::eval(llama_context * ctx, const MediaChunk & media, llama_pos n_past, llama_seq_id seq,
                         int n_batch) {
    std::string error = batch_error(media, n_batch, static_cast<int>(llama_n_ubatch(ctx)));
    if (!error.empty()) {
        return error;
    }
    ErrorCapture capture;
    std::lock_guard<std::mutex> lock(mutex_);
    llama_pos new_n_past = n_past;
    const int32_t rc =
        mtmd_helper_eval_chunk_single(ctx_, ctx, media.chunk.get(), n_past, seq, n_batch, false, &new_n_past);
    if (rc != 0) {
        return "could not encode or decode an image (code " + std::to_string(rc) + "): " +
               capture.message("see the log (verbose=True)");
    }
    if (static_cast<size_t>(new_n_past - n_past) != media.n_pos) {
        return "the projector placed an image at other positions than it said";
    }
    return {};
}

}  // namespace lcl
