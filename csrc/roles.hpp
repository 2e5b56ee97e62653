// Step roles over code points. Mirrors tag_roles_py in cd_fast/compress/roles.py (the reference,
// where the rules and the cue lexicon are written out; the lexicon arrives from there as
// patterns); both must give identical roles, confidences and abandoned marks.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "regex.hpp"

namespace cd_fast {
namespace roles {

using regex::Char;
using regex::Regex;
using View = std::u32string_view;

// FNV-1a over code points: words are short, std::hash goes through a byte-wise murmur.
struct ViewHash {
  size_t operator()(View word) const {
    uint64_t h = 1469598103934665603ull;
    for (Char c : word) h = (h ^ c) * 1099511628211ull;
    return static_cast<size_t>(h);
  }
};
using WordSet = std::unordered_set<View, ViewHash>;

// ROLES order in cd_fast/compress/roles.py.
enum Role : int8_t {
  kInitialising,
  kDeduction,
  kVerification,
  kBacktracking,
  kUncertainty,
  kExploration,
  kConclusion,
  kNoRegion = -1,
};

struct Cue {
  int8_t role = kDeduction;
  double confidence = 0;
  std::unique_ptr<Regex> head, free;  // either may be absent
  std::vector<std::u32string> triggers;

  bool matches(const Char* s, size_t n, bool triggered, Regex::Stack& stack) const {
    if (head && head->match(s, n, stack)) return true;
    return triggered && free && free->search(s, n, stack);
  }
};

struct Lexicon {
  std::vector<Cue> cues;  // tried in order; the opening cue is last and tried apart
  std::unique_ptr<Regex> plan, forward, connective, inference;
  std::vector<std::u32string> stop_words;
  WordSet stop;  // views of stop_words, filled once they are all in
  // Every trigger by its first two characters (one-character triggers alone): the trigger and
  // a bitmask of the cues it belongs to.
  using Triggers = std::vector<std::pair<std::u32string, uint32_t>>;
  std::vector<Triggers> pair_triggers;  // [0] empty; ascii_pairs points into it
  std::vector<uint16_t> ascii_pairs = std::vector<uint16_t>(0x80 * 0x80, 0);  // 32 KB
  std::unordered_map<uint64_t, Triggers> other_pairs;
  std::array<uint32_t, 0x80> ascii_single{};
  std::unordered_map<Char, uint32_t> other_single;

  void index_triggers() {
    std::unordered_map<std::u32string, uint32_t> masks;
    for (size_t k = 0; k < cues.size(); ++k) {
      for (const std::u32string& trigger : cues[k].triggers) {
        if (!trigger.empty()) masks[trigger] |= 1u << k;
      }
    }
    for (auto& [trigger, mask] : masks) {
      if (trigger.size() == 1) {
        (trigger[0] < 0x80 ? ascii_single[trigger[0]] : other_single[trigger[0]]) |= mask;
      } else if (trigger[0] < 0x80 && trigger[1] < 0x80) {
        uint16_t& slot = ascii_pairs[trigger[0] * 0x80 + trigger[1]];
        if (slot == 0) {
          if (pair_triggers.empty()) pair_triggers.emplace_back();
          slot = static_cast<uint16_t>(pair_triggers.size());
          pair_triggers.emplace_back();
        }
        pair_triggers[slot].emplace_back(trigger, mask);
      } else {
        other_pairs[static_cast<uint64_t>(trigger[0]) << 32 | trigger[1]].emplace_back(trigger,
                                                                                       mask);
      }
    }
  }

  // The cues whose triggers occur at text[at].
  uint32_t triggers_at(View text, size_t at) const {
    uint32_t mask = 0;
    if (text[at] < 0x80) {
      mask = ascii_single[text[at]];
    } else if (!other_single.empty()) {
      const auto found = other_single.find(text[at]);
      if (found != other_single.end()) mask = found->second;
    }
    if (at + 1 >= text.size()) return mask;
    const Char c0 = text[at], c1 = text[at + 1];
    const Triggers* candidates = nullptr;
    if (c0 < 0x80 && c1 < 0x80) {
      const uint16_t slot = ascii_pairs[c0 * 0x80 + c1];
      if (slot == 0) return mask;
      candidates = &pair_triggers[slot];
    } else {
      const auto found = other_pairs.find(static_cast<uint64_t>(c0) << 32 | c1);
      if (found != other_pairs.end()) candidates = &found->second;
    }
    if (candidates != nullptr) {
      for (const auto& [trigger, cues] : *candidates) {
        if (text.compare(at, trigger.size(), trigger) == 0) mask |= cues;
      }
    }
    return mask;
  }
};

struct TraceInput {
  View lowered;  // the trace lowered, its offsets the trace's
  const int64_t* sentences;  // [count, 2] character offsets
  size_t count;
  View question_lowered, question;
  int64_t answer_at;  // where the final answer is stated, -1 when unknown
};

struct TraceRoles {
  std::vector<int8_t> role;
  std::vector<double> confidence;
  std::vector<uint8_t> abandoned;
};

inline bool is_letter(Char c) { return regex::is_word(c) && !regex::is_digit(c) && c != '_'; }

// set(_WORD.findall(text)) - _STOP, _WORD = [^\W\d_]{3,}|[\u4e00-\u9fff].
inline void content_words(View text, const WordSet& stop,
                          std::vector<View>& out) {
  out.clear();
  size_t p = 0;
  const size_t n = text.size();
  while (p < n) {
    size_t q = p;
    while (q < n && is_letter(text[q])) ++q;
    View word;
    if (q - p >= 3) {
      word = text.substr(p, q - p);
      p = q;
    } else if (text[p] >= 0x4E00 && text[p] <= 0x9FFF) {
      word = text.substr(p, 1);
      ++p;
    } else {
      ++p;
      continue;
    }
    if (stop.count(word)) continue;
    if (std::find(out.begin(), out.end(), word) == out.end()) out.push_back(word);
  }
}

// number_value(m) for m in numbers_in(text): (?<![\w.])\d[\d,]*(?:\.\d+)?
inline void number_values(View text, std::vector<std::u32string>& out) {
  out.clear();
  const size_t n = text.size();
  size_t p = 0;
  while (p < n) {
    if (!regex::is_digit(text[p]) ||
        (p > 0 && (regex::is_word(text[p - 1]) || text[p - 1] == '.'))) {
      ++p;
      continue;
    }
    size_t q = p + 1;
    while (q < n && (regex::is_digit(text[q]) || text[q] == ',')) ++q;
    if (q + 1 < n && text[q] == '.' && regex::is_digit(text[q + 1])) {
      q += 2;
      while (q < n && regex::is_digit(text[q])) ++q;
    }
    std::u32string value;
    bool point = false;
    for (size_t i = p; i < q; ++i) {
      if (text[i] == ',') continue;
      point = point || text[i] == '.';
      value.push_back(text[i]);
    }
    if (point) {
      while (!value.empty() && value.back() == '0') value.pop_back();
      while (!value.empty() && value.back() == '.') value.pop_back();
    }
    size_t zeros = 0;
    while (zeros < value.size() && value[zeros] == '0') ++zeros;
    value.erase(0, zeros);
    if (value.empty()) value = U"0";
    out.push_back(std::move(value));
    p = q;
  }
}

inline bool contains(View haystack, View needle) { return haystack.find(needle) != View::npos; }

inline TraceRoles tag_trace(const Lexicon& lexicon, const TraceInput& in) {
  const size_t n = in.count;
  const View text = in.lowered;
  TraceRoles out;
  out.role.assign(n, kDeduction);
  out.confidence.assign(n, 0.4);
  out.abandoned.assign(n, 0);
  const size_t cue_count = lexicon.cues.size() - 1;  // the last is the opening cue
  const Cue& opening = lexicon.cues.back();

  // Which sentences hold each cue's triggers (a hit belongs to the sentence it starts in).
  std::vector<uint32_t> triggered(n, 0);
  {
    size_t owner = 0;  // sentences starting at or before `at`
    for (size_t at = 0; at < text.size(); ++at) {
      const uint32_t mask = lexicon.triggers_at(text, at);
      if (mask == 0) continue;
      while (owner < n && in.sentences[2 * owner] <= static_cast<int64_t>(at)) ++owner;
      if (owner > 0) triggered[owner - 1] |= mask;  // text before the first sentence: none's
    }
  }

  std::vector<View> words;
  content_words(in.question_lowered, lexicon.stop, words);
  const WordSet question_words(words.begin(), words.end());
  WordSet seen_words = question_words;
  seen_words.reserve(4 * text.size() / 16 + 64);
  std::vector<std::u32string> found;
  number_values(in.question, found);
  std::unordered_set<std::u32string> seen_values(found.begin(), found.end());

  Regex::Stack stack;
  bool started = false, answer_stated = false;
  int region = kNoRegion;
  int region_left = 0;
  int64_t previous_end = 0;
  std::vector<std::u32string> new_values;
  for (size_t i = 0; i < n; ++i) {
    const int64_t a = in.sentences[2 * i], b = in.sentences[2 * i + 1];
    int64_t s = a, e = b;  // str.lstrip and str.rstrip, each on its own (as the reference)
    while (s < b && regex::is_space(text[s])) ++s;
    while (e > a && regex::is_space(text[e - 1])) --e;
    const View sentence = s < e ? text.substr(s, e - s) : View();
    const Char* chars = sentence.data();
    const size_t length = sentence.size();
    bool new_paragraph = false;
    for (int64_t p = previous_end; p + 1 < s; ++p) {
      if (text[p] == '\n' && text[p + 1] == '\n') {
        new_paragraph = true;
        break;
      }
    }
    previous_end = e;

    content_words(sentence, lexicon.stop, words);
    number_values(sentence, found);
    size_t unseen = 0, outside_question = 0;
    for (const View& word : words) {
      unseen += !seen_words.count(word);
      outside_question += !question_words.count(word);
    }
    const double novel = words.empty() ? 0.0 : static_cast<double>(unseen) / words.size();
    new_values.clear();
    for (const std::u32string& value : found) {
      if (!seen_values.count(value) &&
          std::find(new_values.begin(), new_values.end(), value) == new_values.end()) {
        new_values.push_back(value);
      }
    }
    bool rechecks = found.empty() ? novel < 0.5
                                  : (seen_values.count(found.back()) || new_values.empty());
    if (rechecks && region != kVerification && lexicon.forward->match(chars, length, stack)) {
      rechecks = false;
    }
    for (const View& word : words) seen_words.insert(word);
    for (const std::u32string& value : found) seen_values.insert(value);
    const bool restates = !words.empty() &&
                          static_cast<double>(outside_question) <= 0.2 * words.size() &&
                          new_values.empty() && !contains(sentence, U"=") &&
                          !lexicon.inference->search(chars, length, stack);
    const bool states_answer = in.answer_at >= 0 && a <= in.answer_at && in.answer_at < b;

    // The cue: the first whose head matches, unless a cue before it matches freely.
    int cue = -1;
    size_t head = cue_count;
    for (size_t k = 0; k < cue_count; ++k) {
      const Cue& c = lexicon.cues[k];
      if (c.head && c.head->match(chars, length, stack)) {
        head = k;
        break;
      }
    }
    for (size_t k = 0; k < head; ++k) {
      const Cue& c = lexicon.cues[k];
      if ((triggered[i] >> k & 1u) && c.free && c.free->search(chars, length, stack)) {
        cue = static_cast<int>(k);
        break;
      }
    }
    if (cue < 0 && head < cue_count) cue = static_cast<int>(head);
    const bool opens =
        cue < 0 && opening.matches(chars, length, triggered[i] >> cue_count & 1u, stack);

    if (new_paragraph && (region == kExploration ||
                          (region == kVerification && lexicon.forward->match(chars, length, stack)))) {
      region = kNoRegion;
    }
    int8_t& role = out.role[i];
    double& confidence = out.confidence[i];
    if (cue >= 0) {
      const Cue& c = lexicon.cues[cue];
      role = c.role;
      confidence = c.confidence;
      if (role == kConclusion && answer_stated && !states_answer) confidence = 0.7;
      region = (role == kVerification || role == kExploration || role == kBacktracking)
                   ? role
                   : kNoRegion;
      region_left = role == kExploration ? 3 : 0;
      if (role == kBacktracking) {
        for (int64_t j = static_cast<int64_t>(i) - 1; j > static_cast<int64_t>(i) - 3 && j >= 0;
             --j) {
          if (out.role[j] != kDeduction) break;
          out.abandoned[j] = 1;
        }
      }
    } else if (!started && (restates || opens || lexicon.plan->search(chars, length, stack))) {
      role = kInitialising;
      confidence = opens ? 0.7 : 0.55;
    } else if (opens && new_values.empty()) {
      role = kInitialising;
      confidence = 0.6;
    } else if (region == kExploration && region_left > 0 && length < 160) {
      role = kExploration;
      confidence = 0.5;
      --region_left;
    } else if ((region == kVerification || answer_stated) && rechecks) {
      role = kVerification;
      confidence = region == kVerification ? 0.55 : 0.45;
    } else if (restates) {
      role = kInitialising;
      confidence = 0.5;
    } else {
      role = kDeduction;
      confidence =
          (!new_values.empty() || lexicon.connective->search(chars, length, stack)) ? 0.6 : 0.4;
      region = kNoRegion;
    }
    if (states_answer && (role == kDeduction || role == kVerification || role == kInitialising)) {
      role = kConclusion;
      confidence = 0.6;
    }
    if ((role != kInitialising && role != kUncertainty && role != kExploration &&
         role != kDeduction) ||
        (role == kDeduction && confidence > 0.4)) {
      started = true;
    }
    if (role == kConclusion) answer_stated = true;
  }
  return out;
}

}  // namespace roles
}  // namespace cd_fast
