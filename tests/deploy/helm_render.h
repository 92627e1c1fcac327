// A renderer for the small subset of Helm's template language that deploy/helm/trousseau-hsm uses, so the
// chart can be checked (parsed, its DaemonSet inspected, validated with Kubernetes' own code) where no
// `helm` binary exists. deploy_test compares it with real `helm template` whenever helm is on PATH.
//
// Supported: {{ .Values.a.b }}, {{ .Release.Name }}, {{ .Release.Namespace }}, {{ .Chart.Name }},
// {{ .Chart.Version }}, {{ .Chart.AppVersion }}, "literals", pipes `| quote`, `| default X`,
// `| nindent N`, `| indent N`, `toYaml X`, `{{ if X }}`...`{{ else }}`...`{{ end }}` (nested), comments
// {{/* */}}, and the whitespace trimming markers `{{-` and `-}}`. Anything else is an error, so a
// template that grows beyond the subset fails the test instead of rendering wrongly.
#pragma once

#include <yaml-cpp/yaml.h>

#include <map>
#include <stdexcept>
#include <string>

namespace trousseau::deploy {

struct HelmRelease {
  std::string name = "trousseau-hsm";
  std::string namespace_ = "kube-system";
};

class HelmRenderError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Deep copy of `base` with the maps of `overrides` merged in (as `helm --values`/`--set` do).
YAML::Node MergeValues(const YAML::Node& base, const YAML::Node& overrides);

// Renders one template text.
std::string RenderTemplate(const std::string& text, const YAML::Node& values, const YAML::Node& chart,
                           const HelmRelease& release);

// Renders every templates/*.yaml of the chart directory (values.yaml merged with `overrides`), by file
// name. Throws HelmRenderError.
std::map<std::string, std::string> RenderChart(const std::string& chart_dir, const YAML::Node& overrides = {},
                                               const HelmRelease& release = {});

// Structural equality of two YAML trees (map key order ignored, scalars compared as text).
bool YamlEqual(const YAML::Node& a, const YAML::Node& b, std::string* where = nullptr);

}  // namespace trousseau::deploy
