// cd_fast._C: the batch step segmenter and step-role tagger. Strings are read in CPython's own
// storage with the GIL released (str objects are immutable and we hold references), split across
// a thread pool.
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

#include "roles.hpp"
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

TextView text_view(const py::handle& text, const std::string& what) {
  if (!PyUnicode_Check(text.ptr())) {
    throw py::type_error(what + " is " +
                         std::string(py::str(py::type::handle_of(text).attr("__name__"))) +
                         ", expected str");
  }
#if PY_VERSION_HEX < 0x030C0000
  if (PyUnicode_READY(text.ptr()) < 0) throw py::error_already_set();
#endif
  return {static_cast<int>(PyUnicode_KIND(text.ptr())), PyUnicode_DATA(text.ptr()),
          static_cast<int64_t>(PyUnicode_GET_LENGTH(text.ptr()))};
}

// Runs work(i) for i in [0, count) on `threads` threads (dynamic chunks: lengths vary ~100x).
template <typename Work>
void parallel_for(size_t count, int threads, Work work) {
  const size_t workers = std::min<size_t>(static_cast<size_t>(threads), count);
  if (workers <= 1) {
    for (size_t i = 0; i < count; ++i) work(i);
    return;
  }
  constexpr size_t kChunk = 8;
  std::atomic<size_t> next{0};
  std::exception_ptr error;
  std::atomic<bool> failed{false};
  auto loop = [&] {
    try {
      while (!failed.load(std::memory_order_relaxed)) {
        const size_t begin = next.fetch_add(kChunk);
        if (begin >= count) break;
        const size_t end = std::min(begin + kChunk, count);
        for (size_t i = begin; i < end; ++i) work(i);
      }
    } catch (...) {
      if (!failed.exchange(true)) error = std::current_exception();
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(workers - 1);
  for (size_t t = 1; t < workers; ++t) pool.emplace_back(loop);
  loop();
  for (std::thread& thread : pool) thread.join();
  if (error) std::rethrow_exception(error);
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
      views.push_back(text_view(text, "texts[" + std::to_string(i) + "]"));
      keep.push_back(std::move(text));
    }

    std::vector<std::vector<int64_t>> results(count);
    {
      py::gil_scoped_release release;
      parallel_for(count, threads == 0 ? available_cpus() : threads,
                   [&](size_t i) { segment_one(views[i], results[i]); });
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

  SegmentRules rules_;
};

std::u32string to_u32(const py::handle& text, const char* what) {
  CodePoints points = to_code_points(text, what);
  return std::u32string(points.begin(), points.end());
}

std::unique_ptr<regex::Regex> compile(const py::handle& pattern, const char* what) {
  if (pattern.is_none()) return nullptr;
  try {
    return std::make_unique<regex::Regex>(to_u32(pattern, what));
  } catch (const std::invalid_argument& error) {
    throw py::value_error(std::string(what) + ": " + error.what());
  }
}

// A Python str's code points, read in place (no GIL needed: str objects are immutable).
void read_text(const TextView& view, std::u32string& out) {
  out.resize(static_cast<size_t>(view.length));
  for (int64_t i = 0; i < view.length; ++i) {
    out[i] = PyUnicode_READ(view.kind, view.data, i);
  }
}

class RoleTagger {
 public:
  // cues: (role, confidence, head pattern or None, free pattern or None, triggers) in the order
  // they are tried; opening: the same for the opening cue.
  RoleTagger(const py::list& cues, const py::tuple& opening, const py::str& plan,
             const py::str& forward, const py::str& connective, const py::str& inference,
             const py::list& stop) {
    for (const py::handle& cue : cues) add_cue(py::reinterpret_borrow<py::tuple>(cue), "cue");
    add_cue(opening, "opening cue");
    if (lexicon_.cues.size() > 32) throw py::value_error("at most 31 cues");
    lexicon_.plan = compile(plan, "plan pattern");
    lexicon_.forward = compile(forward, "forward pattern");
    lexicon_.connective = compile(connective, "connective pattern");
    lexicon_.inference = compile(inference, "inference pattern");
    for (const py::handle& word : stop) lexicon_.stop_words.push_back(to_u32(word, "stop word"));
    for (const std::u32string& word : lexicon_.stop_words) lexicon_.stop.insert(word);
    lexicon_.index_triggers();
  }

  // Per trace (lowered text, its [n, 2] sentence offsets, the question lowered and as written,
  // where the answer is stated or -1): roles int8, confidences float64 and abandoned bool, each
  // one array over every trace's sentences in order.
  py::tuple tag(const py::list& lowered, const py::list& sentences, const py::list& questions,
                const py::list& questions_lowered, const std::vector<int64_t>& answer_at,
                int threads) const {
    const size_t count = py::len(lowered);
    if (py::len(sentences) != count || py::len(questions) != count ||
        py::len(questions_lowered) != count || answer_at.size() != count) {
      throw py::value_error("lowered, sentences, questions, questions_lowered and answer_at "
                            "must have one entry per trace");
    }
    if (threads < 0) throw py::value_error("threads must be >= 0");
    using Offsets = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
    std::vector<Offsets> offsets;
    std::vector<TextView> texts, asked, asked_lowered;
    std::vector<size_t> first(count + 1, 0);
    for (size_t i = 0; i < count; ++i) {
      const std::string at = "[" + std::to_string(i) + "]";
      texts.push_back(text_view(lowered[i], "lowered" + at));
      asked.push_back(text_view(questions[i], "questions" + at));
      asked_lowered.push_back(text_view(questions_lowered[i], "questions_lowered" + at));
      Offsets spans = Offsets::ensure(sentences[i]);
      if (!spans || (spans.size() > 0 && (spans.ndim() != 2 || spans.shape(1) != 2))) {
        throw py::value_error("sentences" + at + " must be an int64 array of shape (n, 2)");
      }
      const int64_t* span = spans.data();
      const size_t n = spans.size() / 2;
      for (size_t k = 0; k < n; ++k) {
        const int64_t a = span[2 * k], b = span[2 * k + 1];
        if (a < 0 || a > b || b > texts.back().length || (k > 0 && a < span[2 * k - 2])) {
          throw py::value_error("sentences" + at + "[" + std::to_string(k) + "] = (" +
                                std::to_string(a) + ", " + std::to_string(b) +
                                ") is not a span of the text (length " +
                                std::to_string(texts.back().length) +
                                ") in order after the one before");
        }
      }
      first[i + 1] = first[i] + n;
      offsets.push_back(std::move(spans));
    }
    const size_t total = first[count];
    py::array_t<int8_t> role(static_cast<py::ssize_t>(total));
    py::array_t<double> confidence(static_cast<py::ssize_t>(total));
    py::array_t<bool> abandoned(static_cast<py::ssize_t>(total));
    int8_t* role_out = role.mutable_data();
    double* confidence_out = confidence.mutable_data();
    bool* abandoned_out = abandoned.mutable_data();
    {
      py::gil_scoped_release release;
      parallel_for(count, threads == 0 ? available_cpus() : threads, [&](size_t i) {
        thread_local std::u32string text, question, question_lowered;
        read_text(texts[i], text);
        read_text(asked[i], question);
        read_text(asked_lowered[i], question_lowered);
        const roles::TraceInput input{text, offsets[i].data(), first[i + 1] - first[i],
                                      question_lowered, question, answer_at[i]};
        const roles::TraceRoles found = roles::tag_trace(lexicon_, input);
        for (size_t k = 0; k < input.count; ++k) {
          role_out[first[i] + k] = found.role[k];
          confidence_out[first[i] + k] = found.confidence[k];
          abandoned_out[first[i] + k] = found.abandoned[k] != 0;
        }
      });
    }
    return py::make_tuple(role, confidence, abandoned);
  }

 private:
  void add_cue(const py::tuple& spec, const char* what) {
    if (spec.size() != 5) throw py::value_error(std::string(what) + " must have 5 fields");
    roles::Cue cue;
    cue.role = spec[0].cast<int8_t>();
    cue.confidence = spec[1].cast<double>();
    cue.head = compile(spec[2], what);
    cue.free = compile(spec[3], what);
    for (const py::handle& trigger : spec[4]) cue.triggers.push_back(to_u32(trigger, "trigger"));
    lexicon_.cues.push_back(std::move(cue));
  }

  roles::Lexicon lexicon_;
};

// One pattern of the engine the tagger runs its lexicon with (tests compare it with `re`).
class Pattern {
 public:
  explicit Pattern(const py::str& pattern) : regex_(compile(pattern, "pattern")) {}
  bool match(const py::str& text) const {
    const std::u32string t = to_u32(text, "text");
    regex::Regex::Stack stack;
    return regex_->match(t.data(), t.size(), stack);
  }
  bool search(const py::str& text) const {
    const std::u32string t = to_u32(text, "text");
    regex::Regex::Stack stack;
    return regex_->search(t.data(), t.size(), stack);
  }

 private:
  std::unique_ptr<regex::Regex> regex_;
};

}  // namespace
}  // namespace cd_fast

PYBIND11_MODULE(_C, m) {
  m.doc() = "cd_fast native extension: the batch reasoning-step segmenter and step-role tagger";
  py::class_<cd_fast::Segmenter>(m, "Segmenter")
      .def(py::init<const py::list&, const py::list&, int64_t>(), py::arg("markers"),
           py::arg("abbreviations"), py::arg("min_chars"))
      .def("segment", &cd_fast::Segmenter::segment, py::arg("texts"), py::arg("threads") = 0,
           "Per text an int64 (n_steps, 2) array of [start, end) character offsets.");
  py::class_<cd_fast::RoleTagger>(m, "RoleTagger")
      .def(py::init<const py::list&, const py::tuple&, const py::str&, const py::str&,
                    const py::str&, const py::str&, const py::list&>(),
           py::arg("cues"), py::arg("opening"), py::arg("plan"), py::arg("forward"),
           py::arg("connective"), py::arg("inference"), py::arg("stop"))
      .def("tag", &cd_fast::RoleTagger::tag, py::arg("lowered"), py::arg("sentences"),
           py::arg("questions"), py::arg("questions_lowered"), py::arg("answer_at"),
           py::arg("threads") = 0,
           "(roles int8, confidences float64, abandoned bool), each over every trace's "
           "sentences in order.");
  py::class_<cd_fast::Pattern>(m, "Pattern")
      .def(py::init<const py::str&>(), py::arg("pattern"))
      .def("match", &cd_fast::Pattern::match, py::arg("text"))
      .def("search", &cd_fast::Pattern::search, py::arg("text"));
  m.def("available_cpus", &cd_fast::available_cpus,
        "CPUs this process may run on (sched_getaffinity).");
}
