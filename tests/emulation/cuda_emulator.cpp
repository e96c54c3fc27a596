// The emulator's scheduler, collectives and memory (cuda_emulator.h says what it models).
//
// Fibers start with makecontext and then switch with _setjmp/_longjmp: swapcontext saves the
// signal mask with a system call, and the kernels switch millions of times per test.
// _FORTIFY_SOURCE's longjmp check rejects jumps between stacks, hence the #undef before any
// system header.
#undef _FORTIFY_SOURCE
#include "cuda_emulator.h"
#include "emulated_backend.h"

#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

namespace emu {
namespace {

constexpr int kWarp = 32;
constexpr size_t kStaticSmemLimit = 48 * 1024;
constexpr size_t kDefaultDynamicSmemLimit = 48 * 1024;
constexpr size_t kSmemPerBlock = 227 * 1024;  // sm_90's opt-in maximum
constexpr size_t kStackBytes = 256 * 1024;

enum class Op { none, block_barrier, block_count, syncwarp, shfl, ldmatrix, ldmatrix_trans, mma };
const char* op_name(Op op) {
  switch (op) {
    case Op::none: return "running";
    case Op::block_barrier: return "__syncthreads";
    case Op::block_count: return "__syncthreads_count";
    case Op::syncwarp: return "__syncwarp";
    case Op::shfl: return "shuffle";
    case Op::ldmatrix: return "ldmatrix";
    case Op::ldmatrix_trans: return "ldmatrix.trans";
    case Op::mma: return "mma";
  }
  return "?";
}

struct CpAsync {
  void* dst;
  const void* src;
  int group;  // -1 until committed
};

struct Fiber {
  ucontext_t start;
  jmp_buf resume;
  bool started = false, done = false;
  dim3 tid;
  int index = 0;  // in the block, x fastest: lane index % 32 of warp index / 32
  Op waiting = Op::none;
  uint32_t in[10];            // a collective's operands: a shuffle's value and source lane, an mma's A, B, C
  const void* row = nullptr;  // an ldmatrix's row address
  uint32_t out[4];            // its results
  size_t static_offset = 0;
  std::vector<CpAsync> cp_pending;
  int cp_committed = 0;
  std::vector<char> stack;
};

struct Emulator {
  std::vector<Fiber> fibers;
  Fiber* current = nullptr;
  jmp_buf scheduler;
  std::string failure;  // set by fail() inside a fiber
  dim3 block_idx, block_dim, grid_dim;
  // Both arenas 128-byte aligned inside their storage, as the kernels' __align__(128) tiles and
  // cp.async's 16-byte targets expect.
  std::vector<unsigned char> static_storage, dynamic_storage;
  unsigned char *static_smem = nullptr, *dynamic_smem = nullptr;
  size_t static_used = 0, dynamic_bytes = 0;
  std::function<void()> body;
  std::map<const void*, int> max_dynamic_smem;
  std::map<std::string, uint64_t> launches;
  uint64_t rng = 1;
  bool eager_cp = false;
};
Emulator& E() {
  static Emulator e;
  return e;
}

uint64_t next_random() {  // splitmix64
  uint64_t z = (E().rng += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

Fiber& me() {
  if (E().current == nullptr) fail("a device function called outside a kernel");
  return *E().current;
}
int lane_of(const Fiber& f) { return f.index % kWarp; }

void fiber_main() {
  Emulator& e = E();
  e.body();
  Fiber& f = *e.current;
  if (!f.cp_pending.empty()) fail("thread exits with cp.async copies it never waited for");
  f.done = true;
  _longjmp(e.scheduler, 1);
}

// Back to the scheduler until the barrier or collective `op` releases this thread.
void wait_for(Op op) {
  Fiber& f = me();
  f.waiting = op;
  if (_setjmp(f.resume) == 0) _longjmp(E().scheduler, 1);
}

void copy_pending(Fiber& f, int keep_groups) {
  size_t kept = 0;
  for (const CpAsync& c : f.cp_pending) {
    if (c.group >= 0 && c.group < f.cp_committed - keep_groups)
      memcpy(c.dst, c.src, 16);
    else
      f.cp_pending[kept++] = c;
  }
  f.cp_pending.resize(kept);
}

bool in_shared(const void* p, size_t bytes) {
  const Emulator& e = E();
  auto inside = [&](const unsigned char* base, size_t size) {
    const auto* c = static_cast<const unsigned char*>(p);
    return c >= base && c + bytes <= base + size;
  };
  return inside(e.static_smem, kStaticSmemLimit) || inside(e.dynamic_smem, e.dynamic_bytes);
}

float bf16_half(uint32_t pair, int half) {
  return __bfloat162float({static_cast<uint16_t>(half ? pair >> 16 : pair & 0xFFFF)});
}

// The 32 lanes of warp w all wait at a collective: check it is one and the same, compute it.
void complete_collective(int w) {
  Fiber* lanes = &E().fibers[static_cast<size_t>(w) * kWarp];
  const Op op = lanes[0].waiting;
  for (int l = 1; l < kWarp; ++l)
    if (lanes[l].waiting != op) {
      const std::string msg = "divergent warp: lane 0 at " + std::string(op_name(op)) + ", lane " +
                              std::to_string(l) + " at " + op_name(lanes[l].waiting);
      E().failure = msg;
      return;
    }
  if (op == Op::shfl) {
    uint32_t value[kWarp];
    for (int l = 0; l < kWarp; ++l) value[l] = lanes[l].in[0];
    for (int l = 0; l < kWarp; ++l) lanes[l].out[0] = value[lanes[l].in[1] % kWarp];
  } else if (op == Op::ldmatrix || op == Op::ldmatrix_trans) {
    // Matrix m of .x4 has its 8 rows at the addresses of lanes 8m..8m+7; lane l receives
    // elements (l/4, 2(l%4)) and (l/4, 2(l%4)+1) of each, transposed with .trans.
    for (int l = 0; l < kWarp; ++l)
      for (int m = 0; m < 4; ++m) {
        uint32_t pair = 0;
        for (int i = 0; i < 2; ++i) {
          int row = l / 4, col = 2 * (l % 4) + i;
          if (op == Op::ldmatrix_trans) std::swap(row, col);
          const auto* r = static_cast<const uint16_t*>(lanes[8 * m + row].row);
          pair |= static_cast<uint32_t>(r[col]) << (16 * i);
        }
        lanes[l].out[m] = pair;
      }
  } else if (op == Op::mma) {
    // m16n8k16 fragments (PTX ISA): with g = lane/4, t = lane%4, a0..a3 hold A[g][2t..],
    // A[g+8][2t..], A[g][2t+8..], A[g+8][2t+8..]; b0, b1 hold B[2t..][g], B[2t+8..][g]; c0..c3
    // hold C[g][2t], C[g][2t+1], C[g+8][2t], C[g+8][2t+1].
    float A[16][16], B[16][8], C[16][8];
    for (int l = 0; l < kWarp; ++l) {
      const uint32_t* s = lanes[l].in;
      const int g = l / 4, t = l % 4;
      for (int i = 0; i < 2; ++i) {
        A[g][2 * t + i] = bf16_half(s[0], i);
        A[g + 8][2 * t + i] = bf16_half(s[1], i);
        A[g][2 * t + 8 + i] = bf16_half(s[2], i);
        A[g + 8][2 * t + 8 + i] = bf16_half(s[3], i);
        B[2 * t + i][g] = bf16_half(s[4], i);
        B[2 * t + 8 + i][g] = bf16_half(s[5], i);
      }
      float c[4];
      memcpy(c, &s[6], sizeof c);
      C[g][2 * t] = c[0];
      C[g][2 * t + 1] = c[1];
      C[g + 8][2 * t] = c[2];
      C[g + 8][2 * t + 1] = c[3];
    }
    for (int r = 0; r < 16; ++r)
      for (int c = 0; c < 8; ++c) {
        float acc = C[r][c];
        for (int k = 0; k < 16; ++k) acc += A[r][k] * B[k][c];
        C[r][c] = acc;
      }
    for (int l = 0; l < kWarp; ++l) {
      const int g = l / 4, t = l % 4;
      const float d[4] = {C[g][2 * t], C[g][2 * t + 1], C[g + 8][2 * t], C[g + 8][2 * t + 1]};
      memcpy(lanes[l].out, d, sizeof d);
    }
  }
  for (int l = 0; l < kWarp; ++l) lanes[l].waiting = Op::none;
}

unsigned char* aligned_arena(std::vector<unsigned char>& storage, size_t bytes) {
  storage.resize(bytes + 128);
  const uintptr_t base = reinterpret_cast<uintptr_t>(storage.data());
  return storage.data() + (128 - base % 128) % 128;
}

// Runs f until it waits or exits. Its own function so that no local of the scheduler loop lives
// across the _setjmp.
__attribute__((noinline)) void resume(Fiber& f) {
  Emulator& e = E();
  e.current = &f;
  if (_setjmp(e.scheduler) == 0) {
    if (!f.started) {
      f.started = true;
      setcontext(&f.start);
    }
    _longjmp(f.resume, 1);
  }
  e.current = nullptr;
}

std::string block_name() {
  const dim3& b = E().block_idx;
  return "block (" + std::to_string(b.x) + "," + std::to_string(b.y) + "," + std::to_string(b.z) + ")";
}

// All threads of the block wait at a block barrier: check it is one and the same, complete it.
void complete_block_barrier(int threads) {
  std::vector<Fiber>& fibers = E().fibers;
  const Op op = fibers[0].waiting;
  int count = 0;
  for (int j = 0; j < threads; ++j) {
    Fiber& f = fibers[static_cast<size_t>(j)];
    if (f.waiting != op) {
      E().failure = "divergent block barrier: thread 0 at " + std::string(op_name(op)) + ", thread " +
                    std::to_string(j) + " at " + op_name(f.waiting);
      return;
    }
    count += f.in[0] != 0;
  }
  for (int j = 0; j < threads; ++j) {
    Fiber& f = fibers[static_cast<size_t>(j)];
    if (op == Op::block_count) f.out[0] = static_cast<uint32_t>(count);
    f.waiting = Op::none;
  }
}

// Runs one block to its end. Runnable threads are kept per warp; each step resumes a random one
// (a warp favoured with a random bias, so that one warp often runs far ahead of the others).
// Thread i is (i % x, i / x % y, i / (x y)) of the block, and warps are runs of 32 such i, as on
// the hardware.
void run_block(int threads) {
  Emulator& e = E();
  const int warps = threads / kWarp;
  const unsigned bx = e.block_dim.x, by = e.block_dim.y;
  for (int i = 0; i < threads; ++i) {
    Fiber& f = e.fibers[static_cast<size_t>(i)];
    const unsigned u = static_cast<unsigned>(i);
    f.tid = dim3(u % bx, u / bx % by, u / (bx * by));
    f.index = i;
    f.started = f.done = false;
    f.waiting = Op::none;
    f.static_offset = 0;
    f.cp_pending.clear();
    f.cp_committed = 0;
    if (f.stack.empty()) f.stack.resize(kStackBytes);
    getcontext(&f.start);
    f.start.uc_stack.ss_sp = f.stack.data();
    f.start.uc_stack.ss_size = f.stack.size();
    f.start.uc_link = nullptr;
    makecontext(&f.start, fiber_main, 0);
  }
  std::vector<std::vector<int>> runnable(static_cast<size_t>(warps));
  for (int i = 0; i < threads; ++i) runnable[static_cast<size_t>(i / kWarp)].push_back(i);
  std::vector<int> at_warp_barrier(static_cast<size_t>(warps), 0);
  int at_block_barrier = 0, done = 0;
  const int favoured = static_cast<int>(next_random() % static_cast<uint64_t>(warps));
  const uint64_t bias = next_random() % 100;
  for (;;) {
    int w = favoured;
    if (runnable[static_cast<size_t>(w)].empty() || next_random() % 100 >= bias) {
      int nonempty = 0;
      for (const auto& r : runnable) nonempty += !r.empty();
      if (nonempty == 0) break;
      int pick = static_cast<int>(next_random() % static_cast<uint64_t>(nonempty));
      for (w = 0; runnable[static_cast<size_t>(w)].empty() || pick-- > 0; ++w) {
      }
    }
    std::vector<int>& list = runnable[static_cast<size_t>(w)];
    const size_t k = next_random() % list.size();
    const int i = list[k];
    list[k] = list.back();
    list.pop_back();

    Fiber& f = e.fibers[static_cast<size_t>(i)];
    resume(f);
    if (!e.failure.empty()) break;
    if (f.done) {
      ++done;
    } else if (f.waiting == Op::block_barrier || f.waiting == Op::block_count) {
      ++at_block_barrier;
    } else if (++at_warp_barrier[static_cast<size_t>(w)] == kWarp) {
      at_warp_barrier[static_cast<size_t>(w)] = 0;
      complete_collective(w);
      if (!e.failure.empty()) break;
      for (int l = 0; l < kWarp; ++l) list.push_back(w * kWarp + l);
    }
    if (at_block_barrier == threads) {
      at_block_barrier = 0;
      complete_block_barrier(threads);
      if (!e.failure.empty()) break;
      for (int j = 0; j < threads; ++j) runnable[static_cast<size_t>(j / kWarp)].push_back(j);
    }
  }
  if (e.failure.empty() && done != threads) {
    e.failure = "deadlock (a barrier or collective not reached by all threads):";
    for (int j = 0; j < threads; ++j) {
      const Fiber& g = e.fibers[static_cast<size_t>(j)];
      if (j % kWarp == 0 || g.waiting != e.fibers[static_cast<size_t>(j - 1)].waiting ||
          g.done != e.fibers[static_cast<size_t>(j - 1)].done)
        e.failure += " thread " + std::to_string(j) + ": " + (g.done ? "exited" : op_name(g.waiting)) + ";";
    }
  }
  if (!e.failure.empty()) {
    const std::string msg = e.failure + " in " + block_name();
    e.failure.clear();
    throw qarac::Error("emulated kernel: " + msg);
  }
}

// A kernel's access past a device buffer faults on its guard page: name the block and thread
// before the process dies of the signal.
void on_segv(int, siginfo_t* info, void*) {
  const Emulator& e = E();
  if (e.current != nullptr) {
    char msg[256];
    const int n = snprintf(msg, sizeof msg,
                           "emulated kernel: memory fault at %p in block (%u,%u,%u), thread (%u,%u,%u): an "
                           "access outside its device buffer\n",
                           info->si_addr, e.block_idx.x, e.block_idx.y, e.block_idx.z, e.current->tid.x,
                           e.current->tid.y, e.current->tid.z);
    if (n > 0) (void)!write(STDERR_FILENO, msg, static_cast<size_t>(n));
  }
  signal(SIGSEGV, SIG_DFL);  // returning re-executes the access, which now kills the process
}

void install_fault_report() {
  static bool installed = false;
  if (installed) return;
  installed = true;
  // Its own stack: the fault may come from a fiber's.
  static std::vector<char> signal_stack(64 * 1024);
  stack_t ss{};
  ss.ss_sp = signal_stack.data();
  ss.ss_size = signal_stack.size();
  sigaltstack(&ss, nullptr);
  struct sigaction sa {};
  sa.sa_sigaction = on_segv;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigaction(SIGSEGV, &sa, nullptr);
}

}  // namespace

void fail(const char* what) {
  Emulator& e = E();
  if (e.current == nullptr) throw qarac::Error(std::string("emulated CUDA: ") + what);
  const dim3& t = e.current->tid;
  e.failure = std::string(what) + " (thread (" + std::to_string(t.x) + "," + std::to_string(t.y) + "," +
              std::to_string(t.z) + "))";
  _longjmp(e.scheduler, 1);
}

const dim3& thread_idx() { return me().tid; }
const dim3& block_idx() { return E().block_idx; }
const dim3& block_dim() { return E().block_dim; }
const dim3& grid_dim() { return E().grid_dim; }

void set_schedule_seed(uint64_t seed) { E().rng = seed; }
void set_eager_cp_async(bool eager) { E().eager_cp = eager; }
void set_max_dynamic_smem(const void* kernel, int bytes) { E().max_dynamic_smem[kernel] = bytes; }

void count_launch(const char* name) {
  const char* end = strchr(name, '<');
  ++E().launches[end ? std::string(name, end) : std::string(name)];
}
std::map<std::string, uint64_t> launch_counts() { return E().launches; }
void reset_launch_counts() { E().launches.clear(); }

void launch(const void* kernel, const char* name, dim3 grid, dim3 block, size_t dynamic_smem,
            std::function<void()> body) {
  Emulator& e = E();
  count_launch(name);
  install_fault_report();
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64 || threads % kWarp != 0)
    fail("blocks must have a multiple of 32 threads, at most 1024 (z at most 64)");
  // CUDA refuses an empty grid (cudaErrorInvalidConfiguration): empty inputs must launch nothing.
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) fail("a grid of no blocks (CUDA: invalid configuration argument)");
  if (grid.y > 65535 || grid.z > 65535) fail("grid y and z must be at most 65535");
  if (dynamic_smem > kDefaultDynamicSmemLimit) {
    const auto it = e.max_dynamic_smem.find(kernel);
    if (it == e.max_dynamic_smem.end() || static_cast<size_t>(it->second) < dynamic_smem)
      fail("dynamic shared memory above 48 KiB without cudaFuncSetAttribute");
  }
  e.body = std::move(body);
  e.grid_dim = grid;
  e.block_dim = block;
  e.fibers.resize(threads);
  e.static_smem = aligned_arena(e.static_storage, kStaticSmemLimit);
  e.dynamic_smem = aligned_arena(e.dynamic_storage, dynamic_smem);
  e.dynamic_bytes = dynamic_smem;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        e.block_idx = dim3(x, y, z);
        std::fill(e.static_smem, e.static_smem + kStaticSmemLimit, 0xFF);
        std::fill(e.dynamic_smem, e.dynamic_smem + dynamic_smem, 0xFF);
        e.static_used = 0;
        run_block(static_cast<int>(threads));
        if (e.static_used + dynamic_smem > kSmemPerBlock) fail("shared memory above 227 KiB per block");
      }
}

void* static_shared(size_t bytes, size_t align) {
  Emulator& e = E();
  Fiber& f = me();
  const size_t offset = (f.static_offset + align - 1) / align * align;
  if (offset + bytes > kStaticSmemLimit) fail("static shared memory above 48 KiB");
  f.static_offset = offset + bytes;
  e.static_used = std::max(e.static_used, f.static_offset);
  return e.static_smem + offset;
}
float* dynamic_shared() { return reinterpret_cast<float*>(E().dynamic_smem); }

void syncthreads() {
  me().in[0] = 0;
  wait_for(Op::block_barrier);
}
int syncthreads_count(int predicate) {
  Fiber& f = me();
  f.in[0] = predicate != 0;
  wait_for(Op::block_count);
  return static_cast<int>(f.out[0]);
}
void syncwarp() { wait_for(Op::syncwarp); }

uint32_t shfl(unsigned mask, uint32_t value, int src_lane) {
  if (mask != 0xffffffffu) fail("shuffle with a partial mask (not emulated)");
  Fiber& f = me();
  f.in[0] = value;
  f.in[1] = static_cast<uint32_t>(src_lane);
  wait_for(Op::shfl);
  return f.out[0];
}
uint32_t shfl_xor(unsigned mask, uint32_t value, int lane_mask) {
  return shfl(mask, value, lane_of(me()) ^ lane_mask);
}

void ldmatrix_x4(uint32_t (&r)[4], const void* row, bool trans) {
  if (reinterpret_cast<uintptr_t>(row) % 16 != 0) fail("ldmatrix row address not 16-byte aligned");
  if (!in_shared(row, 16)) fail("ldmatrix row outside shared memory");
  Fiber& f = me();
  f.row = row;
  wait_for(trans ? Op::ldmatrix_trans : Op::ldmatrix);
  memcpy(r, f.out, sizeof r);
}

void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  Fiber& f = me();
  memcpy(f.in, a, 16);
  f.in[4] = b0;
  f.in[5] = b1;
  memcpy(&f.in[6], d, 16);
  wait_for(Op::mma);
  memcpy(d, f.out, 16);
}

void cp_async16(void* smem, const void* gmem) {
  if (reinterpret_cast<uintptr_t>(smem) % 16 != 0 || reinterpret_cast<uintptr_t>(gmem) % 16 != 0)
    fail("cp.async addresses not 16-byte aligned");
  if (!in_shared(smem, 16)) fail("cp.async destination outside shared memory");
  Fiber& f = me();
  if (E().eager_cp) {
    memcpy(smem, gmem, 16);
    return;
  }
  // A bad source faults at issue on the GPU too: touch it now.
  volatile unsigned char probe = static_cast<const volatile unsigned char*>(gmem)[0];
  probe = static_cast<const volatile unsigned char*>(gmem)[15];
  (void)probe;
  f.cp_pending.push_back({smem, gmem, -1});
}
void cp_async_commit() {
  Fiber& f = me();
  for (CpAsync& c : f.cp_pending)
    if (c.group < 0) c.group = f.cp_committed;
  ++f.cp_committed;
}
void cp_async_wait(int pending_groups) { copy_pending(me(), pending_groups); }

DeviceMemory::DeviceMemory(size_t bytes) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t rounded = (bytes + 15) / 16 * 16;  // cudaMalloc alignment, at least 16 bytes
  const size_t usable = (rounded + page - 1) / page * page;
  map_bytes_ = usable + 2 * page;
  map_ = mmap(nullptr, map_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (map_ == MAP_FAILED) throw qarac::Error("emulated cudaMalloc: mmap of " + std::to_string(map_bytes_) + " bytes failed");
  auto* base = static_cast<unsigned char*>(map_);
  mprotect(base, page, PROT_NONE);
  mprotect(base + page + usable, page, PROT_NONE);
  memset(base + page, 0xFF, usable);
  data_ = base + page + usable - rounded;
}
DeviceMemory::~DeviceMemory() { munmap(map_, map_bytes_); }

}  // namespace emu
