// A minimal assertion helper for the dependency-free C++ tests.
#pragma once
#include <cstdio>
#include <cstdlib>

static int g_failures = 0;
#define CHECK(...)                                                              \
  do {                                                                          \
    if (!(__VA_ARGS__)) {                                                            \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #__VA_ARGS__); \
      ++g_failures;                                                             \
    }                                                                           \
  } while (0)
