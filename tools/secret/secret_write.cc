#include "tools/secret/secret_write.h"

#include <ctime>

#include "core/strings.h"
#include "tools/kube/base64.h"

namespace trousseau::secret {

StatusOr<WritePlan> PlanWrite(kube::SecretsClient& client, const WriteTarget& target) {
  if (!kube::ValidDataKey(target.key) || target.key.size() > 253 - 9) {
    return InvalidArgumentError(
        StrCat("--key '", target.key, "' is not a Secret data key ([-._a-zA-Z0-9]+, at most 244 characters)"));
  }
  if (target.keep_previous && !target.rotate) return InvalidArgumentError("--keep-previous goes with --rotate");
  StatusOr<std::optional<kube::SecretSnapshot>> snapshot = client.Get(target.ns, target.name, target.key);
  if (!snapshot.ok()) return snapshot.status();
  const std::string secret = StrCat("secret ", target.ns, "/", target.name);
  WritePlan plan{*std::move(snapshot)};
  if (!plan.existing) {
    if (target.rotate) {
      return NotFoundError(StrCat(secret, " does not exist: nothing to rotate (without --rotate it is created)"));
    }
    return plan;
  }
  const bool has_key = plan.existing->value_base64.has_value();
  if (has_key && !target.rotate) {
    return AlreadyExistsError(StrCat(secret, " already has key '", target.key,
                                     "'; nothing was written (--rotate replaces its value, --keep-previous keeps the "
                                     "old one under '",
                                     target.key, ".previous')"));
  }
  if (!has_key && target.rotate) {
    return NotFoundError(
        StrCat(secret, " has no key '", target.key, "': nothing to rotate (without --rotate it is added)"));
  }
  return plan;
}

Status ApplyWrite(kube::SecretsClient& client, const WriteTarget& target, const WritePlan& plan,
                  const SecureBytes& value, const kube::Annotations& annotations, HandOff* hand_off,
                  std::string& what_done) {
  const std::string secret = StrCat("secret ", target.ns, "/", target.name);
  kube::DataUpdate data;
  data.emplace(target.key, kube::Base64Encode(value.view()));
  if (target.keep_previous && plan.existing && plan.existing->value_base64) {
    kube::WipedString previous;
    kube::AppendWiped(previous, plan.existing->value_base64->value);
    data.emplace(target.key + ".previous", std::move(previous));
  }
  if (hand_off != nullptr) {
    if (Status s = hand_off->Apply(value); !s.ok()) {
      return Status(s.code(), StrCat(hand_off->Describe(), ": ", s.message(), "; ", secret, " is unchanged"));
    }
  }
  Status written = plan.existing
                       ? client.Patch(target.ns, target.name, plan.existing->resource_version, data, annotations)
                       : client.Create(target.ns, target.name, data, annotations);
  if (!written.ok()) {
    if (hand_off == nullptr) return written;
    Status undone = hand_off->Rollback();
    return Status(written.code(),
                  StrCat(written.message(), "; ", hand_off->Describe(),
                         undone.ok() ? " was rolled back to its previous value (both sides as before)"
                                     : StrCat(" HAS THE NEW VALUE, and rolling it back failed (", undone.message(),
                                              "); the Secret does not hold it: set a new value on both sides")));
  }
  if (!plan.existing) {
    what_done = StrCat("created ", secret, " with key '", target.key, "'");
  } else if (target.rotate) {
    what_done = StrCat("rotated key '", target.key, "' of ", secret,
                       target.keep_previous ? StrCat(" (the old value is under '", target.key, ".previous')") : "");
  } else {
    what_done = StrCat("added key '", target.key, "' to ", secret);
  }
  if (hand_off != nullptr) what_done += StrCat("; ", hand_off->Describe(), " has it too");
  return OkStatus();
}

std::string Rfc3339UtcNow() {
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &utc);
  return text;
}

}  // namespace trousseau::secret
