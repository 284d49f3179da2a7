// A pthread mutex in memory shared between processes (MAP_SHARED), robust: when a process
// dies holding it, the next locker gets EOWNERDEAD instead of waiting forever.
#pragma once

#include <pthread.h>

namespace postern {

// Initialises *mu in place; returns pthread_mutex_init's result (0 on success).
inline int init_robust_shared_mutex(pthread_mutex_t* mu) noexcept {
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  int rc = pthread_mutex_init(mu, &attr);
  pthread_mutexattr_destroy(&attr);
  return rc;
}

}  // namespace postern
