// trousseau-hsm: Kubernetes KMS plugin whose key-encryption key never leaves a PKCS#11 HSM.
#include "app/options.h"
#include "app/plugin.h"

int main(int argc, char** argv) {
  trousseau::app::PluginOptions options;
  if (std::optional<int> exit_code = trousseau::app::ParseOptions(argc, argv, options)) return *exit_code;
  return trousseau::app::RunPlugin(options);
}
