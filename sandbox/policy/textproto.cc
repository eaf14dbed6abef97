#include "sandbox/policy/textproto.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/text_format.h"
#include "base/status.h"

namespace sbx {
namespace {

// Keeps the first parse error as "<origin>:<line>:<column>: <message>", 1-based.
class FirstErrorCollector : public google::protobuf::io::ErrorCollector {
 public:
  explicit FirstErrorCollector(std::string_view origin) : origin_(origin) {}

  void AddError(int line, google::protobuf::io::ColumnNumber column, const std::string& message) override {
    if (!error_.empty()) return;
    if (line < 0) {  // not tied to a position
      error_ = absl::StrCat(origin_, ": ", message);
      return;
    }
    error_ = absl::StrCat(origin_, ":", line + 1, ":", column + 1, ": ", message);
  }
  void AddWarning(int line, google::protobuf::io::ColumnNumber column, const std::string& message) override {}

  const std::string& error() const { return error_; }

 private:
  std::string origin_;
  std::string error_;
};

}  // namespace

absl::Status ParseTextProto(std::string_view text, std::string_view origin, google::protobuf::Message* message) {
  FirstErrorCollector errors(origin);
  google::protobuf::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  google::protobuf::io::ArrayInputStream input(text.data(), static_cast<int>(text.size()));
  if (!parser.Parse(&input, message)) {
    return absl::InvalidArgumentError(errors.error().empty() ? absl::StrCat(ToAbsl(origin), ": parse error")
                                                             : errors.error());
  }
  return absl::OkStatus();
}

}  // namespace sbx
