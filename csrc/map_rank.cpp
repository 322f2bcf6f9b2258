// pybind11 bindings of rank.h: numpy buffers in, numpy arrays out.
//
// Python computes a chunk of scores (one BLAS call) and hands it here; OpenMP
// spreads its queries over threads while the GIL is released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "rank.h"

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

}  // namespace

PYBIND11_MODULE(_map_cpp, m) {
  m.doc() = "Exact ranking of score rows for MAP and precision-recall (C++, OpenMP)";
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
}
