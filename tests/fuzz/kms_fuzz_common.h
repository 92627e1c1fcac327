// What the two request-handler harnesses (kms_v2_fuzz, kms_v1beta1_fuzz) share: how byte 0 and the wire
// bytes after it are read, which refusals count as the client's fault, and how a real envelope is
// forged from the fuzzer's mask.
#pragma once

#include <grpcpp/support/status.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace trousseau::fuzz {

// The fuzzer's input: byte 0 picks the call (of `calls`), the rest is the protobuf request as it arrives
// on the wire (what gRPC would hand the service after parsing it).
struct FuzzInput {
  FuzzInput(const uint8_t* data, size_t size, uint8_t calls)
      : call(size == 0 ? 0 : data[0] % calls), wire(data + 1), wire_size(size == 0 ? 0 : static_cast<int>(size - 1)) {}

  // Parses the wire bytes into `request`; false if they are not one.
  template <typename Request>
  bool Parse(Request& request) const {
    return request.ParseFromArray(wire, wire_size);
  }

  uint8_t call;
  const void* wire;
  int wire_size;
};

// A refusal of bad client input (never a device error).
inline bool IsClientError(const grpc::Status& s) {
  return s.error_code() == grpc::StatusCode::INVALID_ARGUMENT || s.error_code() == grpc::StatusCode::NOT_FOUND;
}

// `ciphertext` with mask[1..] XORed onto it from offset mask[0] (modulo its size), cut at that offset
// when mask[1] >= 0xf0 (truncations too). `ciphertext` and `mask` are not empty.
inline std::string Forged(std::string ciphertext, const std::string& mask) {
  const size_t start = static_cast<uint8_t>(mask[0]) % ciphertext.size();
  for (size_t i = 1; i < mask.size() && start + i - 1 < ciphertext.size(); ++i) ciphertext[start + i - 1] ^= mask[i];
  if (mask.size() > 1 && static_cast<uint8_t>(mask[1]) >= 0xf0) ciphertext.resize(start);
  return ciphertext;
}

}  // namespace trousseau::fuzz
