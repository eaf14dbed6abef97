// The serving mode of sandbox-init (`sandbox-init --serve`): PID 1 of a jail speaking the init protocol
// (wire/init_protocol.proto) with the agent over the control socket, one single-threaded epoll loop
// over the socket, every running command's output pipes (or pty master), a signalfd and per-command
// timerfds.
//
// What it does:
// - exec: many commands at once, each in its own session and process group, output streamed in chunks of at
//   most kMaxChunkBytes with running byte offsets; stdin, signals, pty resize; per-command timeouts.
// - file tools: write/read/sha256/list/stat/mkdir/remove, resolved inside the jail's mount namespace as the
//   workload's uid (the kernel confines them); ".." components are refused, /proc magic links are never
//   traversed, and write/remove never follow a final symlink.
// - PID 1 duties: reaps every orphan.
// - browser and desktop calls: each driver's calls run one at a time on a worker thread of its own (DriverLane
//   in driver_lane.h, which states the thread rules: the worker never reaps, never sends frames, and owns
//   its driver while calls are outstanding), so the loop keeps serving while a call waits. Each call has a
//   deadline (Request.timeout_ms) counted from its arrival; at most 16 wait per driver, more are refused.
//
// NOTE: a command ends (ExecEnd) once it was reaped AND its output reached EOF, so all output precedes the
// end; a background process that keeps the command's stdout open keeps the command running until it exits
// or the command's timeout kills the process group.
//
// Memory stays bounded whatever the agent or the workload does: frames are capped, and when the agent does
// not read, the outbound queue is bounded by pausing the commands' pipes (their writers then block in the
// kernel), and then the reading of requests.
//
// It ends when the control socket closes or carries a malformed or oversized frame (every command is killed
// first: a broken agent must not leave a jail running), or after a termination signal from outside the jail
// once the commands it was forwarded to have ended.
#ifndef SBX_SANDBOX_INIT_INIT_SERVER_H_
#define SBX_SANDBOX_INIT_INIT_SERVER_H_

namespace sbx::sandbox {

// Serves the init protocol on `control_fd` (a connected stream socket) until the end described above.
// Returns sandbox-init's exit status: 0 after an orderly end, 2 after a protocol error, 125 when serving
// could not start.
int ServeInitProtocol(int control_fd);

}  // namespace sbx::sandbox

#endif  // SBX_SANDBOX_INIT_INIT_SERVER_H_
