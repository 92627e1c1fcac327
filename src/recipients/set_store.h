// Which recipient sets this node accepts. The set file an operator distributes names the newest set;
// every set once accepted is kept in a state directory, so the plugin goes on decrypting what was
// wrapped under earlier epochs, and refuses a set file that would take it back to a lower epoch.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "core/status.h"
#include "recipients/recipient_set.h"

namespace trousseau::recipients {

struct SetStoreOptions {
  std::string set_file;   // the signed set distributed to this node
  std::string state_dir;  // accepted sets, one file per epoch (epoch-<N>.json); created 0700 if missing
  AdminPolicy policy;
};

// Every accepted set, lowest epoch first, the set file's included. Each stored set is verified again
// (the administrator keys may have changed). The set file must be signed (VerifySet), have the
// stored sets' name, and an epoch no lower than theirs; at an epoch already stored it must be that
// very set. A new epoch is stored before it is returned. FAILED_PRECONDITION naming the file and the
// reason otherwise (signatures included: a refused document is no device refusing us, so a running
// plugin keeps serving with the sets it holds); nothing is stored then.
// `admit`, when given, is asked about a set file of a new epoch before it is stored: its error refuses
// the set (and stores nothing), so a set this node cannot use never becomes its lowest epoch.
using SetAdmission = std::function<Status(const RecipientSet& newest)>;
StatusOr<std::vector<RecipientSet>> LoadAcceptedSets(const SetStoreOptions& options, const SetAdmission& admit = {});

}  // namespace trousseau::recipients
