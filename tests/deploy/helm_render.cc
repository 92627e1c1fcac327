#include "tests/deploy/helm_render.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

namespace trousseau::deploy {
namespace {

std::string ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw HelmRenderError("cannot read " + path.string());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string Trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

// Splits on `sep` outside double quotes.
std::vector<std::string> SplitOutsideQuotes(const std::string& s, char sep) {
  std::vector<std::string> parts;
  std::string current;
  bool quoted = false;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (c == '"' && (i == 0 || s[i - 1] != '\\')) quoted = !quoted;
    if (c == sep && !quoted) {
      parts.push_back(current);
      current.clear();
    } else {
      current += c;
    }
  }
  parts.push_back(current);
  return parts;
}

std::vector<std::string> Words(const std::string& s) {
  std::vector<std::string> words;
  for (const std::string& w : SplitOutsideQuotes(Trim(s), ' ')) {
    if (!Trim(w).empty()) words.push_back(Trim(w));
  }
  return words;
}

// A value flowing through a pipeline: a YAML node (scalar or collection).
struct Value {
  YAML::Node node;
};

bool Truthy(const YAML::Node& n) {
  if (!n.IsDefined() || n.IsNull()) return false;
  if (n.IsScalar()) {
    const std::string& s = n.Scalar();
    return !(s.empty() || s == "false" || s == "0" || s == "~" || s == "null");
  }
  return n.size() > 0;
}

// Helm's toYaml always writes block style, whatever the style of the values file.
void SetBlockStyle(YAML::Node n) {
  if (n.IsMap() || n.IsSequence()) {
    n.SetStyle(YAML::EmitterStyle::Block);
    if (n.IsMap()) {
      for (auto entry : n) SetBlockStyle(entry.second);
    } else {
      for (auto item : n) SetBlockStyle(item);
    }
  }
}

std::string ToYaml(const YAML::Node& n) {
  YAML::Node copy = YAML::Clone(n);
  SetBlockStyle(copy);
  YAML::Emitter out;
  out << copy;
  std::string text = out.c_str();
  while (!text.empty() && text.back() == '\n') text.pop_back();
  return text;
}

std::string AsText(const YAML::Node& n) {
  if (!n.IsDefined() || n.IsNull()) return "";
  if (n.IsScalar()) return n.Scalar();
  throw HelmRenderError("a map or list printed without toYaml");
}

std::string Indent(const std::string& text, int n) {
  const std::string pad(static_cast<size_t>(n), ' ');
  std::string out = pad;
  for (char c : text) {
    out += c;
    if (c == '\n') out += pad;
  }
  return out;
}

class Context {
 public:
  Context(const YAML::Node& values, const YAML::Node& chart, const HelmRelease& release)
      : values_(values), chart_(chart), release_(release) {}

  // `.Values.a.b`, `.Release.Name`, `"literal"`, or a number.
  YAML::Node Operand(const std::string& word) const {
    if (word.size() >= 2 && word.front() == '"' && word.back() == '"') {
      return YAML::Node(word.substr(1, word.size() - 2));
    }
    if (!word.empty() && std::all_of(word.begin(), word.end(), [](char c) { return std::isdigit(c); })) {
      return YAML::Node(word);
    }
    if (word == ".Release.Name") return YAML::Node(release_.name);
    if (word == ".Release.Namespace") return YAML::Node(release_.namespace_);
    if (word == ".Chart.Name") return YAML::Node(chart_["name"].as<std::string>());
    if (word == ".Chart.Version") return YAML::Node(chart_["version"].as<std::string>());
    if (word == ".Chart.AppVersion") return YAML::Node(chart_["appVersion"].as<std::string>());
    if (word.rfind(".Values.", 0) == 0) {
      YAML::Node node = YAML::Clone(values_);
      std::stringstream path(word.substr(8));
      std::string key;
      while (std::getline(path, key, '.')) {
        if (!node.IsMap()) return YAML::Node();
        YAML::Node child = node[key];
        if (!child.IsDefined()) return YAML::Node();
        node.reset(child);
      }
      return node;
    }
    throw HelmRenderError("unsupported operand: " + word);
  }

  YAML::Node Pipeline(const std::string& expression) const {
    const std::vector<std::string> stages = SplitOutsideQuotes(expression, '|');
    YAML::Node value;
    bool have_value = false;
    // Text produced by nindent/indent/quote is a string, kept in `text`.
    std::string text;
    bool is_text = false;
    for (const std::string& stage : stages) {
      std::vector<std::string> w = Words(stage);
      if (w.empty()) throw HelmRenderError("empty pipeline stage in: " + expression);
      if (!have_value) {
        if (w[0] == "toYaml" && w.size() == 2) {
          text = ToYaml(Operand(w[1]));
          is_text = true;
        } else if (w.size() == 1) {
          value.reset(Operand(w[0]));
        } else {
          throw HelmRenderError("unsupported expression: " + stage);
        }
        have_value = true;
        continue;
      }
      const std::string current = is_text ? text : AsText(value);
      if (w[0] == "quote" && w.size() == 1) {
        std::string q = "\"";
        for (char c : current) {
          if (c == '"' || c == '\\') q += '\\';
          q += c;
        }
        text = q + "\"";
        is_text = true;
      } else if (w[0] == "default" && w.size() == 2) {
        if (is_text ? text.empty() : !Truthy(value)) {
          value.reset(Operand(w[1]));
          is_text = false;
        }
      } else if ((w[0] == "nindent" || w[0] == "indent") && w.size() == 2) {
        text = (w[0] == "nindent" ? "\n" : "") + Indent(current, std::stoi(w[1]));
        is_text = true;
      } else {
        throw HelmRenderError("unsupported function: " + stage);
      }
    }
    return is_text ? YAML::Node(text) : value;
  }

  std::string Print(const std::string& expression) const {
    const YAML::Node v = Pipeline(expression);
    return AsText(v);
  }

 private:
  YAML::Node values_;
  YAML::Node chart_;
  HelmRelease release_;
};

struct Token {
  bool action = false;
  std::string text;  // literal text, or the action without delimiters and trim markers
};

std::vector<Token> Tokenize(const std::string& source) {
  std::vector<Token> tokens;
  size_t pos = 0;
  bool trim_next = false;
  while (pos <= source.size()) {
    const size_t open = source.find("{{", pos);
    std::string literal = source.substr(pos, open == std::string::npos ? std::string::npos : open - pos);
    if (trim_next) {
      size_t b = 0;
      while (b < literal.size() && std::isspace(static_cast<unsigned char>(literal[b]))) ++b;
      literal.erase(0, b);
      trim_next = false;
    }
    if (open == std::string::npos) {
      tokens.push_back({false, literal});
      break;
    }
    const size_t close = source.find("}}", open + 2);
    if (close == std::string::npos) throw HelmRenderError("unterminated {{");
    std::string inner = source.substr(open + 2, close - open - 2);
    if (inner.rfind("- ", 0) == 0 || inner == "-") {
      while (!literal.empty() && std::isspace(static_cast<unsigned char>(literal.back()))) literal.pop_back();
      inner.erase(0, 1);
    }
    if (inner.size() >= 2 && inner.compare(inner.size() - 2, 2, " -") == 0) {
      trim_next = true;
      inner.erase(inner.size() - 1);
    }
    tokens.push_back({false, literal});
    tokens.push_back({true, Trim(inner)});
    pos = close + 2;
  }
  return tokens;
}

}  // namespace

YAML::Node MergeValues(const YAML::Node& base, const YAML::Node& overrides) {
  YAML::Node merged = YAML::Clone(base);
  if (!overrides.IsDefined() || overrides.IsNull()) return merged;
  if (!overrides.IsMap() || !merged.IsMap()) return YAML::Clone(overrides);
  for (const auto& entry : overrides) {
    const std::string key = entry.first.as<std::string>();
    if (merged[key].IsDefined() && merged[key].IsMap() && entry.second.IsMap()) {
      merged[key] = MergeValues(merged[key], entry.second);
    } else {
      merged[key] = YAML::Clone(entry.second);
    }
  }
  return merged;
}

std::string RenderTemplate(const std::string& text, const YAML::Node& values, const YAML::Node& chart,
                           const HelmRelease& release) {
  const Context context(values, chart, release);
  std::string out;
  // One entry per open `if`: whether its branch is being emitted, and whether the if was taken.
  struct Frame {
    bool parent_active;
    bool taken;
    bool active;
  };
  std::vector<Frame> frames;
  auto active = [&] { return frames.empty() || frames.back().active; };
  for (const Token& token : Tokenize(text)) {
    if (!token.action) {
      if (active()) out += token.text;
      continue;
    }
    const std::string& a = token.text;
    if (a.rfind("/*", 0) == 0) {
      if (a.size() < 4 || a.compare(a.size() - 2, 2, "*/") != 0) throw HelmRenderError("bad comment: " + a);
      continue;
    }
    if (a.rfind("if ", 0) == 0) {
      const bool parent = active();
      const bool taken = parent && Truthy(context.Pipeline(a.substr(3)));
      frames.push_back({parent, taken, taken});
    } else if (a == "else") {
      if (frames.empty()) throw HelmRenderError("else without if");
      frames.back().active = frames.back().parent_active && !frames.back().taken;
    } else if (a == "end") {
      if (frames.empty()) throw HelmRenderError("end without if");
      frames.pop_back();
    } else if (active()) {
      out += context.Print(a);
    }
  }
  if (!frames.empty()) throw HelmRenderError("if without end");
  return out;
}

std::map<std::string, std::string> RenderChart(const std::string& chart_dir, const YAML::Node& overrides,
                                               const HelmRelease& release) {
  const std::filesystem::path dir(chart_dir);
  const YAML::Node chart = YAML::Load(ReadFile(dir / "Chart.yaml"));
  const YAML::Node values = MergeValues(YAML::Load(ReadFile(dir / "values.yaml")), overrides);
  std::map<std::string, std::string> rendered;
  for (const auto& entry : std::filesystem::directory_iterator(dir / "templates")) {
    if (entry.path().extension() != ".yaml") continue;
    rendered[entry.path().filename().string()] = RenderTemplate(ReadFile(entry.path()), values, chart, release);
  }
  return rendered;
}

bool YamlEqual(const YAML::Node& a, const YAML::Node& b, std::string* where) {
  auto fail = [&](const std::string& why) {
    if (where != nullptr) *where = why;
    return false;
  };
  const bool a_null = !a.IsDefined() || a.IsNull();
  const bool b_null = !b.IsDefined() || b.IsNull();
  if (a_null || b_null) return a_null == b_null ? true : fail("null vs non-null");
  if (a.Type() != b.Type()) return fail("different node types");
  if (a.IsScalar()) return a.Scalar() == b.Scalar() ? true : fail("'" + a.Scalar() + "' vs '" + b.Scalar() + "'");
  if (a.size() != b.size()) return fail("different sizes");
  if (a.IsSequence()) {
    for (size_t i = 0; i < a.size(); ++i) {
      if (!YamlEqual(a[i], b[i], where)) return fail("[" + std::to_string(i) + "]" + (where ? *where : ""));
    }
    return true;
  }
  for (const auto& entry : a) {
    const std::string key = entry.first.as<std::string>();
    if (!b[key].IsDefined()) return fail("." + key + " missing");
    if (!YamlEqual(entry.second, b[key], where)) return fail("." + key + (where ? *where : ""));
  }
  return true;
}

}  // namespace trousseau::deploy
