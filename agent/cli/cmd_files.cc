// ls, cp (upload and download, checked by SHA-256) and events.
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "agent/cli/commands.h"
#include "base/sha256.h"

namespace sbx::cli {
namespace {

// One `ls` line: type, mode, size, name (and a link's target). Names are the workload's: shown with their raw
// bytes (name_bytes, when not UTF-8) and every control character escaped.
std::string ListingLine(const pb::FileInfo& e) {
  const std::string& name = e.name_bytes().empty() ? e.name() : e.name_bytes();
  const std::string& target = e.symlink_target_bytes().empty() ? e.symlink_target() : e.symlink_target_bytes();
  char line[64];
  snprintf(line, sizeof(line), "%c%04o %12llu ",
           e.type() == pb::FileInfo::DIRECTORY ? 'd' : e.type() == pb::FileInfo::SYMLINK ? 'l' : '-',
           e.mode() & 07777, static_cast<unsigned long long>(e.size()));
  std::string text = line;
  text += ForTerminal(name);
  if (e.type() == pb::FileInfo::SYMLINK) text += " -> " + ForTerminal(target);
  return text;
}

int List(Ctl& ctl, const std::string& session_id, const std::string& path) {
  auto ctx = ctl.Context();
  auto stream = ctl.Stub().Call(ctx.get());
  pb::CallRequest req;
  req.set_session_id(session_id);
  req.mutable_call()->mutable_list_files()->set_path(path.empty() ? "." : path);
  stream->Write(req);
  stream->WritesDone();
  pb::Event event;
  int rc = 0;
  while (stream->Read(&event)) {
    if (!event.has_tool_call_finished()) continue;
    const auto& f = event.tool_call_finished();
    if (f.has_error()) {
      PrintToolError(f.error());
      rc = 1;
      continue;
    }
    std::string text;
    for (const pb::FileInfo& e : f.result().listing().entries()) text += ListingLine(e) + "\n";
    if (!text.empty()) text.pop_back();
    Print(ctl.g, f.result().listing(), text);
  }
  grpc::Status status = stream->Finish();
  if (!status.ok()) return RpcError(status, *ctx);
  return rc;
}

int Events(Ctl& ctl, const std::string& session_id, uint64_t after, bool follow) {
  auto ctx = ctl.Context();
  pb::EventsRequest req;
  req.set_session_id(session_id);
  req.set_after_seq(after);
  req.set_follow(follow);
  auto reader = ctl.Stub().Events(ctx.get(), req);
  pb::Event event;
  while (reader->Read(&event)) {
    PrintJson(event);
    fflush(stdout);
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) return RpcError(status, *ctx);
  return 0;
}

// cp LOCAL SESSION:PATH: the file in 1 MiB chunks, the last one carrying the SHA-256 the agent checks.
int Upload(Ctl& ctl, const std::string& src, const std::string& session_id, const std::string& path) {
  const bool progress = isatty(2);
  auto ctx = ctl.Context();
  FILE* in = fopen(src.c_str(), "rb");
  if (!in) {
    fprintf(stderr, "sandboxctl: cp: cannot open %s: %s\n", src.c_str(), strerror(errno));
    return 1;
  }
  fseeko(in, 0, SEEK_END);
  const off_t total = ftello(in);
  fseeko(in, 0, SEEK_SET);
  pb::UploadResponse resp;
  auto writer = ctl.Stub().Upload(ctx.get(), &resp);
  sbx::Sha256 hash;
  std::vector<char> buf(1 << 20);
  bool first = true;
  off_t sent = 0;
  for (;;) {
    size_t n = fread(buf.data(), 1, buf.size(), in);
    pb::UploadChunk chunk;
    if (first) {
      chunk.set_session_id(session_id);
      chunk.set_path(path);
      first = false;
    }
    chunk.set_data(buf.data(), n);
    hash.Update(buf.data(), n);
    sent += static_cast<off_t>(n);
    const bool last = n < buf.size();
    if (last) {
      chunk.set_last(true);
      chunk.set_sha256(sbx::Sha256::Hex(hash.Final()));
    }
    if (!writer->Write(chunk)) break;
    if (progress && total > 0) {
      fprintf(stderr, "\r%5.1f%% %lld/%lld bytes", 100.0 * sent / total, static_cast<long long>(sent),
              static_cast<long long>(total));
    }
    if (last) break;
  }
  fclose(in);
  if (progress) fprintf(stderr, "\n");
  writer->WritesDone();
  grpc::Status status = writer->Finish();
  if (!status.ok()) return RpcError(status, *ctx);
  Print(ctl.g, resp, std::to_string(resp.size()) + " bytes, sha256 " + resp.sha256());
  return 0;
}

// cp SESSION:PATH LOCAL: into DST.sandboxctl-partial, renamed to DST once the SHA-256 matches.
int Download(Ctl& ctl, const std::string& session_id, const std::string& path, const std::string& dst) {
  const bool progress = isatty(2);
  auto ctx = ctl.Context();
  pb::DownloadRequest req;
  req.set_session_id(session_id);
  req.set_path(path);
  auto reader = ctl.Stub().Download(ctx.get(), req);
  const std::string tmp = dst + ".sandboxctl-partial";
  FILE* out = fopen(tmp.c_str(), "wb");
  if (!out) {
    fprintf(stderr, "sandboxctl: cp: cannot create %s: %s\n", tmp.c_str(), strerror(errno));
    return 1;
  }
  sbx::Sha256 hash;
  pb::DownloadChunk chunk;
  std::string expected;
  uint64_t got = 0;
  bool last = false;
  while (reader->Read(&chunk)) {
    fwrite(chunk.data().data(), 1, chunk.data().size(), out);
    hash.Update(chunk.data());
    got += chunk.data().size();
    if (progress) fprintf(stderr, "\r%llu bytes", static_cast<unsigned long long>(got));
    if (chunk.last()) {
      last = true;
      expected = chunk.sha256();
    }
  }
  fclose(out);
  if (progress) fprintf(stderr, "\n");
  grpc::Status status = reader->Finish();
  if (!status.ok()) {
    unlink(tmp.c_str());
    return RpcError(status, *ctx);
  }
  const std::string actual = sbx::Sha256::Hex(hash.Final());
  if (!last || actual != expected) {
    unlink(tmp.c_str());
    fprintf(stderr, "sandboxctl: cp: sha256 mismatch (agent %s, received %s); nothing written\n",
            expected.c_str(), actual.c_str());
    return 1;
  }
  if (rename(tmp.c_str(), dst.c_str()) < 0) {
    fprintf(stderr, "sandboxctl: cp: rename to %s: %s\n", dst.c_str(), strerror(errno));
    unlink(tmp.c_str());
    return 1;
  }
  pb::DownloadChunk summary;
  summary.set_size(got);
  summary.set_sha256(actual);
  Print(ctl.g, summary, std::to_string(got) + " bytes, sha256 " + actual);
  return 0;
}

int Copy(Ctl& ctl, const std::string& src, const std::string& dst) {
  const size_t src_colon = src.find(':');
  const size_t dst_colon = dst.find(':');
  const bool upload = dst_colon != std::string::npos && src_colon == std::string::npos;
  const bool download = src_colon != std::string::npos && dst_colon == std::string::npos;
  if (!upload && !download) {
    fprintf(stderr, "sandboxctl: cp: exactly one of SRC and DST must be SESSION:PATH\n");
    return 2;
  }
  if (upload) return Upload(ctl, src, dst.substr(0, dst_colon), dst.substr(dst_colon + 1));
  return Download(ctl, src.substr(0, src_colon), src.substr(src_colon + 1), dst);
}

struct FileArgs {
  std::string session_id, path, src, dst;
  uint64_t after = 0;
  bool follow = false;
};

}  // namespace

void AddFileCommands(CLI::App& app, Ctl& ctl) {
  auto a = std::make_shared<FileArgs>();
  CLI::App* ls = app.add_subcommand("ls", "List a directory in a session: ls SESSION [PATH]");
  ls->add_option("session", a->session_id)->required();
  ls->add_option("path", a->path);
  ctl.On(ls, [&ctl, a] { return List(ctl, a->session_id, a->path); });
  CLI::App* cp = app.add_subcommand("cp", "Copy LOCAL SESSION:PATH, or SESSION:PATH LOCAL");
  cp->add_option("src", a->src)->required();
  cp->add_option("dst", a->dst)->required();
  ctl.On(cp, [&ctl, a] { return Copy(ctl, a->src, a->dst); });
  CLI::App* events = app.add_subcommand("events", "Print a session's events");
  events->add_option("session", a->session_id)->required();
  events->add_option("--after", a->after, "Start after this seq");
  events->add_flag("--follow,-f", a->follow, "Keep streaming until the session ends");
  ctl.On(events, [&ctl, a] { return Events(ctl, a->session_id, a->after, a->follow); });
}

}  // namespace sbx::cli
