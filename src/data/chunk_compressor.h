// The chunks of a task stream's datasets, filtered as HDF5's shuffle and deflate filters filter
// them (H5Pset_shuffle, then H5Pset_deflate), on worker threads. Deflate is most of qarac-prep's
// time (0.4 s of 0.6 s for 10 MB of text at level 4), and HDF5 runs a dataset's filters on the
// thread that writes it: so the writer hands each whole chunk over, goes on tokenising, and
// stores the filtered bytes as they are (H5Dwrite_chunk), in the order it handed them over. The
// file is the same whatever the thread count, and its chunks are those the filter pipeline would
// have stored, which any HDF5 reader decodes.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

namespace qarac::data {

using ChunkBytes = std::vector<unsigned char>;

// One chunk of elements of `element_size` bytes as HDF5 stores it: its bytes shuffled (byte b of
// every element, then byte b + 1, ...) and deflated with zlib at `level` (1..9); at level 0 as
// it is (no filters).
ChunkBytes filter_chunk(const ChunkBytes& chunk, size_t element_size, int level);

class ChunkCompressor {
 public:
  // `threads` <= 1: each chunk is filtered at once, on the caller's thread. Threads that cannot
  // be started are warned about, and done without.
  ChunkCompressor(int level, int threads);
  // Joins the workers; chunks still queued are dropped (their futures are then broken).
  ~ChunkCompressor();
  ChunkCompressor(const ChunkCompressor&) = delete;
  ChunkCompressor& operator=(const ChunkCompressor&) = delete;

  int threads() const { return static_cast<int>(workers_.size()); }
  // filter_chunk(chunk, element_size, level), now or on a worker; a failure (out of memory) is
  // rethrown by the future's get().
  std::future<ChunkBytes> submit(ChunkBytes chunk, size_t element_size);

 private:
  void work();

  const int level_;
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<std::packaged_task<ChunkBytes()>> queue_;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace qarac::data
