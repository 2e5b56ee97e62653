// cd_fast._C: the batch step segmenter. Strings are read in CPython's own storage with the GIL
// released (str objects are immutable and we hold references), split across a thread pool.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <exception>
#include <thread>
#include <vector>

#ifdef __linux__
#include <sched.h>
#endif

#include "segment.hpp"

namespace py = pybind11;

namespace cd_fast {
namespace {

struct TextView {
  int kind;  // PyUnicode_1BYTE_KIND, 2 or 4
  const void* data;
  int64_t length;
};

CodePoints to_code_points(const py::handle& text, const char* what) {
  if (!PyUnicode_Check(text.ptr())) {
    throw py::type_error(std::string(what) + " must be str, got " +
                         std::string(py::str(py::type::handle_of(text).attr("__name__"))));
  }
  CodePoints out;
  const Py_ssize_t n = PyUnicode_GET_LENGTH(text.ptr());
  out.reserve(static_cast<size_t>(n));
  for (Py_ssize_t i = 0; i < n; ++i) out.push_back(PyUnicode_READ_CHAR(text.ptr(), i));
  return out;
}

int available_cpus() {
#ifdef __linux__
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
  return std::max(1u, std::thread::hardware_concurrency());
}

class Segmenter {
 public:
  Segmenter(const py::list& markers, const py::list& abbreviations, int64_t min_chars) {
    if (min_chars < 0) throw py::value_error("min_chars must be >= 0");
    for (const py::handle& marker : markers) {
      CodePoints m = to_code_points(marker, "marker");
      if (m.empty()) throw py::value_error("markers must be non-empty");
      rules_.markers.push_back(std::move(m));
    }
    for (const py::handle& abbreviation : abbreviations) {
      CodePoints a = to_code_points(abbreviation, "abbreviation");
      for (CodePoint& c : a) {
        if (c >= 'A' && c <= 'Z') c += 32;
      }
      rules_.abbreviations.push_back(std::move(a));
    }
    rules_.min_chars = min_chars;
    rules_.index_markers();
  }

  py::list segment(const py::sequence& texts, int threads) const {
    if (threads < 0) throw py::value_error("threads must be >= 0");
    if (PyUnicode_Check(texts.ptr()) || PyBytes_Check(texts.ptr())) {
      throw py::type_error("texts must be a list of str, not a single string; pass [text]");
    }
    const size_t count = py::len(texts);
    std::vector<py::object> keep;  // owns the strings while the GIL is released
    std::vector<TextView> views;
    keep.reserve(count);
    views.reserve(count);
    for (size_t i = 0; i < count; ++i) {
      py::object text = texts[i];
      if (!PyUnicode_Check(text.ptr())) {
        throw py::type_error("texts[" + std::to_string(i) + "] is " +
                             std::string(py::str(py::type::handle_of(text).attr("__name__"))) +
                             ", expected str");
      }
#if PY_VERSION_HEX < 0x030C0000
      if (PyUnicode_READY(text.ptr()) < 0) throw py::error_already_set();
#endif
      views.push_back({PyUnicode_KIND(text.ptr()), PyUnicode_DATA(text.ptr()),
                       static_cast<int64_t>(PyUnicode_GET_LENGTH(text.ptr()))});
      keep.push_back(std::move(text));
    }

    std::vector<std::vector<int64_t>> results(count);
    {
      py::gil_scoped_release release;
      run_pool(views, results, threads == 0 ? available_cpus() : threads);
    }

    // One buffer for every text's offsets, handed out as views: a NumPy array per text costs
    // ~1 us under the GIL, a slice ~0.2 us, and this part is the serial tail of the pool.
    size_t total = 0;
    for (const std::vector<int64_t>& offsets : results) total += offsets.size();
    py::array_t<int64_t> buffer({static_cast<py::ssize_t>(total / 2), py::ssize_t{2}});
    int64_t* cursor = buffer.mutable_data();
    py::list out(count);
    py::ssize_t row = 0;
    for (size_t i = 0; i < count; ++i) {
      const std::vector<int64_t>& offsets = results[i];
      if (!offsets.empty()) std::memcpy(cursor, offsets.data(), offsets.size() * sizeof(int64_t));
      cursor += offsets.size();
      const py::ssize_t steps = static_cast<py::ssize_t>(offsets.size() / 2);
      PyObject* view = PyObject_GetItem(
          buffer.ptr(), py::slice(row, row + steps, 1).ptr());
      if (view == nullptr) throw py::error_already_set();
      PyList_SET_ITEM(out.ptr(), static_cast<py::ssize_t>(i), view);
      row += steps;
    }
    return out;
  }

 private:
  void segment_one(const TextView& view, std::vector<int64_t>& out) const {
    switch (view.kind) {
      case PyUnicode_1BYTE_KIND:
        segment_text(static_cast<const uint8_t*>(view.data), view.length, rules_, out);
        break;
      case PyUnicode_2BYTE_KIND:
        segment_text(static_cast<const uint16_t*>(view.data), view.length, rules_, out);
        break;
      default:
        segment_text(static_cast<const uint32_t*>(view.data), view.length, rules_, out);
        break;
    }
  }

  void run_pool(const std::vector<TextView>& views, std::vector<std::vector<int64_t>>& results,
                int threads) const {
    const size_t count = views.size();
    const size_t workers = std::min<size_t>(static_cast<size_t>(threads), count);
    if (workers <= 1) {
      for (size_t i = 0; i < count; ++i) segment_one(views[i], results[i]);
      return;
    }
    // Dynamic chunks: trace lengths vary ~100x, static splits would leave threads idle.
    constexpr size_t kChunk = 8;
    std::atomic<size_t> next{0};
    std::exception_ptr error;
    std::atomic<bool> failed{false};
    auto work = [&] {
      try {
        while (!failed.load(std::memory_order_relaxed)) {
          const size_t begin = next.fetch_add(kChunk);
          if (begin >= count) break;
          const size_t end = std::min(begin + kChunk, count);
          for (size_t i = begin; i < end; ++i) segment_one(views[i], results[i]);
        }
      } catch (...) {
        if (!failed.exchange(true)) error = std::current_exception();
      }
    };
    std::vector<std::thread> pool;
    pool.reserve(workers - 1);
    for (size_t t = 1; t < workers; ++t) pool.emplace_back(work);
    work();
    for (std::thread& thread : pool) thread.join();
    if (error) std::rethrow_exception(error);
  }

  SegmentRules rules_;
};

}  // namespace
}  // namespace cd_fast

PYBIND11_MODULE(_C, m) {
  m.doc() = "cd_fast native extension: the batch reasoning-step segmenter";
  py::class_<cd_fast::Segmenter>(m, "Segmenter")
      .def(py::init<const py::list&, const py::list&, int64_t>(), py::arg("markers"),
           py::arg("abbreviations"), py::arg("min_chars"))
      .def("segment", &cd_fast::Segmenter::segment, py::arg("texts"), py::arg("threads") = 0,
           "Per text an int64 (n_steps, 2) array of [start, end) character offsets.");
  m.def("available_cpus", &cd_fast::available_cpus,
        "CPUs this process may run on (sched_getaffinity).");
}
