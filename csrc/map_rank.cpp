// pybind11 bindings of rank.h and topk.h: numpy buffers in, numpy arrays out.
//
// Python computes a chunk of scores (one BLAS call) and hands it here; OpenMP
// spreads its queries over threads while the GIL is released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>
#include <type_traits>

#include "rank.h"
#include "topk.h"

namespace py = pybind11;

namespace {

using drcl::SameClass;
using drcl::SharedLabel;

using Labels = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

void require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

// Calls fn(relevant) with the relevance rule the label arrays encode:
// 1-D arrays are class codes, 2-D arrays are bitmasks of 64 labels per word.
template <typename Fn>
void with_relevance(const Labels& query, const Labels& gallery, int64_t q, int64_t n, Fn fn) {
  require(query.ndim() == gallery.ndim() && (query.ndim() == 1 || query.ndim() == 2),
          "query and gallery labels must both be 1-D class codes or both 2-D label masks");
  require(query.shape(0) == q, "query labels need one row per score row");
  require(gallery.shape(0) == n, "gallery labels need one row per score column");
  if (query.ndim() == 1) {
    fn(SameClass{query.data(), gallery.data()});
  } else {
    require(query.shape(1) == gallery.shape(1), "query and gallery masks need the same number of words");
    fn(SharedLabel{reinterpret_cast<const uint64_t*>(query.data()),
                   reinterpret_cast<const uint64_t*>(gallery.data()), query.shape(1)});
  }
}

template <typename T>
using Scores = py::array_t<T, py::array::c_style>;

template <typename T>
uint32_t gallery_size(const Scores<T>& scores) {
  require(scores.ndim() == 2, "scores must be a 2-D (queries, gallery) array");
  // Two gallery indices per key bit pattern: the relevance bit takes the lowest.
  require(scores.shape(1) >= 1 && scores.shape(1) < (int64_t{1} << 31),
          "the gallery must have between 1 and 2**31 - 1 items");
  return static_cast<uint32_t>(scores.shape(1));
}

template <typename T>
py::array_t<double> py_average_precisions(const Scores<T>& scores, const Labels& query, const Labels& gallery,
                                          int64_t top, bool skip_empty, int threads) {
  const uint32_t n = gallery_size(scores);
  const int64_t q = scores.shape(0);
  require(top >= 1 && top <= n, "top must be between 1 and the gallery size");
  py::array_t<double> out(q);
  double* result = out.mutable_data();
  with_relevance(query, gallery, q, n, [&](auto relevant) {
    py::gil_scoped_release release;
    drcl::average_precisions(scores.data(), q, n, static_cast<uint32_t>(top), relevant, skip_empty, threads, result);
  });
  return out;
}

template <typename T>
py::array_t<int64_t> py_hits_at(const Scores<T>& scores, const Labels& query, const Labels& gallery,
                                 const Labels& cutoffs, int threads) {
  const uint32_t n = gallery_size(scores);
  const int64_t q = scores.shape(0), m = cutoffs.size();
  const int64_t* cut = cutoffs.data();
  require(cutoffs.ndim() == 1 && m >= 1, "cutoffs must be a non-empty 1-D array");
  for (int64_t j = 0; j < m; ++j) {
    require(cut[j] >= 1 && cut[j] <= n && (j == 0 || cut[j] > cut[j - 1]),
            "cutoffs must increase strictly and lie between 1 and the gallery size");
  }
  py::array_t<int64_t> out({q, m});
  int64_t* result = out.mutable_data();
  with_relevance(query, gallery, q, n, [&](auto relevant) {
    py::gil_scoped_release release;
    drcl::hits_at(scores.data(), q, n, cut, m, relevant, threads, result);
  });
  return out;
}

std::string shape_of(const py::array& a) {
  std::string text = "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) text += (d ? ", " : "") + std::to_string(a.shape(d));
  return text + (a.ndim() == 1 ? ",)" : ")");
}

// The top-k functions write into the caller's lists, so they take them as they are: a
// converted copy would receive the result and be thrown away.
template <typename T>
T* list_data(py::array& list, const std::string& name, int64_t q, int64_t k, const std::string& dtype) {
  require(list.dtype().is(py::dtype::of<T>()), name + " must be " + dtype);
  require(list.ndim() == 2 && list.shape(0) == q && list.shape(1) == k,
          name + " must have shape (" + std::to_string(q) + ", " + std::to_string(k) + "), got " + shape_of(list));
  require((list.flags() & py::array::c_style) && list.writeable(),
          name + " must be a writeable C-contiguous array (it is updated in place)");
  return static_cast<T*>(list.mutable_data());
}

// Calls fn(scores, indices, k) with the checked lists' typed buffers (q rows each).
template <typename Fn>
void with_lists(py::array& best_scores, py::array& best_indices, int64_t q, Fn fn) {
  require(best_scores.ndim() == 2 && best_scores.shape(1) >= 1,
          "best_scores must be a 2-D (queries, k) array with k >= 1");
  const int64_t k = best_scores.shape(1);
  if (best_scores.dtype().is(py::dtype::of<float>())) {
    float* scores = list_data<float>(best_scores, "best_scores", q, k, "float32");
    fn(scores, list_data<int64_t>(best_indices, "best_indices", q, k, "int64"), k);
  } else if (best_scores.dtype().is(py::dtype::of<double>())) {
    double* scores = list_data<double>(best_scores, "best_scores", q, k, "float64");
    fn(scores, list_data<int64_t>(best_indices, "best_indices", q, k, "int64"), k);
  } else {
    throw std::invalid_argument("best_scores must be float32 or float64");
  }
}

void py_topk_merge(const py::array& scores, int64_t offset, py::array& best_scores, py::array& best_indices,
                   int threads) {
  require(scores.ndim() == 2 && scores.shape(1) >= 1, "scores must be a 2-D (queries, block items) array");
  require(scores.flags() & py::array::c_style, "scores must be C-contiguous");
  require(scores.dtype().is(py::dtype::of<float>()) || scores.dtype().is(py::dtype::of<double>()),
          "scores must be float32 or float64");
  require(best_scores.dtype().is(scores.dtype()), "best_scores must have the scores' dtype");
  require(offset >= 0, "offset (the block's first gallery index) must be >= 0");
  require(threads >= 1, "threads must be >= 1");
  const int64_t q = scores.shape(0), n = scores.shape(1);
  with_lists(best_scores, best_indices, q, [&](auto* best, int64_t* indices, int64_t k) {
    using T = std::remove_pointer_t<decltype(best)>;
    const T* block = static_cast<const T*>(scores.data());
    py::gil_scoped_release release;
    drcl::merge_block(block, q, n, offset, best, indices, k, threads);
  });
}

void py_topk_sort(py::array& best_scores, py::array& best_indices, int threads) {
  require(threads >= 1, "threads must be >= 1");
  require(best_scores.ndim() == 2, "best_scores must be a 2-D (queries, k) array");
  const int64_t q = best_scores.shape(0);
  with_lists(best_scores, best_indices, q, [&](auto* best, int64_t* indices, int64_t k) {
    py::gil_scoped_release release;
    drcl::sort_lists(best, indices, q, k, threads);
  });
}

}  // namespace

PYBIND11_MODULE(_map_cpp, m) {
  m.doc() = "Exact ranking of score rows for MAP, precision-recall and top-k search (C++, OpenMP)";
  const char* ap_doc =
      "Per-query AP (float64) over the first `top` ranked items of each score row.\n"
      "Labels: int64 class codes (q,), (n,) or uint64 bitmasks as int64 (q, w), (n, w).\n"
      "A query with no relevant item among them gets NaN if skip_empty, else 0.";
  const char* hits_doc = "Relevant items among the first cutoffs[j] ranked items, (q, len(cutoffs)) int64.";
  m.def("average_precisions", &py_average_precisions<float>, ap_doc, py::arg("scores"), py::arg("query_labels"),
        py::arg("gallery_labels"), py::arg("top"), py::arg("skip_empty"), py::arg("threads"));
  m.def("average_precisions", &py_average_precisions<double>, py::arg("scores"), py::arg("query_labels"),
        py::arg("gallery_labels"), py::arg("top"), py::arg("skip_empty"), py::arg("threads"));
  m.def("hits_at", &py_hits_at<float>, hits_doc, py::arg("scores"), py::arg("query_labels"),
        py::arg("gallery_labels"), py::arg("cutoffs"), py::arg("threads"));
  m.def("hits_at", &py_hits_at<double>, py::arg("scores"), py::arg("query_labels"), py::arg("gallery_labels"),
        py::arg("cutoffs"), py::arg("threads"));
  const char* merge_doc =
      "Merges a (q, n) block of scores, gallery items offset..offset + n, into q running top-k lists\n"
      "in place: best_scores (q, k) in the scores' dtype, best_indices (q, k) int64, kept as heaps\n"
      "(topk_sort orders them: higher score, then lower index). Blocks must arrive in gallery\n"
      "order; start the lists at -inf and -1.";
  m.def("topk_merge", &py_topk_merge, merge_doc, py::arg("scores"), py::arg("offset"), py::arg("best_scores"),
        py::arg("best_indices"), py::arg("threads"));
  m.def("topk_sort", &py_topk_sort, "Sorts each row of top-k lists made by topk_merge best first, in place.",
        py::arg("best_scores"), py::arg("best_indices"), py::arg("threads"));
}
