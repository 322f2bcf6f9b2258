// Running top-k lists over blocks of score rows, for exact cosine top-k search.
//
// The caller computes the scores of a chunk of queries against one block of
// gallery items at a time (one BLAS call, small enough to stay in cache) and
// merges each block into per-query lists here, blocks in gallery order; at the
// end it sorts the lists. The order is (score descending, gallery index
// ascending), the rule of docs/design.md section 2.
//
// A list is a binary heap of its k items with the worst at the root: the lowest
// score, and among equal scores the highest index. Items arrive in index order,
// so a new item beats the root only with a strictly higher score: an equal score
// never displaces an earlier index. A heap keeps any k cheap (log k per
// entry, where a sorted array would cost k), k = N included.
//
// Most items score below a list's root. A span of items is first tested against
// that threshold in a loop without branches, which the compiler vectorises
// (comparisons are exact IEEE, no -ffast-math needed); only a span with a
// candidate is walked item by item.
//
// No Python here: map_rank.cpp binds it, and a plain C++ program can include it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace drcl {

// Items tested against the threshold at once: long enough for the vector loop
// to pay off, short enough that a span with a candidate is cheap to walk.
constexpr int64_t kThresholdSpan = 64;

// One query's list: k scores and their gallery indices, in heap order until sorted.
template <typename T>
struct TopList {
  T* scores;
  int64_t* indices;
  int64_t k;

  // Whether slot a ranks below slot b: a lower score, or the same score and a higher index.
  bool worse(int64_t a, int64_t b) const {
    return scores[a] < scores[b] || (scores[a] == scores[b] && indices[a] > indices[b]);
  }

  // Replaces the root (the worst item) with (score, index) and restores the heap.
  void replace_root(T score, int64_t index) {
    int64_t hole = 0;
    for (int64_t child = 1; child < k; child = 2 * hole + 1) {
      if (child + 1 < k && worse(child + 1, child)) ++child;
      // The new item is the latest, so it is worse than an equal score: it sinks past it.
      if (score < scores[child] || (score == scores[child] && index > indices[child])) {
        break;
      }
      scores[hole] = scores[child];
      indices[hole] = indices[child];
      hole = child;
    }
    scores[hole] = score;
    indices[hole] = index;
  }
};

// Merges row[0..n) (gallery items offset..offset + n) into one query's heap.
template <typename T>
void merge_row(const T* row, int64_t n, int64_t offset, TopList<T> list) {
  T threshold = list.scores[0];
  for (int64_t start = 0; start < n; start += kThresholdSpan) {
    const int64_t stop = std::min(n, start + kThresholdSpan);
    int candidate = 0;
    for (int64_t j = start; j < stop; ++j) candidate |= row[j] > threshold;
    if (!candidate) continue;
    for (int64_t j = start; j < stop; ++j) {
      if (row[j] > threshold) {
        list.replace_root(row[j], offset + j);
        threshold = list.scores[0];
      }
    }
  }
}

// Merges a (q, n) block of scores, row-major, whose columns are gallery items
// offset..offset + n, into q heaps of k: scores (q, k) and indices (q, k),
// row-major. Heaps start with every slot at -infinity (any finite score beats
// it) and index -1, a valid heap.
template <typename T>
void merge_block(const T* block, int64_t q, int64_t n, int64_t offset, T* scores, int64_t* indices, int64_t k,
                 int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t i = 0; i < q; ++i) {
    merge_row(block + i * n, n, offset, TopList<T>{scores + i * k, indices + i * k, k});
  }
}

// Sorts each of q heaps of k best first: higher score, then lower index.
template <typename T>
void sort_lists(T* scores, int64_t* indices, int64_t q, int64_t k, int threads) {
#pragma omp parallel num_threads(threads)
  {
    std::vector<std::pair<T, int64_t>> items(k);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < q; ++i) {
      T* row_scores = scores + i * k;
      int64_t* row_indices = indices + i * k;
      for (int64_t j = 0; j < k; ++j) items[j] = {row_scores[j], row_indices[j]};
      std::sort(items.begin(), items.end(), [](const auto& a, const auto& b) {
        return a.first > b.first || (a.first == b.first && a.second < b.second);
      });
      for (int64_t j = 0; j < k; ++j) {
        row_scores[j] = items[j].first;
        row_indices[j] = items[j].second;
      }
    }
  }
}

}  // namespace drcl
