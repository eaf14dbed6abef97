#include "sandbox/mount_plan.h"

#include <cstdio>
#include <variant>

#include "absl/strings/str_cat.h"
#include "base/status.h"

namespace sbx::sandbox {
namespace {

constexpr char kOldRoot[] = "/oldroot";
constexpr char kNewRoot[] = "/newroot";
constexpr uint64_t kDevShmBytes = 64ull << 20;
// On the base tmpfs (the child's root while it builds /newroot), dropped with it at the final pivot.
constexpr char kOverlayEmpty[] = "/.sbx-empty";
constexpr char kOverlayStage[] = "/.sbx-stage/";
// Overlay options for a read-only view of host directories from inside the jail's user namespace:
// userxattr (trusted.* xattrs are out of reach there), and no redirects or metacopy, which only matter
// with an upper layer and are refused with userxattr.
constexpr char kOverlayFlags[] = ",userxattr,redirect_dir=nofollow,metacopy=off";

std::string Octal(uint32_t mode) {
  char buf[16];
  snprintf(buf, sizeof(buf), "%o", mode);
  return buf;
}

// Mount options separate with ',' and lowerdir layers with ':', and overlayfs unescapes '\\': a host path
// with any of these stays a plain bind rather than risk a misparsed layer list.
bool OverlaySafe(const std::string& path) { return path.find_first_of(",:\\") == std::string::npos; }

}  // namespace

void MountPlan::SetReadOnlyOverlay(internal::MountOp& op, const std::string& host_src) {
  const std::string src = host_src == "/" ? std::string(kOldRoot) : absl::StrCat(kOldRoot, host_src);
  if (!OverlaySafe(src)) return;
  const size_t slash = src.rfind('/');
  const std::string parent = slash == 0 ? std::string("/") : src.substr(0, slash);
  // Files of one host directory share its stage (fewer overlays to mount and to tear down).
  auto [it, added] = overlay_stages_.emplace(parent, "");
  if (added) it->second = absl::StrCat(kOverlayStage, overlay_stages_.size() - 1);
  const std::string& stage = it->second;
  op.overlay_empty = kOverlayEmpty;
  op.overlay_dir_options = Keep(absl::StrCat("lowerdir=", src, ":", kOverlayEmpty, kOverlayFlags));
  op.overlay_parent_options = Keep(absl::StrCat("lowerdir=", parent, ":", kOverlayEmpty, kOverlayFlags));
  op.overlay_stage = Keep(stage);
  op.overlay_stage_file = Keep(absl::StrCat(stage, src.substr(slash)));
}

const char* MountPlan::Keep(std::string s) {
  strings_.push_back(std::move(s));
  return strings_.back().c_str();
}

void MountPlan::Add(internal::MountOp op, std::string description) {
  ops_.push_back(op);
  descriptions_.push_back(std::move(description));
}

std::string MountPlan::Describe(size_t index) const {
  if (index >= descriptions_.size()) return absl::StrCat("mount step ", index);
  return descriptions_[index];
}

absl::Status MountPlan::AddPolicyMount(const MountSpec& spec, const std::string& owner, uint64_t* file_bytes) {
  using Kind = internal::MountOp::Kind;
  const std::string& dst = std::visit([](const auto& m) -> const std::string& { return m.dst; }, spec);
  if (dst == "/.sandbox" || dst.rfind("/.sandbox/", 0) == 0) {
    return absl::InvalidArgumentError(absl::StrCat("mounts: ", dst, " is reserved for sandbox-init"));
  }
  if (const auto* b = std::get_if<BindMount>(&spec)) {
    internal::MountOp op;
    op.kind = Kind::kBind;
    op.src = Keep(absl::StrCat(kOldRoot, b->src));
    op.dst = Keep(absl::StrCat(kNewRoot, b->dst));
    op.readonly = !b->writable;
    op.optional = b->optional;
    // Read-only binds go through an overlay so that the jail's inotify watches see none of the host's
    // activity on them. Read-write binds stay plain binds: a read-only overlay cannot carry writes, and
    // a directory shared read-write with the host shares its activity by design.
    if (op.readonly) SetReadOnlyOverlay(op, b->src);
    Add(op, absl::StrCat("bind ", b->src, " -> ", b->dst, b->writable ? " (read-write)" : " (read-only)"));
  } else if (const auto* t = std::get_if<TmpfsMount>(&spec)) {
    internal::MountOp op;
    op.kind = Kind::kTmpfs;
    op.dst = Keep(absl::StrCat(kNewRoot, t->dst));
    op.data = Keep(absl::StrCat("size=", t->size_bytes, ",mode=", Octal(t->mode), owner));
    Add(op, absl::StrCat("tmpfs ", t->dst, " (", t->size_bytes, " bytes)"));
  } else if (const auto* f = std::get_if<FileMount>(&spec)) {
    internal::MountOp op;
    op.kind = Kind::kFile;
    op.dst = Keep(absl::StrCat(kNewRoot, f->dst));
    const char* data = Keep(f->contents);
    op.data = data;
    op.data_len = f->contents.size();
    op.mode = f->mode;
    *file_bytes += f->contents.size() + 4096;
    Add(op, absl::StrCat("file ", f->dst));
  } else if (const auto* l = std::get_if<SymlinkMount>(&spec)) {
    internal::MountOp op;
    op.kind = Kind::kSymlink;
    op.dst = Keep(absl::StrCat(kNewRoot, l->dst));
    op.src = Keep(l->target);
    Add(op, absl::StrCat("symlink ", l->dst, " -> ", l->target));
  }
  return absl::OkStatus();
}

// A fresh procfs for the jail's pid namespace, with the writable kernel knobs made read-only.
void MountPlan::AddProc() {
  using Kind = internal::MountOp::Kind;
  internal::MountOp op;
  op.kind = Kind::kProc;
  op.dst = "/newroot/proc";
  Add(op, "proc /proc");
  for (const char* knob : {"/newroot/proc/sys", "/newroot/proc/sysrq-trigger", "/newroot/proc/irq",
                           "/newroot/proc/bus", "/newroot/proc/fs"}) {
    internal::MountOp ro;
    ro.kind = Kind::kRebindReadOnly;
    ro.dst = knob;
    ro.optional = true;
    Add(ro, absl::StrCat("read-only ", knob + sizeof(kNewRoot) - 1));
  }
}

// A minimal /dev: a few device nodes bound from the host, a private devpts, and /dev/shm.
void MountPlan::AddDev(const std::string& owner) {
  using Kind = internal::MountOp::Kind;
  internal::MountOp dev;
  dev.kind = Kind::kTmpfs;
  dev.dst = "/newroot/dev";
  dev.data = "size=64k,mode=0755";
  Add(dev, "tmpfs /dev");
  for (const char* node : {"null", "zero", "full", "random", "urandom", "tty"}) {
    internal::MountOp op;
    op.kind = Kind::kBind;
    op.src = Keep(absl::StrCat(kOldRoot, "/dev/", node));
    op.dst = Keep(absl::StrCat(kNewRoot, "/dev/", node));
    op.readonly = false;
    op.device = true;
    Add(op, absl::StrCat("device /dev/", node));
  }
  internal::MountOp pts;
  pts.kind = Kind::kDevpts;
  pts.dst = "/newroot/dev/pts";
  pts.data = "newinstance,ptmxmode=0666,mode=0620";
  Add(pts, "devpts /dev/pts");
  internal::MountOp shm;
  shm.kind = Kind::kTmpfs;
  shm.dst = "/newroot/dev/shm";
  shm.data = Keep(absl::StrCat("size=", kDevShmBytes, ",mode=1777", owner));
  Add(shm, "tmpfs /dev/shm");
  struct Link {
    const char* dst;
    const char* target;
  };
  for (const Link& link : {Link{"/newroot/dev/ptmx", "pts/ptmx"}, Link{"/newroot/dev/fd", "/proc/self/fd"},
                           Link{"/newroot/dev/stdin", "/proc/self/fd/0"},
                           Link{"/newroot/dev/stdout", "/proc/self/fd/1"},
                           Link{"/newroot/dev/stderr", "/proc/self/fd/2"}}) {
    internal::MountOp op;
    op.kind = Kind::kSymlink;
    op.dst = link.dst;
    op.src = link.target;
    Add(op, absl::StrCat("symlink ", link.dst + sizeof(kNewRoot) - 1));
  }
}

// sandbox-init, read-only: /proc/1/exe then points at a read-only mount, never at a writable host file.
void MountPlan::AddInit(std::string_view init_host_path) {
  using Kind = internal::MountOp::Kind;
  internal::MountOp op;
  op.kind = Kind::kBind;
  op.src = Keep(absl::StrCat(kOldRoot, ToAbsl(init_host_path)));
  op.dst = Keep(absl::StrCat(kNewRoot, kInitPathInJail));
  op.readonly = true;
  SetReadOnlyOverlay(op, std::string(init_host_path));
  Add(op, absl::StrCat("bind sandbox-init ", ToAbsl(init_host_path)));
}

absl::StatusOr<MountPlan> MountPlan::Build(const Policy& policy, std::string_view init_host_path, uint32_t uid,
                                           uint32_t gid) {
  MountPlan plan;
  uint64_t file_bytes = 0;
  const std::string owner = absl::StrCat(",uid=", uid, ",gid=", gid);
  for (const MountSpec& spec : policy.mounts()) RETURN_IF_ERROR(plan.AddPolicyMount(spec, owner, &file_bytes));
  plan.AddProc();
  plan.AddDev(owner);
  plan.AddInit(init_host_path);
  plan.newroot_options_ = absl::StrCat("size=", (1u << 20) + file_bytes, ",mode=0755");
  return plan;
}

}  // namespace sbx::sandbox
