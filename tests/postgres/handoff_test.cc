// The PostgreSQL hand-off (issue 15): SCRAM-SHA-256 verifiers checked with RFC 7677's example exchange, the admin
// DSN's TLS policy, and Begin/Apply/Rollback against a real PostgreSQL 15 (postgres_server.h) whose log has
// log_statement=all and whose pg_stat_statements records utility statements: the role logs in with the password,
// neither the log nor the statistics ever hold the password, and a rollback gives the old password back.
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <gtest/gtest.h>

#include <sys/stat.h>

#include <array>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "tests/postgres/postgres_server.h"
#include "tests/testing/skip_or_fail_in_ci.h"
#include "tools/postgres/dsn_file.h"
#include "tools/postgres/handoff.h"
#include "tools/postgres/scram.h"

namespace trousseau::postgres {
namespace {

using trousseau::testing::PostgresServer;
using trousseau::testing::RandomPassword;

std::vector<uint8_t> Base64Decode(const std::string& text) {
  std::vector<uint8_t> out(text.size());
  const int n =
      EVP_DecodeBlock(out.data(), reinterpret_cast<const uint8_t*>(text.data()), static_cast<int>(text.size()));
  if (n < 0) return {};
  size_t length = static_cast<size_t>(n);
  for (size_t i = text.size(); i > 0 && text[i - 1] == '='; --i) --length;  // EVP_DecodeBlock keeps the padding
  out.resize(length);
  return out;
}

std::vector<uint8_t> HmacSha256(const std::vector<uint8_t>& key, const std::string& message) {
  std::vector<uint8_t> out(32);
  unsigned int n = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const uint8_t*>(message.data()),
       message.size(), out.data(), &n);
  out.resize(n);
  return out;
}

std::vector<uint8_t> Sha256(const std::vector<uint8_t>& data) {
  std::vector<uint8_t> out(32);
  unsigned int n = 0;
  EVP_Digest(data.data(), data.size(), out.data(), &n, EVP_sha256(), nullptr);
  out.resize(n);
  return out;
}

// The parts of "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>".
struct VerifierParts {
  std::string iterations, salt, stored_key, server_key;
};
VerifierParts Split(const std::string& verifier) {
  VerifierParts p;
  const size_t dollar1 = verifier.find('$');
  const size_t colon1 = verifier.find(':', dollar1);
  const size_t dollar2 = verifier.find('$', colon1);
  const size_t colon2 = verifier.find(':', dollar2);
  if (dollar1 == std::string::npos || colon1 == std::string::npos || dollar2 == std::string::npos ||
      colon2 == std::string::npos) {
    return p;
  }
  p.iterations = verifier.substr(dollar1 + 1, colon1 - dollar1 - 1);
  p.salt = verifier.substr(colon1 + 1, dollar2 - colon1 - 1);
  p.stored_key = verifier.substr(dollar2 + 1, colon2 - dollar2 - 1);
  p.server_key = verifier.substr(colon2 + 1);
  return p;
}

// RFC 7677 section 3: user "user", password "pencil", and the exchange
//   C: n,,n=user,r=rOprNGfwEbeRWgbNEkqO
//   S: r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096
//   C: c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=
//   S: v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=
// A server holding the verifier checks the client's proof with StoredKey and signs with ServerKey: both checks
// are made here as the server makes them.
TEST(ScramVerifier, Rfc7677ExampleExchangeVerifiesWithStoredKeyAndServerKey) {
  const std::vector<uint8_t> salt = Base64Decode("W22ZaJ0SNY7soEsUEjb6gQ==");
  ASSERT_EQ(salt.size(), 16u);
  StatusOr<SecureBytes> verifier = ScramSha256Verifier("pencil", salt, 4096);
  ASSERT_TRUE(verifier.ok()) << verifier.status().ToString();
  const std::string text(verifier->view());
  EXPECT_EQ(text.rfind("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$", 0), 0u) << text;
  const VerifierParts parts = Split(text);
  const std::vector<uint8_t> stored_key = Base64Decode(parts.stored_key);
  const std::vector<uint8_t> server_key = Base64Decode(parts.server_key);
  ASSERT_EQ(stored_key.size(), 32u);
  ASSERT_EQ(server_key.size(), 32u);

  const std::string nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
  const std::string auth_message =
      "n=user,r=rOprNGfwEbeRWgbNEkqO,r=" + nonce + ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=" + nonce;
  // Server signature: HMAC(ServerKey, AuthMessage) is the server's final message.
  EXPECT_EQ(HmacSha256(server_key, auth_message), Base64Decode("6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="));
  // Client proof: ClientKey = proof XOR HMAC(StoredKey, AuthMessage), and SHA-256(ClientKey) must be StoredKey.
  const std::vector<uint8_t> proof = Base64Decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
  const std::vector<uint8_t> client_signature = HmacSha256(stored_key, auth_message);
  ASSERT_EQ(proof.size(), client_signature.size());
  std::vector<uint8_t> client_key(proof.size());
  for (size_t i = 0; i < proof.size(); ++i) client_key[i] = proof[i] ^ client_signature[i];
  EXPECT_EQ(Sha256(client_key), stored_key);

  // A wrong password gives keys that fail both checks.
  StatusOr<SecureBytes> wrong = ScramSha256Verifier("pencil2", salt, 4096);
  ASSERT_TRUE(wrong.ok());
  EXPECT_NE(HmacSha256(Base64Decode(Split(std::string(wrong->view())).server_key), auth_message),
            Base64Decode("6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="));
}

TEST(ScramVerifier, EachVerifierHasItsOwnSixteenByteSalt) {
  StatusOr<SecureBytes> a = ScramSha256Verifier("same-password");
  StatusOr<SecureBytes> b = ScramSha256Verifier("same-password");
  ASSERT_TRUE(a.ok() && b.ok());
  const VerifierParts pa = Split(std::string(a->view()));
  const VerifierParts pb = Split(std::string(b->view()));
  EXPECT_EQ(pa.iterations, "4096");
  EXPECT_EQ(Base64Decode(pa.salt).size(), kScramSaltLength);
  EXPECT_NE(pa.salt, pb.salt);
  EXPECT_NE(pa.stored_key, pb.stored_key);
  StatusOr<SecureBytes> more = ScramSha256Verifier("same-password", 10000);
  ASSERT_TRUE(more.ok());
  EXPECT_EQ(Split(std::string(more->view())).iterations, "10000");
}

TEST(ScramVerifier, RefusesWhatSaslPrepWouldChangeWithoutShowingIt) {
  const std::vector<uint8_t> salt(16, 7);
  for (const std::string& password :
       {std::string("p\xc3\xa4sswort-geheim"), std::string("tab\there-geheim"), std::string("del\x7f-geheim")}) {
    StatusOr<SecureBytes> v = ScramSha256Verifier(password, salt);
    ASSERT_FALSE(v.ok());
    EXPECT_EQ(v.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(v.status().message().find("printable ASCII"), std::string::npos) << v.status().message();
    EXPECT_EQ(v.status().message().find("geheim"), std::string::npos) << v.status().message();
  }
  EXPECT_FALSE(ScramSha256Verifier("", salt).ok());
  EXPECT_FALSE(ScramSha256Verifier("fine", std::span<const uint8_t>()).ok());
  StatusOr<SecureBytes> few = ScramSha256Verifier("fine", salt, 1000);
  ASSERT_FALSE(few.ok());
  EXPECT_NE(few.status().message().find("4096"), std::string::npos);
  // Every printable ASCII character is taken.
  std::string all;
  for (char c = 0x20; c < 0x7f; ++c) all += c;
  EXPECT_TRUE(ScramSha256Verifier(all, salt).ok());
}

// The TLS policy is applied before any connection: nothing listens on these ports.
TEST(AdminDsn, WithoutVerifiedTlsIsRefusedBeforeConnecting) {
  const std::string secret = "admin-secret-Zq9";
  const std::string base = "host=localhost port=1 dbname=postgres user=admin password=" + secret;
  struct Case {
    std::string dsn;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {base, "sets no sslmode"},
      {base + " sslmode=disable", "sslmode=disable"},
      {base + " sslmode=allow", "sslmode=allow"},
      {base + " sslmode=prefer", "sslmode=prefer"},
      {base + " sslmode=require", "does not check the server's certificate"},
      {"postgresql://admin:" + secret + "@localhost:1/postgres?sslmode=prefer", "sslmode=prefer"},
      {base + " sslmode=verify-full bogus_option", "could not be parsed"},
      {"host=localhost password " + secret + " sslmode=verify-full", "could not be parsed"},
      {base + " unknown_key=1 sslmode=verify-full", "could not be parsed"},
  };
  for (const Case& c : cases) {
    StatusOr<PostgresHandOff> h = PostgresHandOff::Begin(c.dsn, "app");
    ASSERT_FALSE(h.ok()) << c.expected;
    EXPECT_EQ(h.status().code(), StatusCode::kInvalidArgument) << h.status().ToString();
    EXPECT_NE(h.status().message().find(c.expected), std::string::npos) << h.status().message();
    EXPECT_EQ(h.status().message().find(secret), std::string::npos) << h.status().message();
  }
  // With sslmode=require allowed, the policy lets it through: the error is then the connection's.
  HandOffOptions options;
  options.connect.allow_sslmode_require = true;
  options.connect.connect_timeout_seconds = 2;
  StatusOr<PostgresHandOff> h = PostgresHandOff::Begin(base + " sslmode=require", "app", options);
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().code(), StatusCode::kUnavailable) << h.status().ToString();
  EXPECT_EQ(h.status().message().find(secret), std::string::npos) << h.status().message();
}

class PostgresHandOffTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    bin_dir_ = new std::string(PostgresServer::FindBinDir());
    if (bin_dir_->empty()) return;
    server_ = new PostgresServer();
    start_error_ = new std::string();
    if (!server_->Start(*bin_dir_, *start_error_)) {
      delete server_;
      server_ = nullptr;
    }
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
    delete bin_dir_;
    delete start_error_;
  }
  void SetUp() override {
    if (bin_dir_->empty()) {
      SKIP_OR_FAIL_IN_CI(
          "PostgreSQL 15 is not installed (/usr/lib/postgresql/15/bin/initdb; ci/install-deps installs postgresql-15)");
    }
    ASSERT_NE(server_, nullptr) << "the PostgreSQL server did not start: " << *start_error_;
  }

  // Creates `role` (LOGIN) with `password`, or with no password when it is empty; the statement is kept out of
  // the log so that the test's own setup puts no password there.
  void CreateRole(const std::string& role, const std::string& password, const std::string& extra = "") {
    std::string error;
    ASSERT_TRUE(server_->AdminExec("SET log_statement = 'none'; SET pg_stat_statements.track = 'none'; CREATE ROLE " +
                                       role + " LOGIN " + extra +
                                       (password.empty() ? "" : " PASSWORD '" + password + "'"),
                                   error))
        << error;
  }
  void SetPasswordBehindTheHandOffsBack(const std::string& role, const std::string& password) {
    std::string error;
    ASSERT_TRUE(server_->AdminExec("SET log_statement = 'none'; SET pg_stat_statements.track = 'none'; ALTER ROLE " +
                                       role + " PASSWORD '" + password + "'",
                                   error))
        << error;
  }
  std::string StoredVerifier(const std::string& role) {
    std::vector<std::string> rows;
    std::string error;
    EXPECT_TRUE(server_->AdminExec("SELECT rolpassword FROM pg_authid WHERE rolname = '" + role + "'", error, &rows))
        << error;
    return rows.size() == 1 ? rows[0] : "<" + std::to_string(rows.size()) + " rows>";
  }
  // Neither the server's log nor pg_stat_statements hold `secret`. Both are shown to record statements at all
  // (a marker statement is found in each), so an absence means something.
  void ExpectServerNeverSaw(const std::string& secret, const std::string& what) {
    // A utility statement with a literal, as ALTER ROLE is: pg_stat_statements keeps its text as it was sent
    // (it replaces the constants of a SELECT with $1, and the log keeps both).
    const std::string marker = "trousseau-marker-" + RandomPassword(12);
    std::string error;
    ASSERT_TRUE(server_->AdminExec("SET application_name = '" + marker + "'", error)) << error;
    const std::string log = server_->Log();
    const std::string statistics = server_->StatementStatistics();
    ASSERT_NE(log.find(marker), std::string::npos) << "log_statement=all is not in effect";
    ASSERT_NE(statistics.find(marker), std::string::npos) << "pg_stat_statements records nothing: " << statistics;
    EXPECT_EQ(log.find(secret), std::string::npos) << what << " is in the server's log";
    EXPECT_EQ(statistics.find(secret), std::string::npos) << what << " is in pg_stat_statements";
  }

  static std::string* bin_dir_;
  static std::string* start_error_;
  static PostgresServer* server_;
};
std::string* PostgresHandOffTest::bin_dir_ = nullptr;
std::string* PostgresHandOffTest::start_error_ = nullptr;
PostgresServer* PostgresHandOffTest::server_ = nullptr;

TEST_F(PostgresHandOffTest, RoleLogsInWithTheNewPasswordThatTheServerNeverSaw) {
  const std::string old_password = RandomPassword();
  CreateRole("app_new", old_password);
  ASSERT_TRUE(server_->CanLogIn("app_new", old_password));

  // The admin DSN as trousseauctl reads it from an owner-only file.
  const std::string dsn_path = server_->dir() + "/admin.dsn";
  std::ofstream(dsn_path) << server_->AdminDsn() << "\n";
  chmod(dsn_path.c_str(), 0600);
  StatusOr<SecureBytes> dsn = ReadAdminDsnFile(dsn_path);
  ASSERT_TRUE(dsn.ok()) << dsn.status().ToString();
  StatusOr<PostgresHandOff> handoff = PostgresHandOff::Begin(dsn->view(), "app_new");
  ASSERT_TRUE(handoff.ok()) << handoff.status().ToString();
  EXPECT_TRUE(handoff->can_roll_back());
  EXPECT_TRUE(handoff->notes().empty()) << handoff->notes().front();
  EXPECT_EQ(handoff->state(), PostgresHandOff::RoleState::kUnchanged);

  const std::string password = RandomPassword();
  const Status applied = handoff->Apply(password);
  ASSERT_TRUE(applied.ok()) << applied.ToString();
  EXPECT_EQ(handoff->state(), PostgresHandOff::RoleState::kNewPassword);
  EXPECT_NE(handoff->Describe().find("has the new password"), std::string::npos) << handoff->Describe();

  std::string error;
  EXPECT_TRUE(server_->CanLogIn("app_new", password, &error)) << error;
  EXPECT_FALSE(server_->CanLogIn("app_new", old_password));
  EXPECT_FALSE(server_->CanLogIn("app_new", password + "x"));
  const std::string stored = StoredVerifier("app_new");
  EXPECT_EQ(stored.rfind("SCRAM-SHA-256$4096:", 0), 0u) << stored;

  ExpectServerNeverSaw(password, "the password");
  // A superuser's session also keeps the verifier out of the log and the statistics.
  ExpectServerNeverSaw(Split(stored).stored_key, "the verifier's StoredKey");
  ExpectServerNeverSaw(Split(stored).server_key, "the verifier's ServerKey");

  const Status again = handoff->Apply(RandomPassword());
  EXPECT_EQ(again.code(), StatusCode::kFailedPrecondition) << again.ToString();
  EXPECT_TRUE(server_->CanLogIn("app_new", password));
}

// The caller's order: the database first, then the Secret; a failed Secret write is followed by Rollback.
TEST_F(PostgresHandOffTest, FailedSecretWriteRollsBackToTheOldPassword) {
  const std::string old_password = RandomPassword();
  CreateRole("app_rollback", old_password);
  const std::string old_verifier = StoredVerifier("app_rollback");

  StatusOr<PostgresHandOff> handoff = PostgresHandOff::Begin(server_->AdminDsn(), "app_rollback");
  ASSERT_TRUE(handoff.ok()) << handoff.status().ToString();
  const std::string password = RandomPassword();
  ASSERT_TRUE(handoff->Apply(password).ok());
  ASSERT_TRUE(server_->CanLogIn("app_rollback", password));

  // ... the Secret write fails here ...
  const Status rolled_back = handoff->Rollback();
  ASSERT_TRUE(rolled_back.ok()) << rolled_back.ToString();
  EXPECT_EQ(handoff->state(), PostgresHandOff::RoleState::kRestored);
  EXPECT_NE(handoff->Describe().find("previous password again"), std::string::npos) << handoff->Describe();
  std::string error;
  EXPECT_TRUE(server_->CanLogIn("app_rollback", old_password, &error)) << error;
  EXPECT_FALSE(server_->CanLogIn("app_rollback", password));
  EXPECT_EQ(StoredVerifier("app_rollback"), old_verifier);
  EXPECT_TRUE(handoff->Rollback().ok());  // once restored, again is nothing to do
  ExpectServerNeverSaw(password, "the password");
  ExpectServerNeverSaw(Split(old_verifier).stored_key, "the previous verifier");
}

TEST_F(PostgresHandOffTest, RollbackOfARoleThatHadNoPasswordLeavesItWithout) {
  CreateRole("app_nopass", "");
  StatusOr<PostgresHandOff> handoff = PostgresHandOff::Begin(server_->AdminDsn(), "app_nopass");
  ASSERT_TRUE(handoff.ok()) << handoff.status().ToString();
  const std::string password = RandomPassword();
  ASSERT_TRUE(handoff->Apply(password).ok());
  EXPECT_TRUE(server_->CanLogIn("app_nopass", password));
  ASSERT_TRUE(handoff->Rollback().ok());
  EXPECT_EQ(StoredVerifier("app_nopass"), "<NULL>");
  EXPECT_FALSE(server_->CanLogIn("app_nopass", password));
}

TEST_F(PostgresHandOffTest, RollbackLeavesAPasswordSomeoneElseSetMeanwhile) {
  CreateRole("app_race_after", RandomPassword());
  StatusOr<PostgresHandOff> handoff = PostgresHandOff::Begin(server_->AdminDsn(), "app_race_after");
  ASSERT_TRUE(handoff.ok()) << handoff.status().ToString();
  ASSERT_TRUE(handoff->Apply(RandomPassword()).ok());
  const std::string theirs = RandomPassword();
  SetPasswordBehindTheHandOffsBack("app_race_after", theirs);

  const Status rolled_back = handoff->Rollback();
  EXPECT_EQ(rolled_back.code(), StatusCode::kAborted) << rolled_back.ToString();
  EXPECT_NE(rolled_back.message().find("changed by someone else"), std::string::npos) << rolled_back.message();
  EXPECT_TRUE(server_->CanLogIn("app_race_after", theirs));
}

TEST_F(PostgresHandOffTest, ApplyLeavesAPasswordSomeoneElseSetSinceBegin) {
  CreateRole("app_race_before", RandomPassword());
  StatusOr<PostgresHandOff> handoff = PostgresHandOff::Begin(server_->AdminDsn(), "app_race_before");
  ASSERT_TRUE(handoff.ok()) << handoff.status().ToString();
  const std::string theirs = RandomPassword();
  SetPasswordBehindTheHandOffsBack("app_race_before", theirs);

  const std::string password = RandomPassword();
  const Status applied = handoff->Apply(password);
  EXPECT_EQ(applied.code(), StatusCode::kAborted) << applied.ToString();
  EXPECT_NE(applied.message().find("is unchanged"), std::string::npos) << applied.message();
  EXPECT_EQ(handoff->state(), PostgresHandOff::RoleState::kUnchanged);
  EXPECT_TRUE(server_->CanLogIn("app_race_before", theirs));
  EXPECT_FALSE(server_->CanLogIn("app_race_before", password));
  EXPECT_TRUE(handoff->Rollback().ok());  // nothing to undo
}

// An admin with CREATEROLE but not superuser can set the password but not read the previous one.
TEST_F(PostgresHandOffTest, AdminThatCannotReadTheOldVerifierNeedsTheExplicitNoRollbackOption) {
  const std::string creator_password = RandomPassword();
  CreateRole("creator", creator_password, "CREATEROLE");
  const std::string old_password = RandomPassword();
  CreateRole("app_norollback", old_password);
  const std::string dsn = server_->Dsn("creator", creator_password);

  StatusOr<PostgresHandOff> refused = PostgresHandOff::Begin(dsn, "app_norollback");
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kFailedPrecondition) << refused.status().ToString();
  EXPECT_NE(refused.status().message().find("could not be set back"), std::string::npos) << refused.status().message();
  EXPECT_NE(refused.status().message().find("without rollback"), std::string::npos) << refused.status().message();

  HandOffOptions options;
  options.allow_no_rollback = true;
  StatusOr<PostgresHandOff> handoff = PostgresHandOff::Begin(dsn, "app_norollback", options);
  ASSERT_TRUE(handoff.ok()) << handoff.status().ToString();
  EXPECT_FALSE(handoff->can_roll_back());
  std::string notes;
  for (const std::string& n : handoff->notes()) notes += n + "\n";
  EXPECT_NE(notes.find("no rollback is possible"), std::string::npos) << notes;
  EXPECT_NE(notes.find("log_statement, "), std::string::npos) << notes;  // it may not hide the statement
  EXPECT_NE(notes.find("pg_stat_statements.track"), std::string::npos) << notes;
  EXPECT_EQ(handoff->notes().size(), 2u) << notes;

  const std::string password = RandomPassword();
  const Status applied = handoff->Apply(password);
  ASSERT_TRUE(applied.ok()) << applied.ToString();
  EXPECT_TRUE(server_->CanLogIn("app_norollback", password));
  const Status rolled_back = handoff->Rollback();
  EXPECT_EQ(rolled_back.code(), StatusCode::kFailedPrecondition) << rolled_back.ToString();
  EXPECT_NE(rolled_back.message().find("still has the new password"), std::string::npos) << rolled_back.message();
  EXPECT_TRUE(server_->CanLogIn("app_norollback", password));
  // Without a superuser the server logged the ALTER ROLE with the verifier, but never the password.
  ExpectServerNeverSaw(password, "the password");
}

TEST_F(PostgresHandOffTest, RoleThatCannotLogInIsNoted) {
  std::string error;
  ASSERT_TRUE(server_->AdminExec("CREATE ROLE app_nologin NOLOGIN", error)) << error;
  CreateRole("app_expired", "", "VALID UNTIL '2000-01-01'");
  StatusOr<PostgresHandOff> nologin = PostgresHandOff::Begin(server_->AdminDsn(), "app_nologin");
  ASSERT_TRUE(nologin.ok()) << nologin.status().ToString();
  ASSERT_EQ(nologin->notes().size(), 1u);
  EXPECT_NE(nologin->notes()[0].find("NOLOGIN"), std::string::npos) << nologin->notes()[0];
  StatusOr<PostgresHandOff> expired = PostgresHandOff::Begin(server_->AdminDsn(), "app_expired");
  ASSERT_TRUE(expired.ok()) << expired.status().ToString();
  ASSERT_EQ(expired->notes().size(), 1u);
  EXPECT_NE(expired->notes()[0].find("VALID UNTIL is past"), std::string::npos) << expired->notes()[0];
}

TEST_F(PostgresHandOffTest, UnknownRoleIsNotFound) {
  StatusOr<PostgresHandOff> handoff = PostgresHandOff::Begin(server_->AdminDsn(), "no_such_role");
  ASSERT_FALSE(handoff.ok());
  EXPECT_EQ(handoff.status().code(), StatusCode::kNotFound) << handoff.status().ToString();
  EXPECT_NE(handoff.status().message().find("\"no_such_role\" does not exist"), std::string::npos);
}

TEST_F(PostgresHandOffTest, RoleNameIsQuotedAsAnIdentifier) {
  const std::string role = "App \"Quoted\"; DROP ROLE admin";
  std::string error;
  ASSERT_TRUE(server_->AdminExec("CREATE ROLE \"App \"\"Quoted\"\"; DROP ROLE admin\" LOGIN", error)) << error;
  StatusOr<PostgresHandOff> handoff = PostgresHandOff::Begin(server_->AdminDsn(), role);
  ASSERT_TRUE(handoff.ok()) << handoff.status().ToString();
  const std::string password = RandomPassword();
  ASSERT_TRUE(handoff->Apply(password).ok());
  EXPECT_TRUE(server_->CanLogIn(role, password));
  EXPECT_TRUE(server_->CanLogIn("admin", server_->admin_password()));
}

TEST_F(PostgresHandOffTest, VerifyFullChecksTheServersCertificate) {
  CreateRole("app_tls", RandomPassword());
  const std::string dsn = server_->Dsn("admin", server_->admin_password(), "verify-full", server_->other_ca_path());
  StatusOr<PostgresHandOff> handoff = PostgresHandOff::Begin(dsn, "app_tls");
  ASSERT_FALSE(handoff.ok());
  EXPECT_EQ(handoff.status().code(), StatusCode::kUnavailable) << handoff.status().ToString();
  EXPECT_NE(handoff.status().message().find("certificate"), std::string::npos) << handoff.status().message();
  EXPECT_EQ(handoff.status().message().find(server_->admin_password()), std::string::npos);

  // sslmode=require does not check it (with no sslrootcert; given one, libpq checks the chain): taken only
  // when allowed.
  const std::string unchecked = server_->Dsn("admin", server_->admin_password(), "require", "-");
  EXPECT_EQ(PostgresHandOff::Begin(unchecked, "app_tls").status().code(), StatusCode::kInvalidArgument);
  HandOffOptions options;
  options.connect.allow_sslmode_require = true;
  StatusOr<PostgresHandOff> allowed = PostgresHandOff::Begin(unchecked, "app_tls", options);
  EXPECT_TRUE(allowed.ok()) << allowed.status().ToString();
}

// libpq ignores sslmode on a Unix-domain socket: the session is refused after connecting, for not using TLS.
TEST_F(PostgresHandOffTest, UnixSocketIsRefusedForNotUsingTls) {
  const std::string dsn = "host=" + server_->dir() + " port=" + std::to_string(server_->port()) +
                          " dbname=postgres user=admin password=" + server_->admin_password() +
                          " sslmode=verify-full sslrootcert=" + server_->ca_path();
  StatusOr<PostgresHandOff> handoff = PostgresHandOff::Begin(dsn, "admin");
  ASSERT_FALSE(handoff.ok());
  EXPECT_EQ(handoff.status().code(), StatusCode::kFailedPrecondition) << handoff.status().ToString();
  EXPECT_NE(handoff.status().message().find("does not use TLS"), std::string::npos) << handoff.status().message();
  EXPECT_EQ(handoff.status().message().find(server_->admin_password()), std::string::npos);
}

}  // namespace
}  // namespace trousseau::postgres
