// sandbox-init's file tools: write/read/sha256/list/stat/mkdir/remove, resolved inside the jail's mount
// namespace as the workload's uid (the kernel confines them) and beneath the workspace; ".." components are
// refused, /proc magic links are never traversed, and write/remove never follow a final symlink.
#ifndef SBX_SANDBOX_INIT_FILE_OPS_H_
#define SBX_SANDBOX_INIT_FILE_OPS_H_

#include <string>

#include "sandbox/init/errors.h"

namespace sbx::sandbox::serve {

// The workspace: the workdir sandbox-init was started in (its cwd, which never changes).
const std::string& Workspace();

// Carries out a file request (write_file, read_file, sha256, list_files, stat, mkdir, remove) and fills `r`
// with its answer. Another kind of request leaves `r` as it is.
void RunFileRequest(const pb::Request& q, pb::Response* r);

}  // namespace sbx::sandbox::serve

#endif  // SBX_SANDBOX_INIT_FILE_OPS_H_
