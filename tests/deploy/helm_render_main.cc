// deploy_helm_render CHART_DIR: prints the chart's templates rendered with its default values (release
// trousseau-hsm in kube-system), as `helm template` would, for kubevalidate.sh. Subset: helm_render.h.
#include <iostream>

#include "tests/deploy/helm_render.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: deploy_helm_render CHART_DIR\n";
    return 2;
  }
  try {
    for (const auto& [name, text] : trousseau::deploy::RenderChart(argv[1])) {
      std::cout << "---\n# Source: " << name << "\n" << text << "\n";
    }
  } catch (const std::exception& e) {
    std::cerr << "deploy_helm_render: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
