// A small backtracking regex engine with Python `re` semantics, for the subset the step-role
// lexicon (cd_fast/compress/roles.py) is written in: literals and escapes, classes with ranges
// and \w \W \d \D \s \S, groups ((?:...), (?P<name>...), (...): none captures), alternation,
// the quantifiers ? * + (greedy or lazy), \b and $. Anything else is refused when the pattern is
// compiled, so the lexicon cannot drift into syntax this engine would read differently.
//
// Only whether a pattern matches is asked (`match` at the start, `search` anywhere), so
// alternation order does not change an answer. Character classes are CPython's own (\w:
// str.isalnum or "_", \d: str.isdecimal, \s: str.isspace), read from its Unicode tables, which
// need no GIL.
#pragma once

#include <Python.h>

#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace cd_fast {
namespace regex {

using Char = char32_t;

inline bool is_word(Char c) {
  if (c < 0x80) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  }
  return Py_UNICODE_ISALNUM(static_cast<Py_UCS4>(c));
}

inline bool is_digit(Char c) {
  if (c < 0x80) return c >= '0' && c <= '9';
  return Py_UNICODE_ISDECIMAL(static_cast<Py_UCS4>(c));
}

inline bool is_space(Char c) {
  if (c < 0x80) return c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F);
  return Py_UNICODE_ISSPACE(static_cast<Py_UCS4>(c));
}

// A class: code point ranges plus the categories (\w, \d, \s and their complements) it holds.
struct CharClass {
  enum : uint8_t { kWord = 1, kNotWord = 2, kDigit = 4, kNotDigit = 8, kSpace = 16, kNotSpace = 32 };
  std::vector<std::pair<Char, Char>> ranges;
  uint8_t categories = 0;
  bool negated = false;

  bool contains(Char c) const {
    bool in = false;
    for (const auto& [lo, hi] : ranges) {
      if (c >= lo && c <= hi) {
        in = true;
        break;
      }
    }
    if (!in && categories) {
      in = ((categories & kWord) && is_word(c)) || ((categories & kNotWord) && !is_word(c)) ||
           ((categories & kDigit) && is_digit(c)) || ((categories & kNotDigit) && !is_digit(c)) ||
           ((categories & kSpace) && is_space(c)) || ((categories & kNotSpace) && !is_space(c));
    }
    return in != negated;
  }
};

class Regex {
 public:
  explicit Regex(const std::u32string& pattern) : pattern_(pattern) {
    Node root = parse_alternation();
    if (at_ < pattern_.size()) fail("unbalanced ')'");
    emit(root);
    program_.push_back({Op::kMatch, 0, 0, 0});
    compute_starts();
  }

  // The backtracking stack: (instruction, position) pairs to try; one per thread, reused.
  class Stack {
   public:
    void clear() { top_ = 0; }
    bool empty() const { return top_ == 0; }
    void push(int32_t pc, size_t pos) {
      if (top_ == items_.size()) items_.resize(2 * items_.size() + 64);
      items_[top_++] = {pc, pos};
    }
    std::pair<int32_t, size_t> pop() { return items_[--top_]; }

   private:
    std::vector<std::pair<int32_t, size_t>> items_;
    size_t top_ = 0;
  };

  // Python's pattern.match(text): a match starting at 0.
  bool match(const Char* text, size_t n, Stack& stack) const {
    return may_start(text, n, 0) && run(text, n, 0, stack);
  }

  // Python's pattern.search(text): a match starting anywhere.
  bool search(const Char* text, size_t n, Stack& stack) const {
    for (size_t start = 0; start <= n; ++start) {
      if (may_start(text, n, start) && run(text, n, start, stack)) return true;
    }
    return false;
  }

 private:
  enum class Op : uint8_t { kChar, kClass, kSplit, kJump, kWordBoundary, kEnd, kMatch };
  struct Instruction {
    Op op;
    Char arg;  // the character, or the class index
    int32_t x, y;  // jump targets (kSplit tries x first)
  };
  struct Node {
    enum Kind : uint8_t { kEmpty, kChar, kClass, kConcat, kAlternation, kRepeat, kWordBoundary,
                          kEnd } kind = kEmpty;
    Char value = 0;  // the character or class index
    bool at_least_one = false, at_most_one = false;  // kRepeat: + (1..inf), ? (0..1), * (0..inf)
    std::vector<Node> children;
  };

  [[noreturn]] void fail(const std::string& why) const {
    throw std::invalid_argument("pattern not supported by cd_fast's regex engine at offset " +
                                std::to_string(at_) + ": " + why);
  }

  bool more() const { return at_ < pattern_.size(); }
  Char peek() const { return pattern_[at_]; }

  Node parse_alternation() {
    Node first = parse_concatenation();
    if (!more() || peek() != '|') return first;
    Node alternation;
    alternation.kind = Node::kAlternation;
    alternation.children.push_back(std::move(first));
    while (more() && peek() == '|') {
      ++at_;
      alternation.children.push_back(parse_concatenation());
    }
    return alternation;
  }

  Node parse_concatenation() {
    Node concat;
    concat.kind = Node::kConcat;
    while (more() && peek() != '|' && peek() != ')') {
      Node atom = parse_atom();
      while (more() && (peek() == '*' || peek() == '+' || peek() == '?')) {
        if (atom.kind == Node::kWordBoundary || atom.kind == Node::kEnd) fail("repeated anchor");
        Node repeat;
        repeat.kind = Node::kRepeat;
        repeat.at_least_one = peek() == '+';
        repeat.at_most_one = peek() == '?';
        if (!repeat.at_most_one && nullable(atom)) fail("a loop over what may match nothing");
        ++at_;
        if (more() && peek() == '?') ++at_;  // lazy: the same answer to "does it match"
        repeat.children.push_back(std::move(atom));
        atom = std::move(repeat);
      }
      if (more() && peek() == '{') fail("counted repeats {m,n}");
      concat.children.push_back(std::move(atom));
    }
    return concat;
  }

  Node parse_atom() {
    const Char c = pattern_[at_++];
    Node node;
    switch (c) {
      case '(': {
        if (more() && peek() == '?') {
          ++at_;
          if (more() && peek() == ':') {
            ++at_;
          } else if (more() && peek() == 'P' && at_ + 1 < pattern_.size() &&
                     pattern_[at_ + 1] == '<') {
            at_ += 2;
            while (more() && peek() != '>') ++at_;
            if (!more()) fail("unterminated group name");
            ++at_;
          } else {
            fail("group flags, lookarounds or backreferences");
          }
        }
        node = parse_alternation();
        if (!more() || peek() != ')') fail("missing ')'");
        ++at_;
        return node;
      }
      case '[':
        node.kind = Node::kClass;
        node.value = static_cast<Char>(classes_.size());
        classes_.push_back(parse_class());
        return node;
      case '\\':
        return parse_escape();
      case '$':
        node.kind = Node::kEnd;
        return node;
      case '.':
      case '^':
      case '*':
      case '+':
      case '?':
      case '{':
      case ')':
        --at_;
        fail(std::string("'") + static_cast<char>(c) + "' here");
      default:
        node.kind = Node::kChar;
        node.value = c;
        return node;
    }
  }

  // One escape after a backslash: a category, \b, or an escaped punctuation character.
  Node parse_escape() {
    if (!more()) fail("trailing backslash");
    const Char c = pattern_[at_++];
    Node node;
    uint8_t category = category_of(c);
    if (category) {
      CharClass cls;
      cls.categories = category;
      node.kind = Node::kClass;
      node.value = static_cast<Char>(classes_.size());
      classes_.push_back(std::move(cls));
    } else if (c == 'b') {
      node.kind = Node::kWordBoundary;
    } else if (c < 0x80 && !is_word(c)) {
      node.kind = Node::kChar;
      node.value = c;
    } else {
      --at_;
      fail("escape \\" + std::string(1, static_cast<char>(c < 0x80 ? c : '?')));
    }
    return node;
  }

  static uint8_t category_of(Char c) {
    switch (c) {
      case 'w': return CharClass::kWord;
      case 'W': return CharClass::kNotWord;
      case 'd': return CharClass::kDigit;
      case 'D': return CharClass::kNotDigit;
      case 's': return CharClass::kSpace;
      case 'S': return CharClass::kNotSpace;
      default: return 0;
    }
  }

  CharClass parse_class() {
    CharClass cls;
    if (more() && peek() == '^') {
      cls.negated = true;
      ++at_;
    }
    bool first = true;
    while (more() && (peek() != ']' || first)) {
      first = false;
      Char lo = pattern_[at_++];
      if (lo == '\\') {
        if (!more()) fail("trailing backslash in a class");
        const Char e = pattern_[at_++];
        if (uint8_t category = category_of(e)) {
          cls.categories |= category;
          continue;
        }
        if (e >= 0x80 || is_word(e)) fail("escape in a class");
        lo = e;
      }
      Char hi = lo;
      if (at_ + 1 < pattern_.size() && peek() == '-' && pattern_[at_ + 1] != ']') {
        ++at_;
        hi = pattern_[at_++];
        if (hi == '\\') {
          if (!more()) fail("trailing backslash in a class");
          hi = pattern_[at_++];
          if (hi >= 0x80 || is_word(hi)) fail("escape in a class range");
        }
        if (hi < lo) fail("class range out of order");
      }
      cls.ranges.emplace_back(lo, hi);
    }
    if (!more()) fail("missing ']'");
    ++at_;
    return cls;
  }

  static bool nullable(const Node& node) {
    switch (node.kind) {
      case Node::kChar:
      case Node::kClass:
        return false;
      case Node::kRepeat:
        return !node.at_least_one || nullable(node.children[0]);
      case Node::kAlternation:
        for (const Node& child : node.children) {
          if (nullable(child)) return true;
        }
        return false;
      case Node::kConcat:
        for (const Node& child : node.children) {
          if (!nullable(child)) return false;
        }
        return true;
      default:
        return true;
    }
  }

  int32_t here() const { return static_cast<int32_t>(program_.size()); }

  void emit(const Node& node) {
    switch (node.kind) {
      case Node::kEmpty:
        return;
      case Node::kChar:
        program_.push_back({Op::kChar, node.value, 0, 0});
        return;
      case Node::kClass:
        program_.push_back({Op::kClass, node.value, 0, 0});
        return;
      case Node::kWordBoundary:
        program_.push_back({Op::kWordBoundary, 0, 0, 0});
        return;
      case Node::kEnd:
        program_.push_back({Op::kEnd, 0, 0, 0});
        return;
      case Node::kConcat:
        for (const Node& child : node.children) emit(child);
        return;
      case Node::kAlternation: {
        std::vector<int32_t> exits;
        for (size_t i = 0; i < node.children.size(); ++i) {
          int32_t split = -1;
          if (i + 1 < node.children.size()) {
            split = here();
            program_.push_back({Op::kSplit, 0, split + 1, 0});
          }
          emit(node.children[i]);
          if (split >= 0) {
            exits.push_back(here());
            program_.push_back({Op::kJump, 0, 0, 0});
            program_[split].y = here();
          }
        }
        for (int32_t at : exits) program_[at].x = here();
        return;
      }
      case Node::kRepeat: {
        const Node& body = node.children[0];
        if (node.at_least_one) {  // body; split(body, out)
          const int32_t start = here();
          emit(body);
          program_.push_back({Op::kSplit, 0, start, here() + 1});
        } else if (node.at_most_one) {  // split(body, out); body
          const int32_t split = here();
          program_.push_back({Op::kSplit, 0, split + 1, 0});
          emit(body);
          program_[split].y = here();
        } else {  // loop: split(body, out); body; jump loop
          const int32_t split = here();
          program_.push_back({Op::kSplit, 0, split + 1, 0});
          emit(body);
          program_.push_back({Op::kJump, 0, split, 0});
          program_[split].y = here();
        }
        return;
      }
    }
  }

  // What may come first from an instruction on: the characters (a bitmap for ASCII, one flag
  // for everything else), apart for those right after a \b; `empty`: a match may go on
  // without consuming one. Checked at every start and at every branch, so dead alternatives
  // cost one lookup.
  struct AsciiSet {  // 128 bits
    uint64_t bits[2] = {0, 0};
    void add(Char c) { bits[c >> 6] |= uint64_t{1} << (c & 63); }
    bool has(Char c) const { return bits[c >> 6] >> (c & 63) & 1; }
  };
  struct Start {
    AsciiSet ascii, ascii_after_boundary;
    bool other = false, other_after_boundary = false, empty = false;

    bool admits(const Char* text, size_t n, size_t pos) const {
      if (empty) return true;
      if (pos == n) return false;
      const Char c = text[pos];
      if (c < 0x80 ? ascii.has(c) : other) return true;
      return (c < 0x80 ? ascii_after_boundary.has(c) : other_after_boundary) &&
             boundary(text, n, pos);
    }
  };

  Start start_at(int32_t from) const {
    Start start;
    std::vector<bool> seen(2 * program_.size(), false);  // (pc, passed a \b)
    std::vector<std::pair<int32_t, bool>> stack{{from, false}};
    while (!stack.empty()) {
      const auto [pc, bounded] = stack.back();
      stack.pop_back();
      if (seen[2 * pc + bounded]) continue;
      seen[2 * pc + bounded] = true;
      const Instruction& in = program_[pc];
      auto& ascii = bounded ? start.ascii_after_boundary : start.ascii;
      bool& other = bounded ? start.other_after_boundary : start.other;
      switch (in.op) {
        case Op::kChar:
          if (in.arg < 0x80) {
            ascii.add(in.arg);
          } else {
            other = true;
          }
          break;
        case Op::kClass:
          for (Char c = 0; c < 0x80; ++c) {
            if (classes_[in.arg].contains(c)) ascii.add(c);
          }
          other = true;  // some non-ASCII character may be in it
          break;
        case Op::kSplit:
          stack.emplace_back(in.x, bounded);
          stack.emplace_back(in.y, bounded);
          break;
        case Op::kJump:
          stack.emplace_back(in.x, bounded);
          break;
        case Op::kWordBoundary:
          stack.emplace_back(pc + 1, true);
          break;
        case Op::kEnd:
        case Op::kMatch:
          start.empty = true;
          break;
      }
    }
    return start;
  }

  void compute_starts() {
    starts_.resize(program_.size());
    starts_[0] = start_at(0);
    for (const Instruction& in : program_) {
      if (in.op != Op::kSplit) continue;
      starts_[in.x] = start_at(in.x);
      starts_[in.y] = start_at(in.y);
    }
  }

  bool may_start(const Char* text, size_t n, size_t pos) const {
    return starts_[0].admits(text, n, pos);
  }

  static bool boundary(const Char* text, size_t n, size_t pos) {
    if (n == 0) return false;
    const bool before = pos > 0 && is_word(text[pos - 1]);
    const bool after = pos < n && is_word(text[pos]);
    return before != after;
  }

  // Backtracking from `start`; like sre, no memo (the lexicon has no nested ambiguous repeats).
  bool run(const Char* text, size_t n, size_t start, Stack& stack) const {
    stack.clear();
    stack.push(0, start);
    while (!stack.empty()) {
      auto [pc, pos] = stack.pop();
      while (true) {
        const Instruction& in = program_[pc];
        bool alive = true;
        switch (in.op) {
          case Op::kChar:
            alive = pos < n && text[pos] == in.arg;
            ++pc;
            ++pos;
            break;
          case Op::kClass:
            alive = pos < n && classes_[in.arg].contains(text[pos]);
            ++pc;
            ++pos;
            break;
          case Op::kSplit: {
            const bool x = starts_[in.x].admits(text, n, pos);
            const bool y = starts_[in.y].admits(text, n, pos);
            if (x && y) stack.push(in.y, pos);
            pc = x ? in.x : in.y;
            alive = x || y;
            break;
          }
          case Op::kJump:
            pc = in.x;
            break;
          case Op::kWordBoundary:
            alive = boundary(text, n, pos);
            ++pc;
            break;
          case Op::kEnd:  // the end, or just before a final newline
            alive = pos == n || (pos + 1 == n && text[pos] == '\n');
            ++pc;
            break;
          case Op::kMatch:
            return true;
        }
        if (!alive) break;
      }
    }
    return false;
  }

  std::u32string pattern_;
  size_t at_ = 0;
  std::vector<Instruction> program_;
  std::vector<CharClass> classes_;
  std::vector<Start> starts_;  // for the first instruction and every branch target
};

}  // namespace regex
}  // namespace cd_fast
