// Reasoning-step segmentation over code points. Mirrors cd_fast/segment.py (the reference and
// the place where the rules are written out); both must give identical offsets.
//
// Text arrives as CPython's own compact storage (1, 2 or 4 bytes per code point), so indices are
// Python str indices with no UTF-8 decoding and no copy.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace cd_fast {

using CodePoint = uint32_t;
using CodePoints = std::vector<CodePoint>;

struct Range {
  CodePoint lo, hi;
};

inline bool in_ranges(CodePoint c, const Range* ranges, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (c >= ranges[i].lo && c <= ranges[i].hi) return true;
  }
  return false;
}

// Tables shared with cd_fast/segment.py.
constexpr Range kSpaceRanges[] = {{0x09, 0x0D},     {0x20, 0x20},     {0x85, 0x85},
                                  {0xA0, 0xA0},     {0x1680, 0x1680}, {0x2000, 0x200A},
                                  {0x2028, 0x2029}, {0x202F, 0x202F}, {0x205F, 0x205F},
                                  {0x3000, 0x3000}};
constexpr Range kExtendRanges[] = {
    {0x0300, 0x036F}, {0x0483, 0x0489}, {0x0591, 0x05BD},   {0x0610, 0x061A},
    {0x064B, 0x065F}, {0x0900, 0x0903}, {0x093A, 0x094F},   {0x0E31, 0x0E3A},
    {0x0E47, 0x0E4E}, {0x1AB0, 0x1AFF}, {0x1DC0, 0x1DFF},   {0x200C, 0x200D},
    {0x20D0, 0x20FF}, {0x302A, 0x302F}, {0x3099, 0x309A},   {0xFE00, 0xFE0F},
    {0xFE20, 0xFE2F}, {0x1F3FB, 0x1F3FF}, {0xE0020, 0xE007F}, {0xE0100, 0xE01EF}};
constexpr Range kNonWordRanges[] = {{0x80, 0xBF},     {0xD7, 0xD7},     {0xF7, 0xF7},
                                    {0x2000, 0x206F}, {0x3000, 0x303F}, {0xFF01, 0xFF0F},
                                    {0xFF1A, 0xFF20}, {0xFF3B, 0xFF40}, {0xFF5B, 0xFF65}};

inline bool is_space(CodePoint c) {
  if (c < 0x80) return c == 0x20 || (c >= 0x09 && c <= 0x0D);
  return in_ranges(c, kSpaceRanges, std::size(kSpaceRanges));
}

inline bool is_extend(CodePoint c) {
  return c >= 0x0300 && in_ranges(c, kExtendRanges, std::size(kExtendRanges));
}

inline bool is_word(CodePoint c) {
  if (c < 0x80) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           c == '_';
  }
  return !is_space(c) && !in_ranges(c, kNonWordRanges, std::size(kNonWordRanges));
}

inline bool is_cjk_terminator(CodePoint c) { return c == 0x3002 || c == 0xFF01 || c == 0xFF1F; }

inline bool is_terminator(CodePoint c) {
  return c == '.' || c == '!' || c == '?' || is_cjk_terminator(c);
}

inline bool is_closer(CodePoint c) {
  switch (c) {
    case '"': case '\'': case ')': case ']': case '}': case '*':
    case 0x201D: case 0x2019: case 0x300D: case 0x300F: case 0xFF09:
      return true;
    default:
      return false;
  }
}

inline bool is_opener(CodePoint c) {
  switch (c) {
    case '"': case '\'': case '(': case '[': case '{': case '*':
    case 0x201C: case 0x2018: case 0x300C: case 0x300E: case 0xFF08:
      return true;
    default:
      return false;
  }
}

inline bool is_digit(CodePoint c) { return c >= '0' && c <= '9'; }

struct SegmentRules {
  std::vector<CodePoints> markers;
  std::vector<CodePoints> abbreviations;  // ASCII-lowercased
  int64_t min_chars = 16;
  // First characters of the markers: most word starts are rejected by one lookup.
  bool ascii_first[128] = {};
  bool non_ascii_first = false;

  void index_markers() {
    std::fill(std::begin(ascii_first), std::end(ascii_first), false);
    non_ascii_first = false;
    for (const CodePoints& marker : markers) {
      if (marker[0] < 128) {
        ascii_first[marker[0]] = true;
      } else {
        non_ascii_first = true;
      }
    }
  }

  bool may_start_marker(CodePoint c) const { return c < 128 ? ascii_first[c] : non_ascii_first; }
};

template <typename CharT>
class TextSegmenter {
 public:
  TextSegmenter(const CharT* s, int64_t n, const SegmentRules& rules)
      : s_(s), n_(n), rules_(rules) {}

  // Appends [start, end) pairs for the whole text to `out`.
  void run(std::vector<int64_t>& out) {
    if (n_ == 0) return;
    find_protected_spans();
    find_raw_boundaries();
    merge_short(out);
  }

 private:
  CodePoint at(int64_t i) const { return static_cast<CodePoint>(s_[i]); }

  bool starts_with(int64_t i, const char* lit) const {
    for (int64_t k = 0; lit[k]; ++k) {
      if (i + k >= n_ || at(i + k) != static_cast<CodePoint>(lit[k])) return false;
    }
    return true;
  }

  int64_t find(const char* lit, int64_t from) const {
    for (int64_t i = from; i < n_; ++i) {
      if (at(i) == static_cast<CodePoint>(lit[0]) && starts_with(i, lit)) return i;
    }
    return -1;
  }

  int64_t find_newline(int64_t from) const {
    for (int64_t i = from; i < n_; ++i) {
      if (at(i) == '\n') return i;
    }
    return -1;
  }

  int64_t closing_fence_end(int64_t fence) const {
    int64_t line = find_newline(fence);
    while (line >= 0) {
      int64_t m = line + 1;
      while (m < n_ && (at(m) == ' ' || at(m) == '\t')) ++m;
      if (starts_with(m, "```")) {
        const int64_t end = find_newline(m);
        return end < 0 ? n_ : end;
      }
      line = find_newline(line + 1);
    }
    return n_;
  }

  // Index of the closing '$', or -(position where the search stopped).
  int64_t inline_math_close(int64_t opener) const {
    for (int64_t k = opener + 1; k < n_; ++k) {
      const CodePoint ch = at(k);
      if (ch == '\n') {
        int64_t m = k + 1;
        while (m < n_ && (at(m) == ' ' || at(m) == '\t' || at(m) == '\r')) ++m;
        if (m < n_ && at(m) == '\n') return -m;
      } else if (ch == '$' && !is_space(at(k - 1)) && at(k - 1) != '\\' &&
                 !(k + 1 < n_ && is_digit(at(k + 1)))) {
        return k;
      }
    }
    return -n_;
  }

  void find_protected_spans() {
    // A failed search fails for every later opener of its kind too: remember, stay linear.
    bool paren_missing = false, bracket_missing = false, dollars_missing = false;
    int64_t inline_fails_before = -1;
    int64_t i = 0;
    while (i < n_) {
      if (i == 0 || at(i - 1) == '\n') {
        int64_t j = i;
        while (j < n_ && (at(j) == ' ' || at(j) == '\t')) ++j;
        if (starts_with(j, "```")) {
          const int64_t end = closing_fence_end(j);
          spans_.emplace_back(j, end);
          i = end;
          continue;
        }
      }
      const CodePoint c = at(i);
      if (c == '\\' && i + 1 < n_) {
        const CodePoint d = at(i + 1);
        if (d == '(' || d == '[') {
          bool& missing = d == '(' ? paren_missing : bracket_missing;
          if (!missing) {
            const int64_t k = find(d == '(' ? "\\)" : "\\]", i + 2);
            if (k >= 0) {
              spans_.emplace_back(i, k + 2);
              i = k + 2;
              continue;
            }
            missing = true;
          }
        }
        i += 2;
        continue;
      }
      if (c == '$') {
        if (i + 1 < n_ && at(i + 1) == '$') {
          if (!dollars_missing) {
            const int64_t k = find("$$", i + 2);
            if (k >= 0) {
              spans_.emplace_back(i, k + 2);
              i = k + 2;
              continue;
            }
            dollars_missing = true;
          }
          i += 2;
          continue;
        }
        if (i >= inline_fails_before && i + 1 < n_ && !is_space(at(i + 1))) {
          const int64_t k = inline_math_close(i);
          if (k >= 0) {
            spans_.emplace_back(i, k + 1);
            i = k + 1;
            continue;
          }
          inline_fails_before = -k;
        }
      }
      ++i;
    }
  }

  bool starts_marker(int64_t i) const {
    if (!rules_.may_start_marker(at(i))) return false;
    for (const CodePoints& marker : rules_.markers) {
      const int64_t len = static_cast<int64_t>(marker.size());
      if (i + len > n_ || at(i) != marker[0]) continue;
      bool match = true;
      for (int64_t k = 1; k < len && match; ++k) match = at(i + k) == marker[k];
      if (match && (i + len >= n_ || !is_word(at(i + len)))) return true;
    }
    return false;
  }

  bool is_abbreviation(int64_t from, int64_t to) const {  // [from, to) ASCII-lowercased
    const int64_t len = to - from;
    for (const CodePoints& abbreviation : rules_.abbreviations) {
      if (static_cast<int64_t>(abbreviation.size()) != len) continue;
      bool match = true;
      for (int64_t k = 0; k < len && match; ++k) {
        CodePoint c = at(from + k);
        if (c >= 'A' && c <= 'Z') c += 32;
        match = c == abbreviation[k];
      }
      if (match) return true;
    }
    return false;
  }

  bool ends_sentence(int64_t space_start, CodePoint next_char) const {
    int64_t j = space_start - 1;
    while (j >= 0 && is_closer(at(j))) --j;
    if (j < 0 || !is_terminator(at(j))) return false;
    if (at(j) != '.') return true;
    if (next_char >= 'a' && next_char <= 'z') return false;
    int64_t token_start = j;
    while (token_start > 0 && !is_space(at(token_start - 1))) --token_start;
    int64_t k = token_start;
    while (k < j && is_opener(at(k))) ++k;
    if (is_abbreviation(k, j + 1)) return false;
    if (j > token_start) {
      bool digits = true;
      for (int64_t m = token_start; m < j && digits; ++m) digits = is_digit(at(m));
      if (digits) {
        int64_t m = token_start;
        while (m > 0 && (at(m - 1) == ' ' || at(m - 1) == '\t')) --m;
        if (m == 0 || at(m - 1) == '\n') return false;  // a list number at a line start
      }
    }
    return true;
  }

  void find_raw_boundaries() {
    starts_.push_back(0);
    size_t span = 0;
    bool in_space = false, space_has_newline = false;
    int64_t space_start = 0;
    for (int64_t i = 0; i < n_; ++i) {
      const CodePoint c = at(i);
      if (is_space(c)) {
        if (!in_space) {
          in_space = true;
          space_start = i;
          space_has_newline = false;
        }
        if (c == '\n') space_has_newline = true;
        continue;
      }
      bool candidate = false;
      if (in_space) {
        in_space = false;
        candidate = space_start > 0 && (space_has_newline || ends_sentence(space_start, c) ||
                                        starts_marker(i));
      } else if (i > 0 && is_cjk_terminator(at(i - 1))) {
        candidate = true;
      }
      if (!candidate || is_extend(c)) continue;
      while (span < spans_.size() && spans_[span].second <= i) ++span;
      if (span < spans_.size() && spans_[span].first < i) continue;
      starts_.push_back(i);
    }
  }

  int64_t content_end(int64_t start, int64_t end) const {
    while (end > start && is_space(at(end - 1))) --end;
    return end;
  }

  void merge_short(std::vector<int64_t>& out) const {
    const size_t first = out.size();
    bool pending = false;
    int64_t pending_start = 0, pending_end = 0;
    for (size_t b = 0; b < starts_.size(); ++b) {
      int64_t start = starts_[b];
      const int64_t end = b + 1 < starts_.size() ? starts_[b + 1] : n_;
      if (pending) {
        start = pending_start;
        pending = false;
      }
      if (content_end(start, end) - start < rules_.min_chars) {
        if (out.size() == first || starts_marker(start)) {
          pending = true;
          pending_start = start;
          pending_end = end;
        } else {
          out.back() = end;
        }
        continue;
      }
      out.push_back(start);
      out.push_back(end);
    }
    if (pending) {
      if (out.size() > first) {
        out.back() = pending_end;
      } else {
        out.push_back(pending_start);
        out.push_back(pending_end);
      }
    }
  }

  const CharT* s_;
  int64_t n_;
  const SegmentRules& rules_;
  std::vector<std::pair<int64_t, int64_t>> spans_;
  std::vector<int64_t> starts_;
};

template <typename CharT>
void segment_text(const CharT* s, int64_t n, const SegmentRules& rules, std::vector<int64_t>& out) {
  TextSegmenter<CharT>(s, n, rules).run(out);
}

}  // namespace cd_fast
