#include "common/mapped_access.hpp"

#include <sys/mman.h>
#include <unistd.h>
#include <atomic>
#include <csignal>
#include <cstdint>
#include <mutex>

namespace postern {
namespace {

// Plain data with constant initialization: safe to use from the signal handler.
struct guarded_range {
  std::uintptr_t begin;
  std::uintptr_t end;
  volatile std::sig_atomic_t faulted;
};
constinit thread_local guarded_range t_range{0, 0, 0};

struct sigaction g_previous {};
std::uintptr_t g_page_mask = 0;

void on_sigbus(int sig, siginfo_t* info, void* context) {
  guarded_range& r = t_range;
  const auto addr = reinterpret_cast<std::uintptr_t>(info->si_addr);
  if (r.begin != r.end && addr >= r.begin && addr < r.end) {
    char* page = static_cast<char*>(info->si_addr) - (addr & ~g_page_mask);
    void* p =
        ::mmap(page, ~g_page_mask + 1, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (p != MAP_FAILED) {
      r.faulted = 1;
      // cppcheck-suppress memleak ; MAP_FIXED replaced a page of the guarded mapping, unmapped with it
      return;  // the access is retried and reads zeros
    }
  }
  if ((g_previous.sa_flags & SA_SIGINFO) != 0 && g_previous.sa_sigaction != nullptr) {
    g_previous.sa_sigaction(sig, info, context);
    return;
  }
  if (g_previous.sa_handler != SIG_DFL && g_previous.sa_handler != SIG_IGN &&
      g_previous.sa_handler != nullptr) {
    g_previous.sa_handler(sig);
    return;
  }
  // Not ours: restore the default action; the access faults again and ends the process.
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  ::sigaction(SIGBUS, &dfl, nullptr);
}

void install_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    g_page_mask = ~(static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE)) - 1);
    struct sigaction sa {};
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGBUS, &sa, &g_previous);
  });
}

}  // namespace

mapped_access::mapped_access(const void* begin, std::size_t size) noexcept {
  install_handler();
  // Whole pages: a vector load may start before the first byte of the range, within its
  // page, and the range is part of a mapping, which is made of whole pages.
  const auto first = reinterpret_cast<std::uintptr_t>(begin);
  const std::uintptr_t b = first & g_page_mask;
  size = ((first + size + ~g_page_mask) & g_page_mask) - b;
  // Every intermediate state is an empty or a smaller range: begin first, then end.
  t_range.faulted = 0;
  t_range.end = 0;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  t_range.begin = b;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  t_range.end = b + size;
  std::atomic_signal_fence(std::memory_order_seq_cst);
}

mapped_access::~mapped_access() {
  std::atomic_signal_fence(std::memory_order_seq_cst);
  t_range.end = 0;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  t_range.begin = 0;
}

bool mapped_access::faulted() const noexcept {
  std::atomic_signal_fence(std::memory_order_seq_cst);
  return t_range.faulted != 0;
}

}  // namespace postern
