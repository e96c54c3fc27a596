// HDF5's shuffle and deflate filters on worker threads (data/chunk_compressor.h).
#include "data/chunk_compressor.h"

#include <zlib.h>

#include <new>
#include <system_error>

#include "core/error.h"
#include "core/log.h"

namespace qarac::data {

ChunkBytes filter_chunk(const ChunkBytes& chunk, size_t element_size, int level) {
  QARAC_CHECK(element_size > 0 && chunk.size() % element_size == 0 && level >= 0 && level <= 9,
              "filter_chunk: ", chunk.size(), " bytes of ", element_size, "-byte elements, level ", level);
  if (level == 0) return chunk;
  // H5Z_filter_shuffle: the elements' first bytes, then their second bytes, ...
  const size_t n = chunk.size() / element_size;
  ChunkBytes shuffled(chunk.size());
  for (size_t b = 0; b < element_size; ++b)
    for (size_t i = 0; i < n; ++i) shuffled[b * n + i] = chunk[i * element_size + b];
  // H5Z_filter_deflate: compress2 at the level, whose output depends on nothing else.
  uLongf size = compressBound(static_cast<uLong>(shuffled.size()));
  ChunkBytes out(size);
  const int status = compress2(out.data(), &size, shuffled.data(), static_cast<uLong>(shuffled.size()), level);
  if (status == Z_MEM_ERROR) throw std::bad_alloc();
  QARAC_CHECK(status == Z_OK, "zlib's compress2 failed (status ", status, ") on a chunk of ", shuffled.size(), " bytes");
  out.resize(size);
  return out;
}

ChunkCompressor::ChunkCompressor(int level, int threads) : level_(level) {
  try {
    for (int t = 0; threads > 1 && t < threads; ++t) workers_.emplace_back([this] { work(); });
  } catch (const std::system_error& e) {
    // Out of threads (ulimit -u, a container's pids limit): those started do the work, or the
    // caller's thread does when none did.
    log::warn("compressing task-stream chunks on ", workers_.size(), " of ", threads, " threads (", e.what(), ")");
  }
}

ChunkCompressor::~ChunkCompressor() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    queue_.clear();
  }
  ready_.notify_all();
  for (std::thread& w : workers_) w.join();
}

std::future<ChunkBytes> ChunkCompressor::submit(ChunkBytes chunk, size_t element_size) {
  std::packaged_task<ChunkBytes()> task(
      [chunk = std::move(chunk), element_size, level = level_] { return filter_chunk(chunk, element_size, level); });
  std::future<ChunkBytes> result = task.get_future();
  if (workers_.empty()) {
    task();
    return result;
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.push_back(std::move(task));
  }
  ready_.notify_one();
  return result;
}

void ChunkCompressor::work() {
  for (;;) {
    std::packaged_task<ChunkBytes()> task;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      ready_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    task();  // an exception goes to the future
  }
}

}  // namespace qarac::data
