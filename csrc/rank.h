// Exact ranking of cosine-score rows for MAP@k, MAP@all and precision-recall.
//
// Each query's row is ranked by (score descending, gallery index ascending),
// the rule of docs/design.md section 2, and walked once. Two exact rankings:
// - MAP@all (and any k that is a large part of the gallery): an LSD radix sort
//   of order-preserving integer keys of the scores. Passes are stable and items
//   enter in index order, so equal scores stay in index order. No comparisons,
//   hence no branch mispredictions, which dominate comparison sorts here.
// - MAP@k for small k: a selection. Scores map to buckets through a monotone
//   function (a higher score never lands in a later bucket); only the buckets
//   that hold the top k are scattered, in index order, and sorted exactly.
//
// No Python here: map_rank.cpp binds it, and a plain C++ program can include it.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace drcl {

// key = 2 * gallery index + relevance: ordering keys orders indices, and the
// walk reads relevance from the key without touching the labels again.
template <typename T>
struct Item {
  T score;
  uint32_t key;
};

// True when a ranks before b: higher score, or the same score and a lower index.
template <typename T>
inline bool ahead(const Item<T>& a, const Item<T>& b) {
  return a.score > b.score || (a.score == b.score && a.key < b.key);
}

// An unsigned integer whose ascending order is the rank order of the scores:
// descending score, with -0.0 and 0.0 equal (as they compare).
template <typename T>
struct RankKey {
  using type = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  static type of(T score) {
    type bits;
    std::memcpy(&bits, &score, sizeof bits);
    constexpr int top_bit = 8 * sizeof(type) - 1;
    constexpr type sign = type(1) << top_bit;
    bits = bits == sign ? 0 : bits;  // -0.0 is 0.0
    // Negative scores keep their bits (set sign bit: after every other score,
    // larger magnitude later); the others flip all but the sign bit (higher
    // score, smaller key). Branch-free: signs are unpredictable.
    return bits ^ (((bits >> top_bit) - 1) & ~sign);
  }
};

// Buckets hold few items, where insertion sort beats std::sort.
constexpr uint32_t kInsertionSortMax = 24;

template <typename T>
void sort_bucket(Item<T>* first, Item<T>* last, Item<T>* need_end) {
  const auto size = static_cast<uint32_t>(last - first);
  if (size <= 1) return;
  if (size <= kInsertionSortMax) {
    for (Item<T>* it = first + 1; it < last; ++it) {
      const Item<T> item = *it;
      Item<T>* hole = it;
      for (; hole > first && ahead(item, hole[-1]); --hole) *hole = hole[-1];
      *hole = item;
    }
  } else if (need_end < last) {
    std::partial_sort(first, need_end, last, ahead<T>);
  } else {
    std::sort(first, last, ahead<T>);
  }
}

// Per-thread scratch, reused across the queries a thread ranks.
template <typename T>
class Ranker {
 public:
  explicit Ranker(uint32_t n) : bucket_(n), items_(n), count_(n / 2 + 2), keyed_(n), spare_(n) {}

  // Key (2 * index + relevance, see Item) of each of the `top` best-ranked items
  // of row[0..n), in rank order; relevant(j) says if gallery item j is relevant.
  template <typename Relevant>
  const uint32_t* rank(const T* row, uint32_t n, uint32_t top, const Relevant& relevant) {
    return top > n / 8 ? radix_sort(row, n, relevant) : select(row, n, top, relevant);
  }

 private:
  using Key = typename RankKey<T>::type;
  static constexpr int kDigitBits = 11;
  static constexpr int kPasses = (8 * sizeof(Key) + kDigitBits - 1) / kDigitBits;
  struct Keyed {
    Key key;
    uint32_t item;
  };

  template <typename Relevant>
  const uint32_t* radix_sort(const T* row, uint32_t n, const Relevant& relevant) {
    std::array<std::array<uint32_t, 1u << kDigitBits>, kPasses> counts{};
    constexpr Key mask = (Key(1) << kDigitBits) - 1;
    for (uint32_t i = 0; i < n; ++i) {
      const Key key = RankKey<T>::of(row[i]);
      keyed_[i] = {key, (i << 1) | static_cast<uint32_t>(relevant(i))};
      for (int p = 0; p < kPasses; ++p) ++counts[p][(key >> (p * kDigitBits)) & mask];
    }
    // Passes where every key has the same digit move nothing: skip them.
    int active[kPasses], passes = 0;
    for (int p = 0; p < kPasses; ++p) {
      if (*std::max_element(counts[p].begin(), counts[p].end()) < n) active[passes++] = p;
    }
    if (passes == 0) {
      for (uint32_t i = 0; i < n; ++i) ranked_[i] = keyed_[i].item;
      return ranked_.data();
    }
    Keyed* from = keyed_.data();
    Keyed* to = spare_.data();
    for (int a = 0; a < passes; ++a) {
      const int shift = active[a] * kDigitBits;
      auto& offset = counts[active[a]];
      uint32_t start = 0;
      for (auto& c : offset) {
        const uint32_t size = c;
        c = start;
        start += size;
      }
      // Stable: items with equal digits keep their order, so equal scores keep index order.
      if (a + 1 < passes) {
        for (uint32_t i = 0; i < n; ++i) to[offset[(from[i].key >> shift) & mask]++] = from[i];
        std::swap(from, to);
      } else {  // the last pass writes only what the walk reads
        for (uint32_t i = 0; i < n; ++i) ranked_[offset[(from[i].key >> shift) & mask]++] = from[i].item;
      }
    }
    return ranked_.data();
  }

  template <typename Relevant>
  const uint32_t* select(const T* row, uint32_t n, uint32_t top, const Relevant& relevant) {
    T lo = row[0], hi = row[0];
    for (uint32_t i = 1; i < n; ++i) {
      lo = row[i] < lo ? row[i] : lo;
      hi = row[i] > hi ? row[i] : hi;
    }
    // About two items per bucket for MAP@all; a selection needs fewer buckets.
    const uint32_t buckets = std::max<uint32_t>(1, std::min<uint32_t>(n / 2, 8 * top + 1024));
    const T scale = static_cast<T>(buckets) / (hi - lo);
    if (!(hi > lo) || !std::isfinite(scale)) return sort_all(row, n, top, relevant);
    const T last = static_cast<T>(buckets - 1);
    for (uint32_t i = 0; i < n; ++i) {
      // Monotone: rounding never swaps two scores, so bucket order agrees with
      // score order (the highest scores in bucket 0).
      const T x = (hi - row[i]) * scale;
      bucket_[i] = static_cast<int32_t>(x < last ? x : last);
    }
    std::fill(count_.begin(), count_.begin() + buckets, 0u);
    for (uint32_t i = 0; i < n; ++i) ++count_[bucket_[i]];
    // The buckets 0..cut hold the top items; turn their counts into start offsets.
    uint32_t cut = 0, taken = 0;
    for (;; ++cut) {
      const uint32_t c = count_[cut];
      count_[cut] = taken;
      taken += c;
      if (taken >= top) break;
    }
    // Scattering in index order keeps equal scores in index order within a bucket.
    for (uint32_t i = 0; i < n; ++i) {
      const auto b = static_cast<uint32_t>(bucket_[i]);
      if (b <= cut) items_[count_[b]++] = {row[i], (i << 1) | static_cast<uint32_t>(relevant(i))};
    }
    // count_[b] now ends bucket b.
    Item<T>* need_end = items_.data() + top;
    for (uint32_t b = 0, begin = 0; b <= cut; begin = count_[b++]) {
      sort_bucket(items_.data() + begin, items_.data() + count_[b], need_end);
    }
    return keys_of(top);
  }

  // One score throughout, or scores closer than the bucket scale resolves.
  template <typename Relevant>
  const uint32_t* sort_all(const T* row, uint32_t n, uint32_t top, const Relevant& relevant) {
    for (uint32_t i = 0; i < n; ++i) items_[i] = {row[i], (i << 1) | static_cast<uint32_t>(relevant(i))};
    std::partial_sort(items_.begin(), items_.begin() + top, items_.begin() + n, ahead<T>);
    return keys_of(top);
  }

  const uint32_t* keys_of(uint32_t top) {
    for (uint32_t i = 0; i < top; ++i) ranked_[i] = items_[i].key;
    return ranked_.data();
  }

  std::vector<int32_t> bucket_;
  std::vector<Item<T>> items_;
  std::vector<uint32_t> count_;
  std::vector<Keyed> keyed_, spare_;
  std::vector<uint32_t> ranked_ = std::vector<uint32_t>(keyed_.size());
};

// Relevance of gallery item j to query i: same class code, or a shared bit of the label masks.
struct SameClass {
  const int64_t* query;
  const int64_t* gallery;
  bool operator()(int64_t i, uint32_t j) const { return query[i] == gallery[j]; }
};

struct SharedLabel {
  const uint64_t* query;
  const uint64_t* gallery;
  int64_t words;
  bool operator()(int64_t i, uint32_t j) const {
    const uint64_t* a = query + i * words;
    const uint64_t* b = gallery + static_cast<int64_t>(j) * words;
    uint64_t any = 0;
    for (int64_t w = 0; w < words; ++w) any |= a[w] & b[w];
    return any != 0;
  }
};

// Runs visit(i, ranked_items) for every query row, queries spread over threads.
template <typename T, typename Relevant, typename Visit>
void for_each_ranked(const T* scores, int64_t q, uint32_t n, uint32_t top, const Relevant& relevant,
                     int threads, Visit visit) {
  threads = std::max(1, threads);
  // Allocated here, outside the parallel region, so that a bad_alloc reaches the caller.
  std::vector<Ranker<T>> rankers(threads, Ranker<T>(n));
#pragma omp parallel for num_threads(threads) schedule(dynamic, 4)
  for (int64_t i = 0; i < q; ++i) {
#ifdef _OPENMP
    Ranker<T>& ranker = rankers[omp_get_thread_num()];
#else
    Ranker<T>& ranker = rankers[0];
#endif
    const auto of_query = [&](uint32_t j) { return relevant(i, j); };
    visit(i, ranker.rank(scores + i * static_cast<int64_t>(n), n, top, of_query));
  }
}

// Per-query AP over the first `top` ranked items; no relevant item: NaN if skip_empty, else 0.
template <typename T, typename Relevant>
void average_precisions(const T* scores, int64_t q, uint32_t n, uint32_t top, const Relevant& relevant,
                        bool skip_empty, int threads, double* out) {
  for_each_ranked(scores, q, n, top, relevant, threads, [&](int64_t i, const uint32_t* ranked) {
    int64_t found = 0;
    double precision_sum = 0.0;
    for (uint32_t r = 0; r < top; ++r) {
      if (ranked[r] & 1u) {
        ++found;
        precision_sum += static_cast<double>(found) / static_cast<double>(r + 1);
      }
    }
    out[i] = found ? precision_sum / static_cast<double>(found)
                   : (skip_empty ? std::numeric_limits<double>::quiet_NaN() : 0.0);
  });
}

// out[i * m + j] = relevant items among query i's first cutoffs[j] (cutoffs increasing, last <= n).
template <typename T, typename Relevant>
void hits_at(const T* scores, int64_t q, uint32_t n, const int64_t* cutoffs, int64_t m,
             const Relevant& relevant, int threads, int64_t* out) {
  const auto top = static_cast<uint32_t>(cutoffs[m - 1]);
  for_each_ranked(scores, q, n, top, relevant, threads, [&](int64_t i, const uint32_t* ranked) {
    int64_t found = 0, next = 0;
    for (uint32_t r = 0; r < top; ++r) {
      found += ranked[r] & 1u;
      for (; next < m && cutoffs[next] == r + 1; ++next) out[i * m + next] = found;
    }
  });
}

}  // namespace drcl
