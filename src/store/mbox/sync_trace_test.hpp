#pragma once

// Test-only: records the fsync and renameat calls the unit-test process makes while a
// trace is open (sync_trace_test.cpp defines both functions for the whole test binary; they
// pass every call on to the kernel). Lets a test check the order of durability steps, which
// no file content shows: a missing fsync leaves the same bytes behind until a power cut.

#include <sys/types.h>

#include <string>
#include <vector>

namespace postern::test {

struct sync_event {
  enum class kind { fsync, rename } what;
  ino_t ino = 0;     // fsync: the inode synced
  std::string from;  // rename: the names given, as passed
  std::string to;
};

// Starts recording (clearing what an earlier trace held).
void sync_trace_start();
// Stops recording and returns the calls made since sync_trace_start, in order.
std::vector<sync_event> sync_trace_stop();
// Adds `e` to the open trace, if any (called by the fsync and renameat of the test binary).
void sync_trace_record(sync_event e);

}  // namespace postern::test
