#include "auth/pam.hpp"

#include "auth/system_users.hpp"

#include <security/pam_appl.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>

namespace postern::auth {
namespace {

struct conversation_data {
  const secret_string* password = nullptr;
  const std::string* user = nullptr;
};

// Answers the password prompt with the password and a visible prompt (some modules ask for
// the login name) with the user; informational messages get no answer. Every answer is
// malloc'ed: PAM frees (and its modules wipe) them.
int converse(int n, const pam_message** msg, pam_response** resp, void* appdata) {
  if (n <= 0 || n > PAM_MAX_NUM_MSG || msg == nullptr || resp == nullptr || appdata == nullptr) {
    return PAM_CONV_ERR;
  }
  auto* data = static_cast<conversation_data*>(appdata);
  auto* out =
      static_cast<pam_response*>(std::calloc(static_cast<std::size_t>(n), sizeof(pam_response)));
  if (out == nullptr) {
    return PAM_BUF_ERR;
  }
  auto fail = [&](int code) {
    for (int i = 0; i < n; ++i) {
      if (out[i].resp != nullptr) {
        std::memset(out[i].resp, 0, std::strlen(out[i].resp));
        std::free(out[i].resp);
      }
    }
    std::free(out);
    return code;
  };
  for (int i = 0; i < n; ++i) {
    const char* answer = nullptr;
    switch (msg[i]->msg_style) {
      case PAM_PROMPT_ECHO_OFF:
        if (data->password == nullptr) {
          return fail(PAM_CONV_ERR);
        }
        answer = data->password->c_str();
        break;
      case PAM_PROMPT_ECHO_ON:
        answer = data->user->c_str();
        break;
      case PAM_ERROR_MSG:
      case PAM_TEXT_INFO:
        continue;
      default:
        return fail(PAM_CONV_ERR);
    }
    out[i].resp = strdup(answer);
    if (out[i].resp == nullptr) {
      return fail(PAM_BUF_ERR);
    }
  }
  *resp = out;
  return PAM_SUCCESS;
}

// PAM_FAIL_DELAY callback: the driver delays failed logins itself.
void no_fail_delay(int, unsigned, void*) {}

class pam_passdb final : public passdb {
 public:
  explicit pam_passdb(pam_settings s) : s_(std::move(s)) {}

  verify_result verify(std::string_view user, const secret_string& password) override {
    verify_result out;
    if (password.empty()) {
      out.reason = "empty password";
      return out;
    }
    auto pre = precheck(user, out.reason, out.status);
    if (!pre) {
      return out;
    }
    auto txn = transaction(std::string(user), &password, true);
    out.status = txn.status;
    out.user = std::move(txn.user);
    out.reason = std::move(txn.reason);
    return out;
  }

  lookup_result lookup(std::string_view user) override {
    lookup_result out;
    auto pre = precheck(user, out.reason, out.status);
    if (!pre) {
      return out;
    }
    auto txn = transaction(std::string(user), nullptr, false);
    out.status = txn.status;
    out.user = std::move(txn.user);
    out.reason = std::move(txn.reason);
    return out;
  }

 private:
  struct outcome {
    verify_status status = verify_status::bad_credentials;
    user_record user;
    std::string reason;
  };

  // Refuses implausible names and root before PAM sees them. Unknown users go on to PAM.
  bool precheck(std::string_view user, std::string& reason, verify_status& status) {
    status = verify_status::bad_credentials;
    if (!is_plausible_system_user(user)) {
      reason = "not a valid user name";
      return false;
    }
    auto acct = find_system_user(user);
    if (!acct && acct.err().code() == errc::temporary) {
      status = verify_status::temporary;
      reason = acct.err().message();
      return false;
    }
    if (acct && acct->uid == 0) {
      reason = "uid 0 (root) may not log in";
      return false;
    }
    return true;
  }

  outcome transaction(const std::string& user, const secret_string* password, bool authenticate) {
    std::unique_lock<std::mutex> lock(mu_, std::defer_lock);
    if (s_.serialize) {
      lock.lock();
    }
    outcome out;
    conversation_data data{password, &user};
    pam_conv conv{converse, &data};
    pam_handle_t* h = nullptr;
    int rc = pam_start(s_.service.c_str(), user.c_str(), &conv, &h);
    if (rc != PAM_SUCCESS || h == nullptr) {
      out.status = verify_status::temporary;
      out.reason = "pam_start failed";
      return out;
    }
    auto fail = [&](int code, const char* step) {
      out.status = (code == PAM_BUF_ERR || code == PAM_SYSTEM_ERR || code == PAM_AUTHINFO_UNAVAIL ||
                    code == PAM_ABORT)
                       ? verify_status::temporary
                       : verify_status::bad_credentials;
      out.reason = std::string(step) + ": " + pam_strerror(h, code);
      pam_end(h, code);
      return out;
    };
    pam_set_item(h, PAM_FAIL_DELAY, reinterpret_cast<const void*>(&no_fail_delay));
    if (authenticate) {
      rc = pam_authenticate(h, PAM_SILENT | PAM_DISALLOW_NULL_AUTHTOK);
      if (rc != PAM_SUCCESS) {
        return fail(rc, "pam_authenticate");
      }
    }
    if (s_.account_check) {
      rc = pam_acct_mgmt(h, PAM_SILENT | PAM_DISALLOW_NULL_AUTHTOK);
      if (rc != PAM_SUCCESS) {
        return fail(rc, "pam_acct_mgmt");
      }
    }
    // A module may have mapped the name: the account is the one PAM settled on.
    const void* item = nullptr;
    std::string final_user = user;
    if (pam_get_item(h, PAM_USER, &item) == PAM_SUCCESS && item != nullptr) {
      final_user = static_cast<const char*>(item);
    }
    pam_end(h, PAM_SUCCESS);
    if (lock.owns_lock()) {
      lock.unlock();
    }
    auto acct = lookup_system_user(final_user);
    out.status = acct.status;
    out.reason = std::move(acct.reason);
    out.user = std::move(acct.user);
    return out;
  }

  const pam_settings s_;
  std::mutex mu_;
};

}  // namespace

result<std::unique_ptr<passdb>> open_pam_passdb(pam_settings s) {
  const auto& n = s.service;
  bool ok = !n.empty() && n.size() <= 64 && n != "." && n != ".." &&
            std::all_of(n.begin(), n.end(), [](char c) {
              return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                     c == '-' || c == '_' || c == '.';
            });
  if (!ok) {
    return error(errc::invalid, "PAM service '" + n + "' is not a plain name");
  }
  return std::unique_ptr<passdb>(std::make_unique<pam_passdb>(std::move(s)));
}

}  // namespace postern::auth
