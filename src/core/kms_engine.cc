#include "core/kms_engine.h"

#include <thread>
#include <type_traits>
#include <utility>

#include "core/envelope.h"
#include "core/status.h"
#include "core/strings.h"

namespace trousseau {
namespace {

// key_ids in requests are caller-controlled; quote them short and printable in messages.
std::string Quote(std::string_view text) { return QuoteForMessage(text); }

}  // namespace

template <typename Call>
auto KmsEngine::Observed(std::string_view name, Call call) {
  if (options_.observer == nullptr) return call();
  const auto start = std::chrono::steady_clock::now();
  auto result = call();
  const auto latency = std::chrono::steady_clock::now() - start;
  if constexpr (std::is_same_v<decltype(result), Status>) {
    options_.observer->OnBackendCall(name, latency, result);
  } else {
    options_.observer->OnBackendCall(name, latency, result.status());
  }
  return result;
}

KmsEngine::KmsEngine(std::shared_ptr<KeyBackend> backend, EngineOptions options)
    : backend_(std::move(backend)), options_(std::move(options)), health_(options_.health_ttl) {}

Status KmsEngine::LoadKeyRing() {
  std::lock_guard lock(load_mu_);
  StatusOr<std::vector<BackendKey>> keys = Observed("load_keys", [&] { return backend_->LoadKeys(); });
  if (!keys.ok()) {
    Record(keys.status());
    return keys.status();
  }
  StatusOr<KeyRing> ring = KeyRing::Build(backend_->Kind(), options_.family_label, *keys);
  if (!ring.ok()) return ring.status();
  std::shared_ptr<const KeyRing> current = ring_.load();
  if (current && ring->active_version() < current->active_version()) {
    return FailedPreconditionError(StrCat(
        "the active key version ", current->active_version(), " disappeared from the device; keeping ",
        current->active_key_id(), " active rather than flipping back to version ", ring->active_version()));
  }
  if (current && ring->active_version() > current->active_version() && options_.new_version_settle.count() > 0) {
    std::this_thread::sleep_for(options_.new_version_settle);  // requests keep using the current ring
    StatusOr<std::vector<BackendKey>> again = Observed("load_keys", [&] { return backend_->LoadKeys(); });
    if (!again.ok()) {
      Record(again.status());
      return again.status();
    }
    StatusOr<KeyRing> confirmed = KeyRing::Build(backend_->Kind(), options_.family_label, *again);
    if (!confirmed.ok()) return confirmed.status();
    if (confirmed->active_key_id() != ring->active_key_id()) {
      return FailedPreconditionError(StrCat(
          "the new active key ", ring->active_key_id(), " did not stay (", confirmed->active_key_id(),
          " a moment later: a rotation still deciding?); keeping ", current->active_key_id(),
          " until the next refresh"));
    }
    ring = std::move(confirmed);
  }
  // No health success here: a key listing shows that the device answers lookups, not that its keys
  // work (and a TPM backend answers an unchanged directory from its cache). Only Seal, Open and the
  // probe are round trips.
  ring_.store(std::make_shared<const KeyRing>(*std::move(ring)));
  return OkStatus();
}

StatusOr<EncryptResult> KmsEngine::Encrypt(std::string_view plaintext, size_t max_ciphertext) {
  std::shared_ptr<const KeyRing> ring = ring_.load();
  if (!ring) return UnavailableError("no key loaded yet");
  if (plaintext.empty()) return InvalidArgumentError("plaintext is empty");
  const size_t size = kEnvelopeHeaderSize + backend_->SealOverhead() + plaintext.size();
  if (size > max_ciphertext) {
    return InvalidArgumentError(StrCat("plaintext of ", plaintext.size(), " bytes would make a ",
                                                   size, "-byte ciphertext; the limit is ", max_ciphertext));
  }
  const uint64_t version = ring->active_version();
  EncryptResult result;
  result.ciphertext = EncodeEnvelopeHeader(version);
  StatusOr<std::string> sealed =
      Observed("seal", [&] { return backend_->Seal(version, plaintext, result.ciphertext); });
  Record(sealed.status());
  if (!sealed.ok()) return sealed.status();
  result.ciphertext += *sealed;
  result.key_id = ring->active_key_id();
  return result;
}

StatusOr<SecureBytes> KmsEngine::Decrypt(std::string_view ciphertext, std::string_view claimed_key_id) {
  std::shared_ptr<const KeyRing> ring = ring_.load();
  if (!ring) return UnavailableError("no key loaded yet");
  StatusOr<ParsedEnvelope> envelope = ParseEnvelope(ciphertext);
  if (!envelope.ok()) return envelope.status();
  if (!claimed_key_id.empty()) {
    std::optional<uint64_t> claimed = ring->VersionOf(claimed_key_id);
    if (!claimed) {
      return NotFoundError(StrCat("unknown key_id ", Quote(claimed_key_id)));
    }
    if (*claimed != envelope->key_version) {
      return InvalidArgumentError(StrCat("key_id ", Quote(claimed_key_id), " names key version ",
                                                     *claimed, " but the ciphertext was made with version ",
                                                     envelope->key_version));
    }
  } else if (ring->KeyIdOf(envelope->key_version) == nullptr) {
    return NotFoundError(
        StrCat("ciphertext was made with key version ", envelope->key_version, ", which is not on the device"));
  }
  StatusOr<SecureBytes> plaintext =
      Observed("open", [&] { return backend_->Open(envelope->key_version, envelope->sealed, envelope->header); });
  Record(plaintext.status());
  return plaintext;
}

HealthReport KmsEngine::Health() {
  HealthReport report;
  std::shared_ptr<const KeyRing> ring = ring_.load();
  if (!ring) {
    report.detail = "no key loaded yet";
    return report;
  }
  report.active_key_id = ring->active_key_id();
  const uint64_t version = ring->active_version();
  Status status = health_.Check([&] { return Observed("probe", [&] { return backend_->Probe(version); }); });
  report.ok = status.ok();
  report.detail = status.ok() ? "ok" : StrCat("unhealthy: ", status.message());
  return report;
}

void KmsEngine::Record(const Status& status) {
  // Only device trouble says something about health; a forged ciphertext does not.
  if (status.ok()) {
    health_.RecordSuccess();
  } else if (IsUnavailable(status)) {
    health_.RecordFailure(status);
  }
}

}  // namespace trousseau
