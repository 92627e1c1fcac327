// tools/kube: base64, the JSON of a Secret write, and apiserver errors as one line.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "tools/kube/api_error.h"
#include "tools/kube/base64.h"
#include "tools/kube/secrets_client.h"

namespace trousseau::kube {
namespace {

TEST(Base64Test, RoundTripAndRefusals) {
  for (std::string text : {std::string(""), std::string("a"), std::string("ab"), std::string("abc"),
                           std::string("\x00\xff\x10 binary", 10)}) {
    WipedString encoded = Base64Encode(text);
    StatusOr<SecureBytes> decoded = Base64Decode(encoded.value);
    ASSERT_TRUE(decoded.ok()) << encoded.value;
    EXPECT_EQ(decoded->view(), text);
  }
  EXPECT_EQ(Base64Encode("pencil").value, "cGVuY2ls");
  EXPECT_FALSE(Base64Decode("abc").ok());
  EXPECT_FALSE(Base64Decode("ab!=").ok());
  EXPECT_FALSE(Base64Decode("a=bc").ok());
}

TEST(DataKeyTest, TheApiserversRule) {
  EXPECT_TRUE(ValidDataKey("password"));
  EXPECT_TRUE(ValidDataKey("tls.key"));
  EXPECT_TRUE(ValidDataKey("A-b_c.9"));
  EXPECT_FALSE(ValidDataKey(""));
  EXPECT_FALSE(ValidDataKey("a/b"));
  EXPECT_FALSE(ValidDataKey("a b"));
  EXPECT_FALSE(ValidDataKey(".."));
}

TEST(SecretBodyTest, CreateAndPatchBodies) {
  DataUpdate data;
  data.emplace("password", Base64Encode("v4lue"));
  data.emplace("password.previous", Base64Encode("old"));
  const Annotations annotations = {{"trousseau-hsm.io/generated-by", "alice"}};
  WipedString create = SecretBody(std::string("db"), "", data, annotations);
  const nlohmann::json c = nlohmann::json::parse(create.value);
  EXPECT_EQ(c["kind"], "Secret");
  EXPECT_EQ(c["apiVersion"], "v1");
  EXPECT_EQ(c["metadata"]["name"], "db");
  EXPECT_FALSE(c["metadata"].contains("resourceVersion"));
  EXPECT_EQ(c["metadata"]["annotations"]["trousseau-hsm.io/generated-by"], "alice");
  EXPECT_EQ(c["data"]["password"], "djRsdWU=");
  EXPECT_EQ(c["data"]["password.previous"], "b2xk");

  WipedString patch = SecretBody(std::nullopt, "12345", data, {});
  const nlohmann::json p = nlohmann::json::parse(patch.value);
  EXPECT_FALSE(p.contains("kind"));
  EXPECT_EQ(p["metadata"]["resourceVersion"], "12345");  // the precondition of the merge patch
  EXPECT_EQ(p["data"]["password"], "djRsdWU=");
}

std::string StatusBody(const std::string& reason, const std::string& message, int code) {
  return nlohmann::json{{"kind", "Status"},   {"apiVersion", "v1"}, {"status", "Failure"},
                        {"message", message}, {"reason", reason},   {"code", code}}
      .dump();
}

TEST(ApiErrorTest, OneLineEachWithWhatToTry) {
  Status forbidden = ApiError(403,
                              StatusBody("Forbidden",
                                         "secrets is forbidden: User \"bob\" cannot create resource \"secrets\" in API "
                                         "group \"\" in the namespace \"apps\"",
                                         403),
                              "create secret apps/db", "apps");
  EXPECT_EQ(forbidden.code(), StatusCode::kPermissionDenied);
  EXPECT_NE(forbidden.message().find("cannot create resource \"secrets\""), std::string::npos);
  EXPECT_NE(forbidden.message().find("kubectl auth can-i --list -n apps"), std::string::npos);

  Status conflict = ApiError(409,
                             StatusBody("Conflict",
                                        "Operation cannot be fulfilled on secrets \"db\": the object has been "
                                        "modified; please apply your changes to the latest version and try again",
                                        409),
                             "patch secret apps/db", "apps");
  EXPECT_EQ(conflict.code(), StatusCode::kAborted);
  EXPECT_NE(conflict.message().find("nothing was overwritten"), std::string::npos);

  Status exists =
      ApiError(409, StatusBody("AlreadyExists", "secrets \"db\" already exists", 409), "create secret apps/db", "apps");
  EXPECT_EQ(exists.code(), StatusCode::kAlreadyExists);

  EXPECT_EQ(ApiError(401, StatusBody("Unauthorized", "Unauthorized", 401), "x", "n").code(),
            StatusCode::kUnauthenticated);
  EXPECT_EQ(ApiError(404, StatusBody("NotFound", "namespaces \"nope\" not found", 404), "x", "n").code(),
            StatusCode::kNotFound);
  EXPECT_EQ(
      ApiError(422, StatusBody("Invalid", "Secret \"db\" is invalid: data[a b]: Invalid value", 422), "x", "n").code(),
      StatusCode::kInvalidArgument);
  EXPECT_EQ(ApiError(503, "<html>upstream down</html>", "x", "n").code(), StatusCode::kUnavailable);

  // Always one line, even for a message that spans several (an admission webhook's).
  for (long code : {401L, 403L, 404L, 409L, 422L, 500L, 418L}) {
    Status s = ApiError(code, StatusBody("X", "first line\nsecond line\r\nthird", static_cast<int>(code)), "x", "n");
    EXPECT_EQ(s.message().find('\n'), std::string::npos) << code;
    EXPECT_NE(s.message().find("third"), std::string::npos) << code;
  }
}

}  // namespace
}  // namespace trousseau::kube
